//! The two places the pipeline's stages run: [`InThread`] (the caller's thread, for
//! `mixgan render`, tools and tests) and [`Batched`] (the service: CPU work on blocking
//! threads under the CPU slots, generation through the batcher's per-model workers, so that
//! concurrent requests share batches).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tch::Tensor;
use tokio::sync::Semaphore;

use super::progress::{tell, Progress, ProgressSink};
use super::{millis, CanvasPainter, Runner, Stage};
use crate::batcher::{BatchError, BatchModel, BatchSettings, Batcher, CpuSlots, Lane};
use crate::compositor::Fitting;
use crate::error::PipelineError;
#[cfg(test)]
use crate::layout::Fit;
use crate::model::device::download;
use crate::model::{GenerationParams, Model, ModelError};
use crate::registry::ModelRegistry;
use crate::router::{GenerationJob, PatchSlot, RoutePlan};

/// One patch to make: its generation parameters, whether it is wanted on the host (its
/// canvas is composited on the CPU), and where it will be fitted when the worker should resize
/// it first (set for host patches made on a GPU, see [`Fitting::resize_first`]).
#[derive(Debug, Clone)]
pub struct PatchOrder {
    pub params: GenerationParams,
    pub to_host: bool,
    pub fitting: Option<Fitting>,
}

/// A batcher worker runs a model on a batch of orders: one patch each, where it is wanted.
/// Patches for the host come there in the worker, the batch in one copy, each resized first
/// where its order says how it will be fitted. A copy made later on the request's thread
/// would wait behind every batch the workers had queued on the GPU since (a device's default
/// stream runs in order), tying each request to the next batch as well as its own.
impl BatchModel for Model {
    type Item = PatchOrder;
    type Output = Tensor;
    type Error = ModelError;

    fn run(&self, orders: &[PatchOrder]) -> Result<Vec<Tensor>, ModelError> {
        let params: Vec<GenerationParams> = orders.iter().map(|o| o.params.clone()).collect();
        let batch = self.generate(&params)?;
        let on_device = batch.f_unbind(0)?;
        if !orders.iter().any(|o| o.to_host) {
            return Ok(on_device);
        }
        if orders.iter().all(|o| o.fitting.is_none()) {
            let on_host = download(&batch)?.f_unbind(0)?;
            return Ok(orders
                .iter()
                .zip(on_device.into_iter().zip(on_host))
                .map(|(o, (d, h))| if o.to_host { h } else { d })
                .collect());
        }
        let mut patches = Vec::with_capacity(orders.len());
        for (o, patch) in orders.iter().zip(on_device) {
            patches.push(match (o.to_host, o.fitting) {
                (true, Some(fitting)) => fitting.resize_first(&patch)?.unwrap_or(patch),
                _ => patch,
            });
        }
        let wanted: Vec<bool> = orders.iter().map(|o| o.to_host).collect();
        Ok(to_host_in_one_copy(patches, &wanted)?)
    }
}

/// `patches` with those `wanted` on the host copied there together: flattened into one
/// tensor on the device, one copy, then cut apart again.
fn to_host_in_one_copy(patches: Vec<Tensor>, wanted: &[bool]) -> Result<Vec<Tensor>, tch::TchError> {
    let flat = patches
        .iter()
        .zip(wanted)
        .filter(|(_, &w)| w)
        .map(|(p, _)| p.f_reshape([-1]))
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<i64> = flat.iter().map(Tensor::numel).map(|n| n as i64).collect();
    let mut on_host = download(&Tensor::f_cat(&flat, 0)?)?.f_split_with_sizes(&sizes, 0)?.into_iter();
    patches
        .into_iter()
        .zip(wanted)
        .map(|(p, &w)| match (w, if w { on_host.next() } else { None }) {
            (false, _) => Ok(p),
            (true, Some(h)) => h.f_view(p.size().as_slice()),
            (true, None) => Err(tch::TchError::Shape("a host patch went missing in the copy".into())),
        })
        .collect()
}

/// The orders for `job`'s patches. Host patches made on a GPU carry their fitting, so the
/// worker resizes them before the copy.
fn orders(plan: &RoutePlan, job: &GenerationJob, to_host: bool) -> Vec<PatchOrder> {
    let resize_first = to_host && job.model.generator.device().is_cuda();
    plan.job_params(job)
        .into_iter()
        .zip(&job.slots)
        .map(|(params, &slot)| PatchOrder { params, to_host, fitting: fitting(plan, slot).filter(|_| resize_first) })
        .collect()
}

/// Where the compositor fits the patch for `slot`: the background to the canvas, a region's
/// patch to its rectangle. None for a patch that mattes itself (its colour is premultiplied
/// by its alpha before it is resized).
fn fitting(plan: &RoutePlan, slot: PatchSlot) -> Option<Fitting> {
    match slot {
        PatchSlot::Background => Fitting::background(plan),
        PatchSlot::Region(r) => plan.regions.get(r).filter(|region| !region.patch_matte).map(Fitting::region),
    }
}

/// One batcher lane per model: its `[batching]` settings, else `defaults`.
pub fn lanes(registry: &ModelRegistry, defaults: BatchSettings) -> Vec<Lane<Model>> {
    registry
        .iter()
        .map(|model| {
            let b = &model.spec.batching;
            let settings = BatchSettings {
                max_batch: b.max_batch.unwrap_or(defaults.max_batch),
                max_wait: b.max_wait_ms.map(Duration::from_millis).unwrap_or(defaults.max_wait),
            };
            Lane { name: model.name().to_string(), model: model.clone(), settings }
        })
        .collect()
}

/// Cores an encode may borrow beside its own thread's: the machine's others (one request at a
/// time: [`InThread`]), or the service's CPU slots that are free when it starts, held until it
/// ends, so that it splits only over cores that nothing else wants.
#[derive(Clone)]
pub enum SpareCores {
    Machine,
    Slots(Arc<CpuSlots>),
}

impl SpareCores {
    /// Runs `work` with how many threads it may use: its own and up to `most - 1` spare ones.
    pub fn lend<T>(&self, most: usize, work: impl FnOnce(usize) -> T) -> T {
        match self {
            Self::Machine => work(most.clamp(1, std::thread::available_parallelism().map_or(1, |n| n.get()))),
            Self::Slots(slots) => {
                let taken = slots.take_free(most.saturating_sub(1));
                work(1 + taken.count)
            }
        }
    }
}

/// Everything in the calling thread, generating in batches of at most `max_batch`.
pub struct InThread {
    pub max_batch: usize,
}

impl Runner for InThread {
    async fn cpu<T, F>(&self, _stage: Stage, work: F) -> Result<T, PipelineError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static,
    {
        work()
    }

    fn generate(
        &self,
        plan: &RoutePlan,
        to_host: bool,
        progress: Option<ProgressSink>,
    ) -> impl Future<Output = Result<(Vec<Vec<Tensor>>, Duration), PipelineError>> + Send {
        let batches = plan
            .jobs
            .iter()
            .map(|job| {
                let orders = orders(plan, job, to_host);
                let mut patches = Vec::with_capacity(orders.len());
                for chunk in orders.chunks(self.max_batch.max(1)) {
                    patches.extend(job.model.run(chunk)?);
                }
                let (model, count) = (job.model.name().to_string(), patches.len());
                tell(progress.as_ref(), || Progress::Batch { model, patches: count, queued_ms: 0.0 });
                Ok(patches)
            })
            .collect::<Result<Vec<_>, PipelineError>>();
        async move { Ok((batches?, Duration::ZERO)) }
    }

    fn spare_cores(&self) -> SpareCores {
        SpareCores::Machine
    }
}

/// The service's stages: routing and searches on blocking threads; compositing there too,
/// after a place at `gate` (bounding the threads waiting) and a CPU slot; generation through
/// the batcher, every job submitted before any is awaited so they batch together.
pub struct Batched<'a> {
    pub batcher: &'a Batcher<Model>,
    /// The compositing worker, where canvases are painted together.
    pub canvases: Option<&'a Batcher<CanvasPainter>>,
    pub slots: Arc<CpuSlots>,
    pub gate: &'a Semaphore,
}

impl Runner for Batched<'_> {
    fn cpu<T, F>(&self, stage: Stage, work: F) -> impl Future<Output = Result<T, PipelineError>> + Send
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PipelineError> + Send + 'static,
    {
        let slots = self.slots.clone();
        async move {
            // Routing is cheap and takes no slot: its jobs should reach the queues at once,
            // where they can join batches. Searches take none either: their own admission
            // bounds them (half the slots), and they wait for plain requests step by step
            // (`Hooks::courtesy`) instead of holding a slot those need.
            let joined = if matches!(stage, Stage::Route | Stage::Project) {
                tokio::task::spawn_blocking(work).await
            } else {
                let _gate = self.gate.acquire().await.map_err(|_| PipelineError::Internal("shutting down".into()))?;
                tokio::task::spawn_blocking(move || {
                    let _slot = slots.acquire();
                    work()
                })
                .await
            };
            joined.map_err(|e| PipelineError::Panicked { stage: stage.name(), message: e.to_string() })?
        }
    }

    fn generate(
        &self,
        plan: &RoutePlan,
        to_host: bool,
        progress: Option<ProgressSink>,
    ) -> impl Future<Output = Result<(Vec<Vec<Tensor>>, Duration), PipelineError>> + Send {
        let submitted = plan
            .jobs
            .iter()
            .map(|job| {
                let rx = self.batcher.submit(job.model.name(), orders(plan, job, to_host))?;
                Ok((job.model.name().to_string(), rx))
            })
            .collect::<Result<Vec<_>, BatchError>>();
        async move {
            let mut batches = Vec::new();
            let mut queue = Duration::ZERO;
            for (model, rx) in submitted? {
                let (patches, report) = rx.await.map_err(|_| BatchError::Stopped(model.clone()))??;
                queue = queue.max(report.queued);
                if let Some(sink) = &progress {
                    sink(Progress::Batch { model, patches: patches.len(), queued_ms: millis(report.queued) });
                }
                batches.push(patches);
            }
            Ok((batches, queue))
        }
    }

    fn canvases(&self) -> Option<&Batcher<CanvasPainter>> {
        self.canvases
    }

    fn spare_cores(&self) -> SpareCores {
        SpareCores::Slots(self.slots.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RouterLimits;
    use tch::Device;

    /// An encode in the service splits over the CPU slots free when it starts, at most as many
    /// threads as are worth it, and holds them until it is done; alone on the machine, over its
    /// cores.
    #[test]
    fn encodes_borrow_the_free_cpu_slots_and_give_them_back() {
        let slots = Arc::new(CpuSlots::new(4));
        let spare = SpareCores::Slots(slots.clone());
        let held = slots.acquire();
        assert_eq!(spare.lend(3, |threads| (threads, slots.take_free(9).count)), (3, 1));
        assert_eq!(spare.lend(9, |threads| threads), 4, "its own and the three free");
        assert_eq!(spare.lend(1, |threads| threads), 1);
        assert_eq!(slots.take_free(9).count, 3, "all given back");
        drop(held);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(SpareCores::Machine.lend(64, |threads| threads), cores.min(64));
        assert_eq!(SpareCores::Machine.lend(0, |threads| threads), 1);
    }

    /// The background is fitted to the canvas and a region's patch to its rectangle, except a
    /// patch that mattes itself; on the CPU no order carries its fitting (nothing to copy).
    #[test]
    fn orders_say_where_their_patches_go_only_for_a_gpu() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let registry = Arc::new(ModelRegistry::load(&root.join("models"), Device::Cpu).unwrap());
        let pipeline = super::super::Pipeline {
            registry,
            limits: RouterLimits::default(),
            device: Device::Cpu,
            composite_on: Default::default(),
        };
        let layout = br#"{"width": 300, "height": 200, "background": {"class": "background", "fit": "stretch"},
            "regions": [{"class": "hand", "box": [10, 20, 40, 30], "fit": "contain"},
                        {"class": "hand", "box": [100, 20, 50, 60], "matte": "region"}]}"#;
        let plan = pipeline.plan(layout).unwrap();
        assert_eq!(fitting(&plan, PatchSlot::Background), Some(Fitting { fit: Fit::Stretch, w: 300, h: 200 }));
        // The bundled hand draws its alpha, which mattes its patch unless the region says not.
        assert!(plan.regions[0].patch_matte && !plan.regions[1].patch_matte);
        assert_eq!(fitting(&plan, PatchSlot::Region(0)), None);
        assert_eq!(fitting(&plan, PatchSlot::Region(1)).map(|f| (f.w, f.h)), Some((50, 60)));
        assert_eq!(fitting(&plan, PatchSlot::Region(7)), None);
        let mut unmatted = plan.clone();
        unmatted.regions[0].patch_matte = false;
        assert_eq!(fitting(&unmatted, PatchSlot::Region(0)), Some(Fitting { fit: Fit::Contain, w: 40, h: 30 }));
        for job in &plan.jobs {
            assert!(orders(&plan, job, true).iter().all(|o| o.to_host && o.fitting.is_none()));
        }
    }
}
