//! Dynamic batching: one worker thread per model owns its generator (libtorch never runs on
//! the async runtime's threads). Requests submit generation jobs to the model's queue; the
//! worker takes up to `max_batch` patches, waiting at most `max_wait` for more, runs them as
//! one batch and hands each job its patches. A job whose requester has gone is dropped
//! before it is computed; a full queue refuses at once.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Tensor;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::model::{GenerationParams, Model, ModelError};
use crate::registry::ModelRegistry;

/// A counting semaphore for CPU-heavy work, shared by the generator workers and the
/// server's routing and compositing: as many tasks run at once as there are slots, so that
/// on a CPU-only machine they take turns on the cores instead of thrashing.
pub struct CpuSlots {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

pub struct CpuSlot<'a>(&'a CpuSlots);

impl CpuSlots {
    pub fn new(slots: usize) -> Self {
        Self { free: std::sync::Mutex::new(slots.max(1)), freed: std::sync::Condvar::new() }
    }

    /// Blocks until a slot is free; the slot is returned when the guard drops.
    pub fn acquire(&self) -> CpuSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        CpuSlot(self)
    }
}

impl Drop for CpuSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("model `{model}` has {queued} patches queued (capacity {capacity}); try again shortly")]
    Overloaded { model: String, queued: usize, capacity: usize },
    #[error("model `{0}` is not served")]
    UnknownModel(String),
    #[error("the worker of model `{0}` has stopped")]
    Stopped(String),
    /// libtorch failed or panicked while generating this job's batch.
    #[error("generation failed: {0}")]
    Failed(String),
}

/// What the worker measured for one job, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct JobReport {
    pub queued: Duration,
    pub generate: Duration,
    pub batch_size: usize,
}

type Reply = Result<(Tensor, JobReport), BatchError>;

struct Job {
    params: Vec<GenerationParams>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
}

/// Hooks the worker calls so the server can keep its metrics; all optional.
pub trait BatchObserver: Send + Sync {
    fn batch(&self, _model: &str, _size: usize, _seconds: f64) {}
    fn queue_depth(&self, _model: &str, _depth: usize) {}
    fn dropped(&self, _model: &str, _jobs: usize) {}
    fn queued(&self, _model: &str, _seconds: f64) {}
}

pub struct NoObserver;
impl BatchObserver for NoObserver {}

struct ModelQueue {
    tx: Option<mpsc::Sender<Job>>,
    depth: Arc<AtomicUsize>,
    settings: BatchSettings,
    worker: Option<JoinHandle<()>>,
}

pub struct Batcher {
    queues: HashMap<String, ModelQueue>,
    capacity: usize,
    observer: Arc<dyn BatchObserver>,
}

impl Batcher {
    /// Starts one worker per model. `defaults` apply where a model's `[batching]` is silent;
    /// `capacity` bounds the patches waiting per model.
    pub fn start(
        registry: &ModelRegistry,
        defaults: BatchSettings,
        capacity: usize,
        slots: Arc<CpuSlots>,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        let mut queues = HashMap::new();
        for model in registry.iter() {
            let b = &model.spec.batching;
            let settings = BatchSettings {
                max_batch: b.max_batch.unwrap_or(defaults.max_batch).max(1),
                max_wait: b.max_wait_ms.map(Duration::from_millis).unwrap_or(defaults.max_wait),
            };
            let (tx, rx) = mpsc::channel();
            let depth = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (model, depth, observer, slots) = (model.clone(), depth.clone(), observer.clone(), slots.clone());
                std::thread::Builder::new()
                    .name(format!("gen-{}", model.name()))
                    .spawn(move || work(model, rx, depth, settings, &slots, observer))
                    .expect("spawn a worker thread")
            };
            queues.insert(model.name().to_string(), ModelQueue { tx: Some(tx), depth, settings, worker: Some(worker) });
        }
        Self { queues, capacity, observer }
    }

    pub fn settings(&self, model: &str) -> Option<BatchSettings> {
        self.queues.get(model).map(|q| q.settings)
    }

    pub fn queue_depth(&self, model: &str) -> usize {
        self.queues.get(model).map_or(0, |q| q.depth.load(Ordering::Relaxed))
    }

    /// Queues `params` for `model`; the receiver yields the patches [N, C, S, S] in order.
    pub fn submit(&self, model: &str, params: Vec<GenerationParams>) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let q = self.queues.get(model).ok_or_else(|| BatchError::UnknownModel(model.into()))?;
        let n = params.len();
        let queued = q.depth.fetch_add(n, Ordering::AcqRel);
        if queued + n > self.capacity && queued > 0 {
            q.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(BatchError::Overloaded { model: model.into(), queued, capacity: self.capacity });
        }
        self.observer.queue_depth(model, queued + n);
        let (reply, rx) = oneshot::channel();
        let job = Job { params, reply, enqueued: Instant::now() };
        let sent = q.tx.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            q.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(BatchError::Stopped(model.into()));
        }
        Ok(rx)
    }

    /// Closes the queues and waits for the workers to finish what they hold.
    pub fn shutdown(&mut self) {
        for q in self.queues.values_mut() {
            q.tx.take();
        }
        for q in self.queues.values_mut() {
            if let Some(w) = q.worker.take() {
                let _ = w.join();
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn work(
    model: Arc<Model>,
    rx: mpsc::Receiver<Job>,
    depth: Arc<AtomicUsize>,
    s: BatchSettings,
    slots: &CpuSlots,
    observer: Arc<dyn BatchObserver>,
) {
    let _guard = tch::no_grad_guard();
    let name = model.name().to_string();
    while let Ok(first) = rx.recv() {
        // The wait for a batch to fill counts from the first job's arrival, and the CPU slot
        // is taken before gathering: jobs that arrive while this worker waits for its turn
        // on the cores join the batch instead of waiting for the next one.
        let deadline = first.enqueued + s.max_wait;
        let mut count = first.params.len();
        let mut jobs = vec![first];
        let slot = slots.acquire();
        while count < s.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(job) => {
                    count += job.params.len();
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let left = depth.fetch_sub(count, Ordering::AcqRel) - count;
        observer.queue_depth(&name, left);
        let before = jobs.len();
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.len() < before {
            observer.dropped(&name, before - jobs.len());
        }
        if jobs.is_empty() {
            continue;
        }
        let params: Vec<GenerationParams> = jobs.iter().flat_map(|j| j.params.iter().cloned()).collect();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Tensor, ModelError> {
            let parts = params.chunks(s.max_batch).map(|c| model.generate(c)).collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::f_cat(&parts, 0)?)
        }));
        let seconds = started.elapsed();
        drop(slot);
        observer.batch(&name, params.len(), seconds.as_secs_f64());
        let mut offset = 0i64;
        for job in jobs {
            let n = job.params.len() as i64;
            let report = JobReport { queued: started - job.enqueued, generate: seconds, batch_size: params.len() };
            observer.queued(&name, report.queued.as_secs_f64());
            let reply = match &result {
                Ok(Ok(batch)) => {
                    batch.f_narrow(0, offset, n).map(|t| (t, report)).map_err(|e| BatchError::Failed(e.to_string()))
                }
                Ok(Err(e)) => Err(BatchError::Failed(e.to_string())),
                Err(p) => Err(BatchError::Failed(format!("panic: {}", panic_text(p.as_ref())))),
            };
            offset += n;
            let _ = job.reply.send(reply);
        }
        match &result {
            Err(p) => tracing::error!(model = %name, "generation panicked: {}", panic_text(p.as_ref())),
            Ok(Err(e)) => tracing::error!(model = %name, "generation failed: {e}"),
            Ok(Ok(_)) => {}
        }
    }
}
