//! What the service holds: its settings, admission and CPU limits, metrics, readiness and,
//! once the models are loaded and warmed up, the [`Engine`] (the pipeline and its batcher).
//! Also the one entry both APIs call to serve a layout: admission, the time limit, the pipeline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tch::Device;
use thiserror::Error;

use super::error::ApiError;
use super::metrics::{CanvasBatches, Metrics};
use crate::batcher::{BatchError, BatchSettings, Batcher, CpuSlots, Lane};
use crate::config::Config;
use crate::error::PipelineError;
use crate::model::{Model, ModelError, ModelKind, Precision};
use crate::pipeline::canvases::LANE;
use crate::pipeline::{
    runners, Batched, CanvasPainter, CompositeOn, Courtesy, Hooks, PatchOrder, Pipeline, Progress, ProgressSink,
    Rendered, Stage,
};
use crate::registry::ModelRegistry;
use crate::router::RoutePlan;

/// What exists once the models are loaded.
pub struct Engine {
    pub pipeline: Arc<Pipeline>,
    pub batcher: Batcher<Model>,
    /// The compositing worker, with `composite_on = "batched"`.
    pub canvases: Option<Batcher<CanvasPainter>>,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Models(#[from] ModelError),
    #[error("warming up model `{model}`: {source}")]
    Warmup { model: String, source: BatchError },
    #[error("the engine was loaded twice")]
    LoadedTwice,
}

pub struct AppState {
    pub config: Config,
    /// The generators' device, resolved from the settings before the server listens.
    pub device: Device,
    /// CPU work slots shared by the pipeline's CPU stages and the generator workers.
    pub(super) cpu_slots: Arc<CpuSlots>,
    /// Bounds the blocking threads that wait for a CPU slot, so a crowd of requests queues
    /// here as cheap tasks instead of as parked threads.
    pub(super) cpu_gate: tokio::sync::Semaphore,
    /// Compose requests admitted at once; one more is refused at once with 503.
    admitted: tokio::sync::Semaphore,
    /// Latent-search work admitted at once (see `Config::max_search_in_flight`).
    search_budget: Arc<tokio::sync::Semaphore>,
    search_total: usize,
    /// Requests searching at once: at most half the CPU slots (at least one), so a search
    /// never holds every slot and cheap requests always find one.
    searches: Arc<tokio::sync::Semaphore>,
    /// Requests without a latent search, from admission to their end: while there are any, a
    /// search waits before each step (up to [`COURTESY_LIMIT`]) so that they go first.
    plain: Arc<AtomicUsize>,
    /// grpc.health.v1: NOT_SERVING until ready, and again while shutting down.
    pub(super) health: tonic_health::server::HealthReporter,
    /// gRPC routes so far: the health service (the API joins them in `app`).
    pub(super) grpc_health: tonic::service::Routes,
    pub metrics: Arc<Metrics>,
    pub engine: OnceLock<Engine>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(config: Config, device: Device) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let slots = if config.cpu_slots == 0 { cores } else { config.cpu_slots };
        let (health, health_service) = tonic_health::server::health_reporter();
        Arc::new(Self {
            health,
            grpc_health: tonic::service::Routes::new(health_service),
            cpu_slots: Arc::new(CpuSlots::new(slots)),
            cpu_gate: tokio::sync::Semaphore::new(slots),
            admitted: tokio::sync::Semaphore::new(config.max_in_flight),
            search_budget: Arc::new(tokio::sync::Semaphore::new(search_budget(&config, slots))),
            search_total: search_budget(&config, slots),
            searches: Arc::new(tokio::sync::Semaphore::new((slots / 2).max(1))),
            plain: Arc::default(),
            config,
            device,
            metrics: Arc::new(Metrics::new()),
            engine: OnceLock::new(),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether no compose request (of either API) is in flight.
    pub(super) fn nothing_in_flight(&self) -> bool {
        self.admitted.available_permits() == self.config.max_in_flight
    }

    pub(super) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }

    /// The engine once warmed up. It stays available while shutting down, so in-flight
    /// requests can finish.
    pub(super) fn engine(&self) -> Result<&Engine, ApiError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(ApiError::NotReady);
        }
        self.engine.get().ok_or(ApiError::NotReady)
    }

    /// The client's `x-request-id` when it is sensible, else a new one.
    pub(super) fn request_id(&self, headers: &HeaderMap) -> String {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:x}-{:06x}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed)))
    }

    /// Loads the models, starts the workers and warms each model up; then the server is ready.
    pub fn load_engine(&self) -> Result<(), EngineError> {
        let c = &self.config;
        // The CPU's parallelism comes from running batches and compositing side by side (one
        // task per CPU slot), so each libtorch call gets one thread unless told otherwise; on a
        // GPU too, where the CPU's libtorch work is compositing (`composite_on = "cpu"`) or none.
        crate::model::set_threads(c.torch_threads);
        let registry = Arc::new(ModelRegistry::load_in(&c.models, self.device, c.precision)?);
        for m in registry.iter() {
            self.metrics.register_model(m.name());
        }
        self.metrics.models_loaded.set(registry.iter().count() as i64);
        let defaults = BatchSettings { max_batch: c.max_batch, max_wait: Duration::from_millis(c.max_wait_ms) };
        let lanes = runners::lanes(&registry, defaults);
        let batcher = Batcher::start(lanes, c.queue_capacity, self.cpu_slots.clone(), self.metrics.clone());
        // On CUDA each batch size is tuned the first time it runs (cuDNN's autotuner, and the
        // generator's choice of how each upsampling block filters): every size the batcher can
        // form is run once here, so no request pays for it; twice with `cuda_graphs`, whose
        // second pass at a size records it.
        let sizes: Vec<usize> = if self.device.is_cuda() && c.warmup_iterations > 0 {
            let runs = crate::model::graphs::warmup_passes(self.device);
            (1..=c.max_batch.max(1)).flat_map(|s| std::iter::repeat_n(s, runs)).collect()
        } else {
            vec![1; c.warmup_iterations]
        };
        for m in registry.iter() {
            let warmup = |source| EngineError::Warmup { model: m.name().to_string(), source };
            for &size in &sizes {
                let orders = (0..size as u32)
                    .map(|s| PatchOrder { params: m.default_params(s), to_host: true, fitting: None })
                    .collect();
                let rx = batcher.submit(m.name(), orders).map_err(warmup)?;
                rx.blocking_recv().map_err(|_| warmup(BatchError::Stopped(m.name().into())))?.map_err(warmup)?;
            }
        }
        // On CUDA a process's first search also tunes the backward pass: a short one per model
        // that can project moves that here. A failure only costs the first repair that time.
        if self.device.is_cuda() && c.warmup_iterations > 0 {
            for m in registry.iter().filter(|m| m.can_project()) {
                if let Err(e) = m.warm_search() {
                    tracing::warn!(model = m.name(), error = %e, "the warm-up search failed; the first repair tunes instead");
                }
            }
        }
        let pipeline = Arc::new(Pipeline {
            registry,
            limits: c.limits.clone(),
            device: self.device,
            composite_on: c.composite_on,
        });
        // The compositing worker gathers canvases as the generators' workers gather patches,
        // up to its own batch size.
        let canvases = (c.composite_on == CompositeOn::Batched).then(|| {
            let settings = BatchSettings { max_batch: c.canvas_batch, ..defaults };
            let lane = Lane { name: LANE.into(), model: Arc::new(CanvasPainter { device: self.device }), settings };
            let observer = Arc::new(CanvasBatches(self.metrics.clone()));
            Batcher::start([lane], c.queue_capacity, self.cpu_slots.clone(), observer)
        });
        if self.engine.set(Engine { pipeline, batcher, canvases }).is_err() {
            return Err(EngineError::LoadedTwice);
        }
        self.ready.store(true, Ordering::Release);
        self.metrics.ready.set(1);
        Ok(())
    }

    /// Serves one layout for either API: admission (503 beyond `max_in_flight`), the time
    /// limit (504), then the pipeline with the batcher's workers; `progress` hears its events.
    pub async fn render(&self, layout: Vec<u8>, progress: Option<ProgressSink>) -> Result<Rendered, ApiError> {
        let engine = self.engine()?;
        let Ok(_admitted) = self.admitted.try_acquire() else {
            self.metrics.rejected.with_label_values(&["overload"]).inc();
            return Err(ApiError::Overloaded(format!(
                "{} requests are in flight already; try again shortly",
                self.config.max_in_flight
            )));
        };
        if let Some(sink) = &progress {
            sink(Progress::Queued);
        }
        let runner = Batched {
            batcher: &engine.batcher,
            canvases: engine.canvases.as_ref(),
            slots: self.cpu_slots.clone(),
            gate: &self.cpu_gate,
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let hooks = Admission {
            metrics: &self.metrics,
            budget: &self.search_budget,
            total: self.search_total,
            searches: &self.searches,
            held: Default::default(),
            progress,
            plain: &self.plain,
            counted: AtomicBool::new(false),
        };
        let run = engine.pipeline.run(layout, &runner, &hooks);
        // Dropped unanswered (the client hung up): counted, and the pipeline stops its work.
        let mut left = ClientLeft(Some(&self.metrics));
        let result = tokio::time::timeout(timeout, run).await;
        left.0 = None;
        match result {
            Err(_) => {
                self.metrics.cancelled.with_label_values(&["timeout"]).inc();
                Err(ApiError::Timeout { after_ms: self.config.request_timeout_ms })
            }
            Ok(result) => {
                let busy = matches!(&result, Err(PipelineError::Busy(_)));
                let result = result.map_err(ApiError::from);
                if let (Err(ApiError::Overloaded(_)), false) = (&result, busy) {
                    self.metrics.rejected.with_label_values(&["overload"]).inc();
                }
                result
            }
        }
    }

    /// The loaded models as both APIs describe them.
    pub(super) fn models(&self) -> Result<Vec<ModelInfo>, ApiError> {
        let engine = self.engine()?;
        let ready = self.is_ready();
        Ok(engine.pipeline.registry.iter().map(|m| ModelInfo::new(m, &engine.batcher, ready)).collect())
    }
}

/// The latent-search work admitted at once: as configured, else 1000 steps for every two CPU
/// slots (at least 1000, one longest search of a 64 px model).
fn search_budget(config: &Config, slots: usize) -> usize {
    match config.max_search_in_flight {
        0 => 1000 * (slots / 2).max(1),
        n => n,
    }
}

/// One request's hooks: the metrics, and admission of its latent searches by their cost
/// (the permits are held until the request ends).
struct Admission<'a> {
    metrics: &'a Metrics,
    budget: &'a Arc<tokio::sync::Semaphore>,
    total: usize,
    searches: &'a Arc<tokio::sync::Semaphore>,
    held: std::sync::Mutex<Vec<tokio::sync::OwnedSemaphorePermit>>,
    progress: Option<ProgressSink>,
    plain: &'a Arc<AtomicUsize>,
    /// Whether this request counts among the plain ones.
    counted: AtomicBool,
}

/// The longest a search step waits for plain requests to finish: long enough that they rarely
/// share a core with a search, short enough that a 1000-step search under a steady stream of
/// them still ends within the time limit.
pub const COURTESY_LIMIT: Duration = Duration::from_millis(60);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.counted.load(Ordering::Relaxed) {
            self.plain.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Hooks for Admission<'_> {
    fn planned(&self, plan: &RoutePlan) {
        self.metrics.planned(plan);
    }

    fn admit(&self, plan: &RoutePlan) -> Result<(), PipelineError> {
        let cost = plan.search_cost();
        if cost == 0 {
            self.plain.fetch_add(1, Ordering::Relaxed);
            self.counted.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let busy = || {
            self.metrics.rejected.with_label_values(&["search_budget"]).inc();
            PipelineError::Busy(format!(
                "the server is busy with other projections and harmonisations (this layout's search costs {cost} \
                 of {} step units); try again shortly",
                self.budget.available_permits().max(cost)
            ))
        };
        // A search larger than the whole budget runs when it has the budget to itself.
        let permits = u32::try_from(cost.min(self.total)).map_err(|_| busy())?;
        let slot = self.searches.clone().try_acquire_owned().map_err(|_| busy())?;
        let permit = self.budget.clone().try_acquire_many_owned(permits).map_err(|_| busy())?;
        self.held.lock().unwrap_or_else(|e| e.into_inner()).extend([slot, permit]);
        Ok(())
    }

    fn stage_done(&self, stage: Stage, took: Duration) {
        self.metrics.stage_done(stage, took);
    }

    fn progress(&self) -> Option<ProgressSink> {
        self.progress.clone()
    }

    fn courtesy(&self) -> Option<Courtesy> {
        let plain = self.plain.clone();
        Some(Arc::new(move |stop: &AtomicBool| {
            let started = Instant::now();
            while plain.load(Ordering::Relaxed) > 0
                && !stop.load(Ordering::Relaxed)
                && started.elapsed() < COURTESY_LIMIT
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }))
    }
}

/// Counts a request whose future is dropped before it has an answer.
struct ClientLeft<'a>(Option<&'a Metrics>);

impl Drop for ClientLeft<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.cancelled.with_label_values(&["client_left"]).inc();
        }
    }
}

/// One model as both APIs describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct ModelInfo {
    pub name: String,
    pub classes: Vec<String>,
    pub kind: ModelKind,
    pub resolution: i64,
    pub channels: i64,
    /// The fourth channel is alpha.
    pub alpha: bool,
    pub c_dim: i64,
    pub device: String,
    pub batching: Option<BatchingInfo>,
    pub queue_depth: usize,
    pub ready: bool,
    /// Whether regions served by it may `project`.
    pub projects: bool,
    /// A native generator's arithmetic; none for TorchScript models.
    pub precision: Option<Precision>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct BatchingInfo {
    pub max_batch: usize,
    pub max_wait_ms: u64,
}

impl ModelInfo {
    fn new(m: &Model, batcher: &Batcher<Model>, ready: bool) -> Self {
        let g = &m.spec.generator;
        Self {
            name: m.name().to_string(),
            classes: m.spec.classes.clone(),
            kind: m.spec.kind,
            resolution: g.img_resolution,
            channels: g.img_channels,
            alpha: m.spec.alpha,
            c_dim: g.c_dim,
            device: format!("{:?}", m.generator.device()).to_lowercase(),
            batching: batcher
                .settings(m.name())
                .map(|b| BatchingInfo { max_batch: b.max_batch, max_wait_ms: b.max_wait.as_millis() as u64 }),
            queue_depth: batcher.queue_depth(m.name()),
            ready,
            projects: m.can_project(),
            precision: m.precision(),
        }
    }
}
