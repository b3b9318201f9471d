//! The pipeline in one place: layout bytes → router → batched generation → compositor →
//! encoder, with per-stage timings. `mixgan render` and the server both go through here; they
//! differ only in the [`PatchSource`] that runs the generation jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::compositor::{Compositor, Patches};
use crate::encode::{self, Format};
use crate::error::{LayoutError, RenderError};
use crate::layout::{ImageFormat, Layout};
use crate::model::to_pixels;
use crate::registry::ModelRegistry;
use crate::router::{GenerationJob, PatchSlot, RoutePlan, Router, RouterLimits};

/// Runs one model's generation job: the patches in item order, [N, C, S, S].
pub trait PatchSource {
    fn generate(&self, job: &GenerationJob) -> Result<Tensor, RenderError>;
}

/// Generates in the calling thread, in batches of at most `max_batch`.
pub struct DirectSource {
    pub max_batch: usize,
}

impl PatchSource for DirectSource {
    fn generate(&self, job: &GenerationJob) -> Result<Tensor, RenderError> {
        let params: Vec<_> = job.items.iter().map(|(_, p)| p.clone()).collect();
        let parts = params
            .chunks(self.max_batch.max(1))
            .map(|chunk| job.model.generate(chunk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub route: Duration,
    pub generate: Duration,
    pub composite: Duration,
    pub encode: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.route + self.generate + self.composite + self.encode
    }
}

/// Where the canvas is composited. On a GPU, compositing a small canvas is a long chain of
/// small kernels that every request queues on the same stream, so by default it runs on the
/// CPU, where requests composite side by side; large canvases stay on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompositeOn {
    /// The CPU up to [`CompositeOn::AUTO_CPU_PIXELS`], the generators' device above.
    #[default]
    Auto,
    Cpu,
    /// The generators' device.
    Device,
}

impl CompositeOn {
    /// Canvases up to this many pixels (1024 x 1024) are composited on the CPU under `auto`.
    pub const AUTO_CPU_PIXELS: i64 = 1 << 20;

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "device" => Ok(Self::Device),
            other => Err(format!("`{other}` is not one of auto, cpu, device")),
        }
    }

    /// The device for a `width` x `height` canvas whose patches come from `generators`.
    pub fn device(self, generators: Device, width: i64, height: i64) -> Device {
        match self {
            Self::Cpu => Device::Cpu,
            Self::Device => generators,
            Self::Auto if width * height <= Self::AUTO_CPU_PIXELS => Device::Cpu,
            Self::Auto => generators,
        }
    }
}

pub struct Rendered {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub plan: RoutePlan,
    /// [3, H, W] in generator units, where it was composited.
    pub canvas: Tensor,
    pub timings: Timings,
}

pub struct Renderer {
    pub registry: Arc<ModelRegistry>,
    pub limits: RouterLimits,
    /// The generators' device.
    pub device: Device,
    pub composite_on: CompositeOn,
}

impl Renderer {
    /// Parses and routes a layout: every check happens here, before any generation.
    pub fn plan(&self, layout_json: &[u8]) -> Result<RoutePlan, LayoutError> {
        let layout = Layout::parse(layout_json)?;
        Router { registry: &self.registry, limits: &self.limits }.route(&layout)
    }

    pub fn render(&self, layout_json: &[u8], source: &dyn PatchSource) -> Result<Rendered, RenderError> {
        let _guard = tch::no_grad_guard();
        let t0 = Instant::now();
        let plan = self.plan(layout_json)?;
        let t1 = Instant::now();
        let batches = plan.jobs.iter().map(|job| source.generate(job)).collect::<Result<Vec<_>, _>>()?;
        let patches = Self::assemble(&plan, batches)?;
        let t2 = Instant::now();
        let canvas = self.composite(&plan, &patches)?;
        let t3 = Instant::now();
        let bytes = self.encode(&canvas, &plan)?;
        let t4 = Instant::now();
        let timings = Timings { route: t1 - t0, generate: t2 - t1, composite: t3 - t2, encode: t4 - t3 };
        Ok(Rendered { bytes, format: plan.format, plan, canvas, timings })
    }

    pub fn composite(&self, plan: &RoutePlan, patches: &Patches) -> Result<Tensor, RenderError> {
        let _guard = tch::no_grad_guard();
        let device = self.composite_on.device(self.device, plan.width, plan.height);
        Ok(Compositor { device }.compose(plan, patches)?)
    }

    /// Hands each job's batch (in `plan.jobs` order) to the patch slots it was made for.
    pub fn assemble(plan: &RoutePlan, batches: Vec<Tensor>) -> Result<Patches, RenderError> {
        let mut patches = Patches { background: None, regions: (0..plan.regions.len()).map(|_| None).collect() };
        for (job, batch) in plan.jobs.iter().zip(batches) {
            for (i, (slot, _)) in job.items.iter().enumerate() {
                let patch = batch.f_get(i as i64)?;
                match slot {
                    PatchSlot::Background => patches.background = Some(patch),
                    PatchSlot::Region(r) => patches.regions[*r] = Some(patch),
                }
            }
        }
        Ok(patches)
    }

    pub fn encode(&self, canvas: &Tensor, plan: &RoutePlan) -> Result<Vec<u8>, RenderError> {
        let format = match plan.format {
            ImageFormat::Png => Format::Png,
            ImageFormat::Jpeg => Format::Jpeg { quality: plan.quality },
            ImageFormat::Webp => Format::WebP,
        };
        if canvas.device() == Device::Cpu {
            let (data, w, h, c) = encode::to_interleaved_u8(canvas)?;
            return Ok(encode::encode_raw(&data, w, h, c, format)?);
        }
        // On a GPU, convert there and move a quarter of the bytes.
        let pixels = to_pixels(&canvas.f_unsqueeze(0)?)?.f_get(0)?;
        Ok(encode::encode(&pixels, format)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_canvases_composite_on_the_cpu_and_large_ones_on_the_generators_device() {
        let gpu = Device::Cuda(0);
        assert_eq!(CompositeOn::Auto.device(gpu, 512, 512), Device::Cpu);
        assert_eq!(CompositeOn::Auto.device(gpu, 1024, 1024), Device::Cpu);
        assert_eq!(CompositeOn::Auto.device(gpu, 2048, 1024), gpu);
        assert_eq!(CompositeOn::Auto.device(Device::Cpu, 4096, 4096), Device::Cpu);
        assert_eq!(CompositeOn::Cpu.device(gpu, 4096, 4096), Device::Cpu);
        assert_eq!(CompositeOn::Device.device(gpu, 16, 16), gpu);
        assert_eq!(CompositeOn::parse("device"), Ok(CompositeOn::Device));
        assert!(CompositeOn::parse("gpu").unwrap_err().contains("auto, cpu, device"));
    }
}
