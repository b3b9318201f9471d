//! The batcher on a fake model (no libtorch): deadlines, batch splitting, clients that left,
//! overload, failures, shutdown and CPU slots.

use std::sync::{Condvar, Mutex};

use super::*;

/// Answers `item * 10`; fails on `FAIL`, panics on `PANIC`; while `hold` is set, a batch
/// waits in `run` (after saying so on `entered`) until it is released.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Vec<u32>>>,
    hold: Mutex<bool>,
    released: Condvar,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

const FAIL: u32 = 999;
const PANIC: u32 = 666;

#[derive(Debug)]
struct Failure;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fake model fails")
    }
}

impl Fake {
    fn held() -> (Arc<Self>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let fake = Self { hold: Mutex::new(true), entered: Mutex::new(Some(tx)), ..Self::default() };
        (Arc::new(fake), rx)
    }

    fn release(&self) {
        *self.hold.lock().unwrap() = false;
        self.released.notify_all();
    }

    fn calls(&self) -> Vec<Vec<u32>> {
        self.calls.lock().unwrap().clone()
    }
}

impl BatchModel for Fake {
    type Item = u32;
    type Output = u32;
    type Error = Failure;

    fn run(&self, items: &[u32]) -> Result<Vec<u32>, Failure> {
        self.calls.lock().unwrap().push(items.to_vec());
        if let Some(tx) = self.entered.lock().unwrap().as_ref() {
            let _ = tx.send(());
        }
        drop(self.released.wait_while(self.hold.lock().unwrap(), |hold| *hold).unwrap());
        if items.contains(&PANIC) {
            panic!("the fake model panics");
        }
        if items.contains(&FAIL) {
            return Err(Failure);
        }
        Ok(items.iter().map(|i| i * 10).collect())
    }
}

#[derive(Default)]
struct Counts {
    dropped: AtomicUsize,
    batches: Mutex<Vec<usize>>,
}

impl BatchObserver for Counts {
    fn batch(&self, _model: &str, size: usize, _seconds: f64) {
        self.batches.lock().unwrap().push(size);
    }
    fn dropped(&self, _model: &str, jobs: usize) {
        self.dropped.fetch_add(jobs, Ordering::SeqCst);
    }
}

fn settings(max_batch: usize, max_wait_ms: u64) -> BatchSettings {
    BatchSettings { max_batch, max_wait: Duration::from_millis(max_wait_ms) }
}

fn batcher(model: &Arc<Fake>, s: BatchSettings, capacity: usize) -> (Batcher<Fake>, Arc<Counts>) {
    batcher_with(model, s, capacity, Arc::new(CpuSlots::new(2)))
}

fn batcher_with(
    model: &Arc<Fake>,
    settings: BatchSettings,
    capacity: usize,
    slots: Arc<CpuSlots>,
) -> (Batcher<Fake>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let lane = Lane { name: "m".to_string(), model: model.clone(), settings };
    (Batcher::start([lane], capacity, slots, counts.clone()), counts)
}

fn outputs(rx: oneshot::Receiver<Reply<u32>>) -> Vec<u32> {
    rx.blocking_recv().expect("a reply").expect("outputs").0
}

#[test]
fn jobs_within_the_wait_share_one_batch_and_get_their_own_outputs() {
    let model = Arc::new(Fake::default());
    let (b, counts) = batcher(&model, settings(8, 1000), 64);
    let started = Instant::now();
    let first = b.submit("m", vec![1, 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let second = b.submit("m", vec![3]).unwrap();
    assert_eq!(outputs(first), [10, 20]);
    assert_eq!(outputs(second), [30]);
    assert!(started.elapsed() >= Duration::from_millis(1000), "the batch left before its wait was over");
    assert_eq!(model.calls(), [vec![1, 2, 3]]);
    assert_eq!(*counts.batches.lock().unwrap(), [3]);
    assert_eq!(b.queue_depth("m"), 0);
}

#[test]
fn the_wait_counts_from_the_first_job_and_later_jobs_go_to_the_next_batch() {
    let model = Arc::new(Fake::default());
    let (b, _) = batcher(&model, settings(8, 100), 64);
    let first = b.submit("m", vec![1]).unwrap();
    assert_eq!(outputs(first), [10]);
    let later = b.submit("m", vec![2]).unwrap();
    assert_eq!(outputs(later), [20]);
    assert_eq!(model.calls(), [vec![1], vec![2]]);
}

#[test]
fn a_full_batch_leaves_without_waiting() {
    let model = Arc::new(Fake::default());
    let (b, _) = batcher(&model, settings(2, 60_000), 64);
    let started = Instant::now();
    let rx = b.submit("m", vec![4, 5]).unwrap();
    assert_eq!(outputs(rx), [40, 50]);
    assert!(started.elapsed() < Duration::from_secs(30), "waited for the deadline: {:?}", started.elapsed());
}

#[test]
fn more_items_than_max_batch_run_in_chunks_in_order() {
    let model = Arc::new(Fake::default());
    let (b, counts) = batcher(&model, settings(4, 0), 64);
    let rx = b.submit("m", (1..=10).collect()).unwrap();
    assert_eq!(outputs(rx), (1..=10).map(|i| i * 10).collect::<Vec<_>>());
    assert_eq!(model.calls(), [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    assert_eq!(*counts.batches.lock().unwrap(), [10], "one gathered batch, run in three chunks");
}

#[test]
fn a_job_whose_client_left_is_dropped_before_it_runs() {
    let (model, entered) = Fake::held();
    let (b, counts) = batcher(&model, settings(8, 0), 64);
    let busy = b.submit("m", vec![1]).unwrap();
    entered.recv().unwrap();
    let gone = b.submit("m", vec![2]).unwrap();
    drop(gone);
    let kept = b.submit("m", vec![3]).unwrap();
    model.release();
    assert_eq!(outputs(busy), [10]);
    assert_eq!(outputs(kept), [30]);
    assert!(model.calls().iter().all(|c| !c.contains(&2)), "the abandoned job ran: {:?}", model.calls());
    assert_eq!(counts.dropped.load(Ordering::SeqCst), 1);
}

#[test]
fn a_full_queue_refuses_at_once_and_takes_work_again_when_drained() {
    let (model, entered) = Fake::held();
    let (b, _) = batcher(&model, settings(8, 0), 2);
    let busy = b.submit("m", vec![1]).unwrap();
    entered.recv().unwrap();
    let queued = b.submit("m", vec![2, 3]).unwrap();
    assert_eq!(b.queue_depth("m"), 2);
    let refused = b.submit("m", vec![4]).unwrap_err();
    assert_eq!(refused, BatchError::Overloaded { model: "m".into(), queued: 2, capacity: 2 });
    assert_eq!(b.queue_depth("m"), 2, "a refused job leaves the depth as it was");
    model.release();
    assert_eq!(outputs(busy), [10]);
    assert_eq!(outputs(queued), [20, 30]);
    assert_eq!(outputs(b.submit("m", vec![4]).unwrap()), [40]);
}

#[test]
fn a_job_larger_than_the_capacity_is_taken_by_an_empty_queue() {
    let model = Arc::new(Fake::default());
    let (b, _) = batcher(&model, settings(8, 0), 2);
    assert_eq!(outputs(b.submit("m", vec![1, 2, 3]).unwrap()), [10, 20, 30]);
}

#[test]
fn unknown_models_and_stopped_workers_are_errors() {
    let model = Arc::new(Fake::default());
    let (mut b, _) = batcher(&model, settings(8, 0), 8);
    assert_eq!(b.submit("other", vec![1]).unwrap_err(), BatchError::UnknownModel("other".into()));
    b.shutdown();
    assert_eq!(b.submit("m", vec![1]).unwrap_err(), BatchError::Stopped("m".into()));
}

#[test]
fn failures_and_panics_reach_every_job_of_the_batch_and_the_worker_goes_on() {
    let model = Arc::new(Fake::default());
    let (b, _) = batcher(&model, settings(8, 200), 64);
    let (a, c) = (b.submit("m", vec![1]).unwrap(), b.submit("m", vec![FAIL]).unwrap());
    for rx in [a, c] {
        let err = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err, BatchError::Failed("the fake model fails".into()));
    }
    let err = b.submit("m", vec![PANIC]).unwrap().blocking_recv().unwrap().unwrap_err();
    assert!(matches!(&err, BatchError::Failed(m) if m.contains("panic") && m.contains("fake model panics")), "{err}");
    assert_eq!(outputs(b.submit("m", vec![7]).unwrap()), [70]);
}

#[test]
fn shutdown_finishes_the_jobs_already_queued() {
    let model = Arc::new(Fake::default());
    let (mut b, _) = batcher(&model, settings(8, 60_000), 64);
    let rx = b.submit("m", vec![5]).unwrap();
    let started = Instant::now();
    b.shutdown();
    assert!(started.elapsed() < Duration::from_secs(30), "shutdown waited for the batch deadline");
    assert_eq!(outputs(rx), [50]);
}

#[test]
fn a_worker_runs_only_with_a_cpu_slot() {
    let model = Arc::new(Fake::default());
    let slots = Arc::new(CpuSlots::new(1));
    let taken = slots.acquire();
    let (b, _) = batcher_with(&model, settings(8, 0), 64, slots.clone());
    let mut rx = b.submit("m", vec![6]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(model.calls().is_empty(), "ran without a free slot");
    assert!(rx.try_recv().is_err());
    drop(taken);
    assert_eq!(outputs(rx), [60]);
}

#[test]
fn the_report_says_how_long_a_job_queued_and_its_batch_size() {
    let model = Arc::new(Fake::default());
    let (b, _) = batcher(&model, settings(8, 150), 64);
    let (first, second) = (b.submit("m", vec![1]).unwrap(), b.submit("m", vec![2, 3]).unwrap());
    let (_, report) = first.blocking_recv().unwrap().unwrap();
    assert!(report.queued >= Duration::from_millis(150), "{report:?}");
    assert_eq!(report.batch_size, 3);
    assert_eq!(second.blocking_recv().unwrap().unwrap().1.batch_size, 3);
}
