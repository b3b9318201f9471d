//! The pipeline in one place: layout bytes → router → (projection, for repairs) → batched
//! generation → compositor → encoder, with per-stage timings. `mixgan render` and the server
//! both go through here; they differ only in the [`PatchSource`] that runs the generation jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::compositor::{Compositor, Patches};
use crate::encode::{self, Format};
use crate::error::{LayoutError, RenderError};
use crate::layout::{ImageFormat, Layout};
use crate::model::to_pixels;
use crate::registry::ModelRegistry;
use crate::router::{Background, GenerationJob, PatchSlot, RoutePlan, Router, RouterLimits};

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
    /// Projection of the regions that ask for it (zero for most layouts).
    pub project: Duration,
    pub generate: Duration,
    pub composite: Duration,
    pub encode: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.route + self.project + self.generate + self.composite + self.encode
    }
}

/// Where the canvas is composited: on the generators' device (the default), or on the CPU.
/// On a GPU a small canvas is a long chain of small kernels that every request queues on the
/// same stream, while on the CPU requests composite side by side; which serves faster
/// depends on the machine, and `scripts/gpu-check` times both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompositeOn {
    #[default]
    Device,
    Cpu,
}

impl std::str::FromStr for CompositeOn {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "device" => Ok(Self::Device),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("`{other}` is not one of device, cpu")),
        }
    }
}

impl CompositeOn {
    /// The device to composite on when the patches come from `generators`.
    pub fn device(self, generators: Device) -> Device {
        match self {
            Self::Device => generators,
            Self::Cpu => Device::Cpu,
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
        let mut plan = self.plan(layout_json)?;
        let t1 = Instant::now();
        self.project(&mut plan)?;
        let projected = t1.elapsed();
        let batches = plan.jobs.iter().map(|job| source.generate(job)).collect::<Result<Vec<_>, _>>()?;
        let patches = Self::assemble(&plan, batches)?;
        let t2 = Instant::now();
        let canvas = self.composite(&plan, &patches)?;
        let t3 = Instant::now();
        let bytes = self.encode(&canvas, &plan)?;
        let t4 = Instant::now();
        let timings = Timings {
            route: t1 - t0,
            project: projected,
            generate: t2 - t1 - projected,
            composite: t3 - t2,
            encode: t4 - t3,
        };
        Ok(Rendered { bytes, format: plan.format, plan, canvas, timings })
    }

    /// Regions that `project` get the ws that reproduce what the background picture shows
    /// under them (see `model::project`), in the plan's params and in their jobs. Heavy: a
    /// generator pass forward and back per step.
    pub fn project(&self, plan: &mut RoutePlan) -> Result<(), RenderError> {
        let Background::Image(rgb) = &plan.background else { return Ok(()) };
        if plan.regions.iter().all(|r| r.project_steps.is_none()) {
            return Ok(());
        }
        let compositor = Compositor { device: self.device };
        let picture = compositor.picture(rgb, plan.height, plan.width)?;
        for (i, region) in plan.regions.iter_mut().enumerate() {
            let Some(steps) = region.project_steps else { continue };
            let res = region.model.spec.generator.img_resolution;
            let (target, weight) = compositor.projection_target(&picture, region, res)?;
            let ws = region.model.project(&target, &weight, steps)?;
            let w = Arc::new(Vec::<f32>::try_from(ws.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?);
            region.params.projected = Some(w.clone());
            for (slot, p) in plan.jobs.iter_mut().flat_map(|j| j.items.iter_mut()) {
                if *slot == PatchSlot::Region(i) {
                    p.projected = Some(w.clone());
                }
            }
        }
        Ok(())
    }

    pub fn composite(&self, plan: &RoutePlan, patches: &Patches) -> Result<Tensor, RenderError> {
        let _guard = tch::no_grad_guard();
        Ok(Compositor { device: self.composite_on.device(self.device) }.compose(plan, patches)?)
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
    fn composite_on_names_the_device() {
        let gpu = Device::Cuda(0);
        assert_eq!(CompositeOn::default().device(gpu), gpu);
        assert_eq!(CompositeOn::Cpu.device(gpu), Device::Cpu);
        assert_eq!("cpu".parse::<CompositeOn>(), Ok(CompositeOn::Cpu));
        assert!("gpu".parse::<CompositeOn>().unwrap_err().contains("device, cpu"));
    }
}
