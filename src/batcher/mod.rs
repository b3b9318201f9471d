//! Dynamic batching: one worker thread per model owns its generator (libtorch never runs on
//! the async runtime's threads). Requests submit jobs to the model's queue; the worker takes
//! up to `max_batch` items, waiting at most `max_wait` from the first one's arrival for more,
//! runs them as one batch and hands each job its outputs. A job whose requester has gone is
//! dropped before it is computed; a full queue refuses at once.
//!
//! It knows nothing of layouts, tensors or HTTP: a worker runs any [`BatchModel`], which is
//! how the unit tests below drive it without a real generator.

mod slots;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

pub use slots::{CpuSlot, CpuSlots, FreeSlots};

/// What a worker runs: a batch of items in, one output per item.
pub trait BatchModel: Send + Sync + 'static {
    /// One sample's parameters.
    type Item: Send + 'static;
    /// One sample's result.
    type Output: Send + 'static;
    type Error: std::fmt::Display;
    /// Runs `items` as one batch: one output per item, in order.
    fn run(&self, items: &[Self::Item]) -> Result<Vec<Self::Output>, Self::Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("model `{model}` has {queued} patches queued (capacity {capacity}); try again shortly")]
    Overloaded { model: String, queued: usize, capacity: usize },
    #[error("model `{0}` is not served")]
    UnknownModel(String),
    #[error("the worker of model `{0}` has stopped")]
    Stopped(String),
    /// The model failed or panicked while running this job's batch.
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

/// A job's outputs in the order of its items, or why there are none.
pub type Reply<O> = Result<(Vec<O>, JobReport), BatchError>;

/// Hooks the worker calls so the server can keep its metrics; all optional.
pub trait BatchObserver: Send + Sync {
    fn batch(&self, _model: &str, _size: usize, _seconds: f64) {}
    fn queue_depth(&self, _model: &str, _depth: usize) {}
    fn dropped(&self, _model: &str, _jobs: usize) {}
    fn queued(&self, _model: &str, _seconds: f64) {}
}

pub struct NoObserver;
impl BatchObserver for NoObserver {}

/// One model's queue, as [`Batcher::start`] takes it.
pub struct Lane<M> {
    pub name: String,
    pub model: Arc<M>,
    pub settings: BatchSettings,
}

struct Job<M: BatchModel> {
    items: Vec<M::Item>,
    reply: oneshot::Sender<Reply<M::Output>>,
    enqueued: Instant,
}

struct ModelQueue<M: BatchModel> {
    tx: Option<mpsc::Sender<Job<M>>>,
    depth: Arc<AtomicUsize>,
    settings: BatchSettings,
    worker: Option<JoinHandle<()>>,
}

pub struct Batcher<M: BatchModel> {
    queues: HashMap<String, ModelQueue<M>>,
    capacity: usize,
    observer: Arc<dyn BatchObserver>,
}

impl<M: BatchModel> Batcher<M> {
    /// Starts one worker per lane. `capacity` bounds the items waiting per model; `slots`
    /// are taken by a worker while it gathers and runs a batch.
    pub fn start(
        lanes: impl IntoIterator<Item = Lane<M>>,
        capacity: usize,
        slots: Arc<CpuSlots>,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        let mut queues = HashMap::new();
        for Lane { name, model, settings } in lanes {
            let settings = BatchSettings { max_batch: settings.max_batch.max(1), ..settings };
            let (tx, rx) = mpsc::channel();
            let depth = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                name: name.clone(),
                model,
                rx,
                depth: depth.clone(),
                settings,
                slots: slots.clone(),
                observer: observer.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("gen-{name}"))
                .spawn(move || worker.run())
                .expect("spawn a worker thread");
            queues.insert(name, ModelQueue { tx: Some(tx), depth, settings, worker: Some(handle) });
        }
        Self { queues, capacity, observer }
    }

    pub fn settings(&self, model: &str) -> Option<BatchSettings> {
        self.queues.get(model).map(|q| q.settings)
    }

    pub fn queue_depth(&self, model: &str) -> usize {
        self.queues.get(model).map_or(0, |q| q.depth.load(Ordering::Relaxed))
    }

    /// Queues `items` for `model`; the receiver yields their outputs in order. A job larger
    /// than the capacity is still taken when the queue is empty.
    pub fn submit(&self, model: &str, items: Vec<M::Item>) -> Result<oneshot::Receiver<Reply<M::Output>>, BatchError> {
        let q = self.queues.get(model).ok_or_else(|| BatchError::UnknownModel(model.into()))?;
        let n = items.len();
        let queued = q.depth.fetch_add(n, Ordering::AcqRel);
        if queued + n > self.capacity && queued > 0 {
            q.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(BatchError::Overloaded { model: model.into(), queued, capacity: self.capacity });
        }
        self.observer.queue_depth(model, queued + n);
        let (reply, rx) = oneshot::channel();
        let job = Job { items, reply, enqueued: Instant::now() };
        let sent = q.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
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

impl<M: BatchModel> Drop for Batcher<M> {
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

struct Worker<M: BatchModel> {
    name: String,
    model: Arc<M>,
    rx: mpsc::Receiver<Job<M>>,
    depth: Arc<AtomicUsize>,
    settings: BatchSettings,
    slots: Arc<CpuSlots>,
    observer: Arc<dyn BatchObserver>,
}

impl<M: BatchModel> Worker<M> {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            // The CPU slot is taken before gathering: jobs that arrive while this worker waits
            // for its turn on the cores join the batch instead of waiting for the next one.
            let slot = self.slots.acquire();
            let jobs = self.gather(first);
            if !jobs.is_empty() {
                self.serve(jobs);
            }
            drop(slot);
        }
    }

    /// The first job and whatever joins it before the batch is full or its wait is over,
    /// less the jobs whose requester has gone.
    fn gather(&self, first: Job<M>) -> Vec<Job<M>> {
        let deadline = first.enqueued + self.settings.max_wait;
        let mut count = first.items.len();
        let mut jobs = vec![first];
        while count < self.settings.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(job) => {
                    count += job.items.len();
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let left = self.depth.fetch_sub(count, Ordering::AcqRel) - count;
        self.observer.queue_depth(&self.name, left);
        let before = jobs.len();
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.len() < before {
            self.observer.dropped(&self.name, before - jobs.len());
        }
        jobs
    }

    /// Runs the jobs' items in chunks of at most `max_batch` and replies to each job.
    fn serve(&self, mut jobs: Vec<Job<M>>) {
        let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
        let items: Vec<M::Item> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.items)).collect();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_chunks(&items)));
        let result = match result {
            Ok(r) => r,
            Err(p) => Err(BatchError::Failed(format!("panic: {}", panic_text(p.as_ref())))),
        };
        let seconds = started.elapsed();
        self.observer.batch(&self.name, items.len(), seconds.as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(model = %self.name, "{e}");
        }
        let mut outputs = result.map(Vec::into_iter);
        for (job, n) in jobs.into_iter().zip(sizes) {
            let report = JobReport { queued: started - job.enqueued, generate: seconds, batch_size: items.len() };
            self.observer.queued(&self.name, report.queued.as_secs_f64());
            let reply = match &mut outputs {
                Ok(all) => Ok((all.by_ref().take(n).collect(), report)),
                Err(e) => Err(e.clone()),
            };
            let _ = job.reply.send(reply);
        }
    }

    fn run_chunks(&self, items: &[M::Item]) -> Result<Vec<M::Output>, BatchError> {
        let mut outputs = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.settings.max_batch) {
            let out = self.model.run(chunk).map_err(|e| BatchError::Failed(e.to_string()))?;
            if out.len() != chunk.len() {
                let why = format!("the model returned {} outputs for {} items", out.len(), chunk.len());
                return Err(BatchError::Failed(why));
            }
            outputs.extend(out);
        }
        Ok(outputs)
    }
}
