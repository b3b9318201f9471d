//! The one path from a layout to a picture, for every front end (HTTP, gRPC, `mixgan render`):
//! route → project (repairs only) → generate → composite → encode, each a named [`Stage`]
//! timed in one [`Timings`]. The front end chooses where the stages run (a [`Runner`]: in this
//! thread, or on blocking threads with the batcher's workers); [`Hooks`] observe each stage
//! as it ends (metrics) and may take its [`Progress`] events. It owns the
//! order of the stages and nothing else: no HTTP, no admission, no queues of its own.

pub mod canvases;
pub mod progress;
pub mod runners;
mod search;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::batcher::{BatchError, Batcher};
use crate::compositor::{Composited, Compositor, Patches};
use crate::encode::{self, Format};
use crate::error::{LayoutError, PipelineError, UnknownChoice};
use crate::layout::{ImageFormat, Layout};
use crate::model::graphs::SideStream;
use crate::model::to_pixels;
use crate::registry::ModelRegistry;
use crate::router::{PatchSlot, RoutePlan, Router, RouterLimits};

pub use canvases::{Canvas, CanvasOrder, CanvasPainter};
pub use progress::{JobSize, Progress, ProgressSink, Search};
pub use runners::{Batched, InThread, PatchOrder, SpareCores};
pub use search::{Courtesy, SearchWatch};

/// The stages of a request, in order. `Queue` is the part of generation spent waiting for a
/// batch to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Route,
    /// The detectors of the layout's `detect` entries (part of routing's work, timed apart).
    Detect,
    Project,
    Queue,
    Generate,
    Composite,
    Encode,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::Detect => "detect",
            Self::Project => "project",
            Self::Queue => "queue",
            Self::Generate => "generate",
            Self::Composite => "composite",
            Self::Encode => "encode",
        }
    }
}

/// Wall time per stage of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub route: Duration,
    /// Detection for the layout's `detect` entries (zero for most layouts).
    pub detect: Duration,
    /// Projection of the regions that ask for it (zero for most layouts).
    pub project: Duration,
    /// Part of `generate`: the longest any of the request's jobs waited for its batch.
    pub queue: Duration,
    pub generate: Duration,
    pub composite: Duration,
    pub encode: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.route + self.detect + self.project + self.generate + self.composite + self.encode
    }

    /// Each stage and the total in milliseconds, as every front end reports them.
    pub fn in_ms(&self) -> [(&'static str, f64); 8] {
        let ms = millis;
        [
            ("route", ms(self.route)),
            ("detect", ms(self.detect)),
            ("project", ms(self.project)),
            ("queue", ms(self.queue)),
            ("generate", ms(self.generate)),
            ("composite", ms(self.composite)),
            ("encode", ms(self.encode)),
            ("total", ms(self.total())),
        ]
    }
}

/// Milliseconds, to the microsecond (log lines and answers show no float noise).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Where the canvas is composited. On a GPU a small canvas is a long chain of small kernels
/// whose launches cost the host more than compositing it on the CPU (each request on a
/// stream of its own, see [`SideStream`]), while on the CPU requests composite side by side,
/// one per core; a large canvas is much faster on the GPU. `auto` (the default) follows that:
/// the CPU for canvases up to [`AUTO_CPU_MAX_PIXELS`], the generators' device above.
/// `batched` composites on the generators' device too, and in the service one worker paints
/// the canvases of every ready request of the same layout geometry in one pass (see
/// [`canvases`]): a step's launches are shared by the batch instead of made per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CompositeOn {
    #[default]
    Auto,
    Device,
    Cpu,
    Batched,
}

/// The largest canvas `auto` composites on the CPU when the generators run on a GPU: 1024 x
/// 1024. Chosen from one H200 (commit a1635c1): 512 px portraits served 396 requests/s
/// composited on its CPU against 145 on the GPU, while one 2048 px portrait took 55 ms to
/// composite on the CPU against 9 ms on the GPU. Still so with side streams (5960098): 424-462
/// requests/s on the GPU against 796-955 on the CPU.
pub const AUTO_CPU_MAX_PIXELS: i64 = 1024 * 1024;

impl std::str::FromStr for CompositeOn {
    type Err = UnknownChoice;
    fn from_str(text: &str) -> Result<Self, UnknownChoice> {
        match text {
            "auto" => Ok(Self::Auto),
            "device" => Ok(Self::Device),
            "cpu" => Ok(Self::Cpu),
            "batched" => Ok(Self::Batched),
            other => Err(UnknownChoice { given: other.into(), choices: "auto, device, cpu, batched" }),
        }
    }
}

impl TryFrom<String> for CompositeOn {
    type Error = UnknownChoice;
    fn try_from(text: String) -> Result<Self, UnknownChoice> {
        text.parse()
    }
}

impl From<CompositeOn> for String {
    fn from(c: CompositeOn) -> String {
        match c {
            CompositeOn::Auto => "auto".into(),
            CompositeOn::Device => "device".into(),
            CompositeOn::Cpu => "cpu".into(),
            CompositeOn::Batched => "batched".into(),
        }
    }
}

impl CompositeOn {
    /// The device to composite a canvas of `pixels` on when the patches come from `generators`.
    pub fn device(self, generators: Device, pixels: i64) -> Device {
        match self {
            Self::Auto if pixels <= AUTO_CPU_MAX_PIXELS => Device::Cpu,
            Self::Auto | Self::Device | Self::Batched => generators,
            Self::Cpu => Device::Cpu,
        }
    }
}

/// What compositing and encoding give back: the plan, the canvas, the encoded bytes and the
/// two stages' times.
type Painted = (RoutePlan, Composited, Vec<u8>, Duration, Duration);

/// A finished request.
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub plan: RoutePlan,
    /// [3, H, W] in generator units, where it was composited.
    pub canvas: Tensor,
    /// Per region, the alpha of a patch that matted itself (see [`Composited::alphas`]).
    pub alphas: Vec<Option<Tensor>>,
    pub timings: Timings,
}

/// Where the stages run; the pipeline decides only their order.
pub trait Runner: Sync {
    /// Runs `work`, the CPU-heavy part of `stage` (routing, projection, or compositing with
    /// encoding), and returns its result.
    fn cpu<T, F>(&self, stage: Stage, work: F) -> impl Future<Output = Result<T, PipelineError>> + Send
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static;

    /// Generates every job of `plan`: one patch [C, S, S] per slot (on the host with
    /// `to_host`, else on the generators' device), a list per job in job order, and the
    /// longest time any job queued. Tells `progress` of each job as it is done.
    fn generate(
        &self,
        plan: &RoutePlan,
        to_host: bool,
        progress: Option<ProgressSink>,
    ) -> impl Future<Output = Result<(Vec<Vec<Tensor>>, Duration), PipelineError>> + Send;

    /// The worker that paints canvases together (`composite_on = "batched"`), where this
    /// runner has one; without, each request composites its own.
    fn canvases(&self) -> Option<&Batcher<CanvasPainter>> {
        None
    }

    /// The cores an encode may borrow beside its own thread's.
    fn spare_cores(&self) -> SpareCores;
}

/// What a front end hears of a request as it passes through the stages.
pub trait Hooks: Sync {
    /// The layout is routed: its plan, before any generation.
    fn planned(&self, _plan: &RoutePlan) {}
    /// Whether the plan may go on (admission by its cost); an error ends the request.
    fn admit(&self, _plan: &RoutePlan) -> Result<(), PipelineError> {
        Ok(())
    }
    /// A stage is over. `Generate` is reported less its `Queue` part; `Project` only when a
    /// region projects.
    fn stage_done(&self, _stage: Stage, _took: Duration) {}
    /// Who hears the request's [`Progress`], if anyone.
    fn progress(&self) -> Option<ProgressSink> {
        None
    }
    /// What the request's latent searches wait on before each step, if anything.
    fn courtesy(&self) -> Option<Courtesy> {
        None
    }
}

/// Sets its flag when dropped.
struct StopWhenDropped(Arc<AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Hears nothing.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// What the stages need: the models, the router's limits and the devices.
pub struct Pipeline {
    pub registry: Arc<ModelRegistry>,
    pub limits: RouterLimits,
    /// The generators' device.
    pub device: Device,
    pub composite_on: CompositeOn,
}

impl Pipeline {
    /// Every stage of `layout`, in order, run where `runner` says.
    pub async fn run(
        self: &Arc<Self>,
        layout: Vec<u8>,
        runner: &impl Runner,
        hooks: &dyn Hooks,
    ) -> Result<Rendered, PipelineError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let me = self.clone();
        let plan = runner.cpu(Stage::Route, move || Ok(me.plan(&layout)?)).await?;
        timings.detect = plan.detect_time;
        timings.route = started.elapsed().saturating_sub(plan.detect_time);
        hooks.stage_done(Stage::Route, timings.route);
        if !plan.detect_time.is_zero() {
            hooks.stage_done(Stage::Detect, timings.detect);
        }
        hooks.planned(&plan);
        hooks.admit(&plan)?;
        let sink = hooks.progress();
        let search_steps = Self::search_steps(&plan);
        if let Some(sink) = &sink {
            sink(Progress::planned(&plan, search_steps));
        }

        let plan = if plan.projects() || plan.harmonizes() {
            let started = Instant::now();
            let me = self.clone();
            // Set when this future is dropped (the client left, or the time ran out): the
            // searches then stop within one step instead of running on for nobody.
            let stop = Arc::new(AtomicBool::new(false));
            let _stop_when_dropped = StopWhenDropped(stop.clone());
            let plan = runner
                .cpu(Stage::Project, search_job(me, plan, stop.clone(), (sink.clone(), hooks.courtesy()), search_steps))
                .await?;
            timings.project = started.elapsed();
            hooks.stage_done(Stage::Project, timings.project);
            plan
        } else {
            plan
        };

        let started = Instant::now();
        let to_host = self.composite_device(&plan) == Device::Cpu;
        let (batches, queue) = runner.generate(&plan, to_host, sink.clone()).await?;
        timings.generate = started.elapsed();
        timings.queue = queue;
        hooks.stage_done(Stage::Queue, queue);
        hooks.stage_done(Stage::Generate, timings.generate.saturating_sub(queue));

        let painter = runner.canvases().filter(|_| self.composite_on == CompositeOn::Batched);
        let (plan, Composited { canvas, alphas }, bytes, composite, encode) = match painter {
            Some(painter) => self.paint_together(plan, batches, painter, runner).await?,
            None => self.composite_alone(plan, batches, runner).await?,
        };
        timings.composite = composite;
        timings.encode = encode;
        hooks.stage_done(Stage::Composite, composite);
        hooks.stage_done(Stage::Encode, encode);
        if let Some(sink) = &sink {
            sink(Progress::Composited { composite_ms: millis(composite), encode_ms: millis(encode) });
        }
        Ok(Rendered { bytes, format: plan.format, plan, canvas, alphas, timings })
    }

    /// Composites and encodes the request's canvas on a thread of the runner's: the plan, the
    /// canvas, the encoded bytes and the two stages' times.
    async fn composite_alone(
        self: &Arc<Self>,
        plan: RoutePlan,
        batches: Vec<Vec<Tensor>>,
        runner: &impl Runner,
    ) -> Result<Painted, PipelineError> {
        // Compositing and encoding share one trip to a worker thread.
        let me = self.clone();
        let spare = runner.spare_cores();
        runner
            .cpu(Stage::Composite, move || {
                let patches = assemble(&plan, batches)?;
                // Dropped before the patches: the device's stream then waits for this one
                // before it can reuse their memory.
                let stream = SideStream::enter(me.composite_device(&plan));
                let started = Instant::now();
                let done = me.composite(&plan, &patches)?;
                let composite = started.elapsed();
                let started = Instant::now();
                let bytes = me.encode(&done.canvas, &plan, &spare)?;
                drop(stream);
                Ok((plan, done, bytes, composite, started.elapsed()))
            })
            .await
    }

    /// `composite_alone` with the canvas painted by `painter` together with other requests'
    /// of the same geometry; the request's runner thread encodes its pixels. The composite
    /// time is the wait for the painter, queueing included.
    async fn paint_together(
        self: &Arc<Self>,
        plan: RoutePlan,
        batches: Vec<Vec<Tensor>>,
        painter: &Batcher<CanvasPainter>,
        runner: &impl Runner,
    ) -> Result<Painted, PipelineError> {
        let started = Instant::now();
        let patches = assemble(&plan, batches)?;
        let plan = Arc::new(plan);
        let rx = painter.submit(canvases::LANE, vec![CanvasOrder { plan: plan.clone(), patches }])?;
        let (mut painted, _) = rx.await.map_err(|_| BatchError::Stopped(canvases::LANE.into()))??;
        let Canvas { composited, pixels } =
            painted.pop().ok_or_else(|| PipelineError::Internal("no canvas".into()))??;
        let composite = started.elapsed();
        let me = self.clone();
        let spare = runner.spare_cores();
        let (plan, bytes, encode) = runner
            .cpu(Stage::Encode, move || {
                let started = Instant::now();
                let bytes = me.encode_pixels(&pixels, &plan, &spare)?;
                Ok((plan, bytes, started.elapsed()))
            })
            .await?;
        // The painter has let go of its copy of the plan by the time it replies, but a clone
        // costs little if not.
        let plan = Arc::try_unwrap(plan).unwrap_or_else(|shared| (*shared).clone());
        Ok((plan, composited, bytes, composite, encode))
    }

    /// The whole pipeline in this thread, generating in batches of at most `max_batch`: for
    /// `mixgan render`, tools and tests. Not for use inside an async runtime.
    pub fn render(self: &Arc<Self>, layout: &[u8], max_batch: usize) -> Result<Rendered, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(PipelineError::Runtime)?;
        runtime.block_on(self.run(layout.to_vec(), &InThread { max_batch }, &NoHooks))
    }

    /// Parses and routes a layout: every check happens here, before any generation.
    pub fn plan(&self, layout_json: &[u8]) -> Result<RoutePlan, LayoutError> {
        let layout = Layout::parse(layout_json)?;
        Router { registry: &self.registry, limits: &self.limits }.route(&layout)
    }

    /// Where `plan`'s canvas is composited.
    pub fn composite_device(&self, plan: &RoutePlan) -> Device {
        self.composite_on.device(self.device, plan.width * plan.height)
    }

    pub fn composite(&self, plan: &RoutePlan, patches: &Patches) -> Result<Composited, PipelineError> {
        let _guard = tch::no_grad_guard();
        Ok(Compositor { device: self.composite_device(plan) }.composite(plan, patches)?)
    }

    /// The encoder's format for `plan`'s picture.
    fn format(&self, plan: &RoutePlan) -> Format {
        match plan.format {
            ImageFormat::Png => Format::Png,
            ImageFormat::Jpeg => Format::Jpeg { quality: plan.quality },
            ImageFormat::Webp => Format::WebP,
        }
    }

    /// Encodes `canvas` in `plan`'s format, a PNG on its thread and the `spare` cores it can
    /// borrow.
    pub fn encode(&self, canvas: &Tensor, plan: &RoutePlan, spare: &SpareCores) -> Result<Vec<u8>, PipelineError> {
        if canvas.device() == Device::Cpu {
            let (data, w, h, c) = encode::to_interleaved_u8(canvas)?;
            let format = self.format(plan);
            return spare.lend(encode::threads_worth(format, data.len()), |threads| {
                Ok(encode::encode_raw_in(&data, w, h, c, format, threads)?)
            });
        }
        // On a GPU, convert there and move a quarter of the bytes.
        let pixels = to_pixels(&canvas.f_unsqueeze(0)?)?.f_get(0)?;
        self.encode_pixels(&pixels, plan, spare)
    }

    /// [`Pipeline::encode`] for uint8 pixels [H, W, C].
    fn encode_pixels(&self, pixels: &Tensor, plan: &RoutePlan, spare: &SpareCores) -> Result<Vec<u8>, PipelineError> {
        let format = self.format(plan);
        spare.lend(encode::threads_worth(format, pixels.numel()), |threads| {
            Ok(encode::encode_in(pixels, format, threads)?)
        })
    }
}

/// The project stage's work, made outside `Pipeline::run` so that its type borrows nothing of
/// that future (which keeps the future `Send` for every lifetime).
fn search_job(
    me: Arc<Pipeline>,
    plan: RoutePlan,
    stop: Arc<AtomicBool>,
    (sink, courtesy): (Option<ProgressSink>, Option<Courtesy>),
    total: usize,
) -> impl FnOnce() -> Result<RoutePlan, PipelineError> + Send + 'static {
    move || me.search(plan, &SearchWatch::new(&stop).telling(sink, total).yielding(courtesy))
}

/// Hands each job's patches (in `plan.jobs` order) to the slots they were made for.
fn assemble(plan: &RoutePlan, batches: Vec<Vec<Tensor>>) -> Result<Patches, PipelineError> {
    let mut patches = Patches { background: None, regions: (0..plan.regions.len()).map(|_| None).collect() };
    for (job, batch) in plan.jobs.iter().zip(batches) {
        if batch.len() != job.slots.len() {
            return Err(PipelineError::Internal(format!(
                "model `{}` returned {} patches for {} slots",
                job.model.name(),
                batch.len(),
                job.slots.len()
            )));
        }
        for (slot, patch) in job.slots.iter().zip(batch) {
            match slot {
                PatchSlot::Background => patches.background = Some(patch),
                PatchSlot::Region(r) => patches.regions[*r] = Some(patch),
            }
        }
    }
    Ok(patches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_on_names_the_device() {
        let gpu = Device::Cuda(0);
        let (small, large) = (512 * 512, 2048 * 2048);
        assert_eq!(CompositeOn::default(), CompositeOn::Auto);
        assert_eq!(CompositeOn::Auto.device(gpu, small), Device::Cpu);
        assert_eq!(CompositeOn::Auto.device(gpu, large), gpu);
        assert_eq!(CompositeOn::Auto.device(Device::Cpu, large), Device::Cpu);
        assert_eq!(CompositeOn::Device.device(gpu, small), gpu);
        assert_eq!(CompositeOn::Cpu.device(gpu, large), Device::Cpu);
        assert_eq!(CompositeOn::Batched.device(gpu, small), gpu);
        assert_eq!(CompositeOn::Batched.device(Device::Cpu, small), Device::Cpu);
        assert_eq!("batched".parse::<CompositeOn>(), Ok(CompositeOn::Batched));
        assert_eq!("cpu".parse::<CompositeOn>(), Ok(CompositeOn::Cpu));
        assert!("gpu".parse::<CompositeOn>().unwrap_err().to_string().contains("auto, device, cpu"));
    }

    #[test]
    fn timings_add_up_and_round_to_the_microsecond() {
        let t = Timings {
            route: Duration::from_nanos(14_301_123),
            generate: Duration::from_millis(30),
            queue: Duration::from_millis(10),
            ..Timings::default()
        };
        let ms: std::collections::HashMap<_, _> = t.in_ms().into_iter().collect();
        assert_eq!(ms["route"], 14.301);
        assert_eq!(ms["queue"], 10.0);
        assert_eq!(ms["total"], 44.301, "queue is part of generate, not added again");
    }
}
