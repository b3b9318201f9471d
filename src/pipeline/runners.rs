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
use super::{millis, Runner, Stage};
use crate::batcher::{BatchError, BatchModel, BatchSettings, Batcher, CpuSlots, Lane};
use crate::error::PipelineError;
use crate::model::device::download;
use crate::model::{GenerationParams, Model, ModelError};
use crate::registry::ModelRegistry;
use crate::router::{GenerationJob, RoutePlan};

/// One patch to make: its generation parameters, and whether it is wanted on the host (its
/// canvas is composited on the CPU).
#[derive(Debug, Clone)]
pub struct PatchOrder {
    pub params: GenerationParams,
    pub to_host: bool,
}

/// A batcher worker runs a model on a batch of orders: one patch each, where it is wanted.
/// Patches for the host come there in the worker, the batch in one copy. A copy made later on
/// the request's thread would wait behind every batch the workers had queued on the GPU since
/// (a device's default stream runs in order), tying each request to the next batch as well as
/// its own.
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
        let on_host = download(&batch)?.f_unbind(0)?;
        Ok(orders
            .iter()
            .zip(on_device.into_iter().zip(on_host))
            .map(|(o, (d, h))| if o.to_host { h } else { d })
            .collect())
    }
}

/// The orders for `job`'s patches.
fn orders(plan: &RoutePlan, job: &GenerationJob, to_host: bool) -> Vec<PatchOrder> {
    plan.job_params(job).into_iter().map(|params| PatchOrder { params, to_host }).collect()
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
}

/// The service's stages: routing and searches on blocking threads; compositing there too,
/// after a place at `gate` (bounding the threads waiting) and a CPU slot; generation through
/// the batcher, every job submitted before any is awaited so they batch together.
pub struct Batched<'a> {
    pub batcher: &'a Batcher<Model>,
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
}
