//! CUDA graphs for the generator's synthesis: the operations of one pass are recorded once per
//! batch size and replayed with a single launch, so a pass no longer waits on the host issuing
//! its several hundred operations one by one (what bounds small models and single pictures on a
//! GPU). Recording and replay go through libtorch's own `CUDAGraph` in a small C++ shim
//! (`shim.cpp`, built by build.rs where libtorch has CUDA and its headers are at hand), so the
//! caching allocator keeps the recorded pass's memory in a pool of its own.
//!
//! This module owns the shim, the `cuda_graphs` switch and [`Graphs`], the per-key cache of
//! recorded passes with their input and output tensors; and, since the shim is what reaches
//! the CUDA runtime, [`blocking_waits`] and [`SideStream`]. It does not know what a pass
//! computes; the generator decides what may be recorded (no host reads or host-to-device
//! copies inside).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::{Device, TchError, Tensor};

type Result<T> = std::result::Result<T, TchError>;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns recording on or off for the whole process (the `cuda_graphs` setting, on by default;
/// off until a CUDA device is configured).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether this binary was built with the shim.
pub fn built() -> bool {
    cfg!(mixgan_graphs)
}

/// The calling thread's current CUDA stream on `device`, as a driver `CUstream` (null, the
/// legacy default stream, where the shim is not built or the call fails). Kernels launched
/// through the driver queue there so that a recording takes them in.
pub fn current_stream(device: usize) -> *mut std::ffi::c_void {
    shim::current_stream(device)
}

/// Makes host threads that wait on `device` (a copy to the host, the end of a stream) sleep
/// until the GPU is done instead of spinning on a core, for the whole process
/// (`cudaDeviceScheduleBlockingSync`). Through the shim, which reaches the CUDA runtime.
pub fn blocking_waits(device: usize) -> Result<()> {
    shim::blocking_waits(device)
}

/// This thread's CUDA work on a stream of its own from libtorch's pool while the guard lives,
/// started after what the thread's stream had queued (patches made by the generators' workers
/// on the device's default stream) and followed by it again when the guard drops. Compositing
/// on a GPU runs under one: requests composite side by side on the device, where on the one
/// default stream each waited behind every other request's work and every generator batch
/// queued before its own copies. A thread keeps its stream from one guard to the next: the
/// caching allocator keeps freed memory per stream, so a new stream each time would start
/// with none and allocate afresh from the device. The streams are of the pool's high
/// priority, which recordings never take: a recording captures whatever any thread queues on
/// its stream. `None` on the CPU, where the shim is not
/// built, or where no stream can be had (the work then stays on the current stream).
pub struct SideStream {
    _handle: shim::SideHandle,
    // The guard restores this thread's stream: it must drop on the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl SideStream {
    pub fn enter(device: Device) -> Option<SideStream> {
        thread_local! {
            /// This thread's device and stream on it (0 until a guard takes one from the pool).
            static OWN: std::cell::Cell<(usize, i64)> = const { std::cell::Cell::new((0, 0)) };
        }
        let Device::Cuda(i) = device else { return None };
        let mut id = match OWN.get() {
            (on, id) if on == i => id,
            _ => 0,
        };
        let entered = shim::side_stream_enter(i, &mut id);
        OWN.set((i, id));
        match entered {
            Ok(handle) => Some(SideStream { _handle: handle, _not_send: std::marker::PhantomData }),
            Err(e) => {
                tracing::debug!(error = %e, "no side stream; working on the current one");
                None
            }
        }
    }
}

/// A memory pool of libtorch's caching allocator that recorded passes allocate from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool(u64, u64);

/// One recorded pass, replayable on the thread's current stream.
pub struct Graph(shim::Handle);

// SAFETY: a CUDA graph may be launched from any thread; the shim's object is only freed once.
unsafe impl Send for Graph {}

impl Graph {
    /// Records what `work` queues on `device` (nothing runs: the device only sees the
    /// replays), allocating from `pool` or a new one. `work` runs on a side stream that is
    /// current for its duration; it must not read results on the host or copy from it.
    pub fn record<T>(device: usize, pool: Option<Pool>, work: impl FnOnce() -> Result<T>) -> Result<(Graph, T)> {
        let handle = shim::begin(device, pool)?;
        let out = work();
        let ended = shim::end(&handle);
        match (out, ended) {
            (Ok(out), Ok(())) => Ok((Graph(handle), out)),
            (Err(e), _) => Err(TchError::Torch(format!("recording a CUDA graph: {e}"))),
            (Ok(_), Err(e)) => Err(e),
        }
    }

    pub fn replay(&self) -> Result<()> {
        shim::replay(&self.0)
    }

    pub fn pool(&self) -> Pool {
        shim::pool(&self.0)
    }
}

/// What a key's next pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run the operations as usual (the first pass at a key: cuDNN's autotuner and the
    /// generator's own measurements run there, and they cannot be recorded).
    Eager,
    /// Record the pass, then replay it.
    Record,
    /// Replay the recorded pass.
    Replay,
}

/// A key's state: eager passes so far, recorded, or failed to record (eager for good).
enum Slot {
    Eager(u32),
    Ready { graph: Graph, input: Tensor, output: Tensor },
    Failed(String),
}

impl Slot {
    fn step(&self) -> Step {
        match self {
            Slot::Eager(n) if *n < EAGER_PASSES => Step::Eager,
            Slot::Eager(_) => Step::Record,
            Slot::Ready { .. } => Step::Replay,
            Slot::Failed(_) => Step::Eager,
        }
    }
}

/// Eager passes at a key before it is recorded.
const EAGER_PASSES: u32 = 1;

/// Passes at a batch size that leave it recorded on `device` (1 where nothing is recorded):
/// what a warm-up runs so that no timed or served pass records.
pub fn warmup_passes(device: Device) -> usize {
    if wanted(device).is_some() {
        EAGER_PASSES as usize + 1
    } else {
        1
    }
}

/// Recorded passes by key (for the generator: batch size and noise), each with its own input
/// and output tensors; all of one cache share a memory pool, which is safe because its replays
/// queue on one stream one after another and every recorded output stays alive.
pub struct Graphs<K> {
    slots: Mutex<(HashMap<K, Slot>, Option<Pool>)>,
}

impl<K> Default for Graphs<K> {
    fn default() -> Self {
        Self { slots: Mutex::new((HashMap::new(), None)) }
    }
}

// SAFETY: the tensors held are only touched with the mutex held, and only by enqueueing work
// on the device (libtorch allows that from any thread).
unsafe impl<K: Send> Sync for Graphs<K> {}

impl<K: Hash + Eq + Clone + std::fmt::Debug> Graphs<K> {
    /// What the next pass at `key` would do.
    pub fn step(&self, key: &K) -> Step {
        self.lock().0.get(key).map_or(Step::Eager, Slot::step)
    }

    /// `pass(input)` on `device`: eagerly at first, then recorded and replayed with `input`
    /// copied into the recording's own input tensor and the result copied out of its output
    /// (the next replay overwrites it). A recording that fails is logged once and the key
    /// stays eager.
    pub fn run(
        &self,
        key: K,
        device: usize,
        input: &Tensor,
        pass: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut slots = self.lock();
        let (map, pool) = &mut *slots;
        let slot = map.entry(key.clone()).or_insert(Slot::Eager(0));
        match slot.step() {
            Step::Eager => {
                drop(slots);
                let out = pass(input)?;
                // Counted once finished: a pass at the same key on another thread meanwhile
                // stays eager too, since its tuning may not be done yet.
                if let Some(Slot::Eager(n)) = self.lock().0.get_mut(&key) {
                    *n += 1;
                }
                Ok(out)
            }
            Step::Replay => {
                let Slot::Ready { graph, input: recorded, output } = slot else { unreachable!("a replay step") };
                if recorded.size() != input.size() {
                    return Err(TchError::Shape(format!(
                        "CUDA graph {key:?} was recorded for {:?}, given {:?}",
                        recorded.size(),
                        input.size()
                    )));
                }
                recorded.f_copy_(input)?;
                graph.replay()?;
                output.f_detach_copy()
            }
            Step::Record => {
                let recorded = input.f_detach_copy()?;
                match Graph::record(device, *pool, || pass(&recorded)) {
                    Ok((graph, output)) => {
                        graph.replay()?;
                        let result = output.f_detach_copy()?;
                        *pool = Some(graph.pool());
                        tracing::debug!(key = ?key, "recorded a CUDA graph");
                        *slot = Slot::Ready { graph, input: recorded, output };
                        Ok(result)
                    }
                    Err(e) => {
                        tracing::warn!(key = ?key, error = %e, "a CUDA graph could not be recorded; running eagerly");
                        *slot = Slot::Failed(e.to_string());
                        drop(slots);
                        pass(input)
                    }
                }
            }
        }
    }

    /// How many keys are recorded, and why the first that could not be was not.
    pub fn summary(&self) -> (usize, Option<String>) {
        let slots = self.lock();
        let recorded = slots.0.values().filter(|s| matches!(s, Slot::Ready { .. })).count();
        let failed = slots.0.values().find_map(|s| match s {
            Slot::Failed(why) => Some(why.clone()),
            _ => None,
        });
        (recorded, failed)
    }

    /// Forgets every recording (the generator's settings changed).
    pub fn clear(&self) {
        *self.lock() = (HashMap::new(), None);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<K, Slot>, Option<Pool>)> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether the generator on `device` should record its passes.
pub fn wanted(device: Device) -> Option<usize> {
    match device {
        Device::Cuda(i) if enabled() && built() => Some(i),
        _ => None,
    }
}

#[cfg(mixgan_graphs)]
mod shim {
    use std::ffi::{c_char, c_int, c_void, CStr};

    use super::{Pool, Result};
    use tch::TchError;

    extern "C" {
        fn mixgan_cuda_current_stream(device: c_int) -> *mut c_void;
        fn mixgan_graph_begin(device: c_int, pool_a: u64, pool_b: u64, err: *mut c_char, len: usize) -> *mut c_void;
        fn mixgan_graph_end(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        fn mixgan_graph_replay(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        fn mixgan_graph_pool(g: *mut c_void, pool_a: *mut u64, pool_b: *mut u64);
        fn mixgan_graph_free(g: *mut c_void);
        fn mixgan_cuda_blocking_sync(device: c_int, err: *mut c_char, len: usize) -> c_int;
        fn mixgan_side_stream_enter(device: c_int, id: *mut i64, err: *mut c_char, len: usize) -> *mut c_void;
        fn mixgan_side_stream_exit(s: *mut c_void);
    }

    pub struct SideHandle(*mut c_void);

    impl Drop for SideHandle {
        fn drop(&mut self) {
            // SAFETY: the handle came from mixgan_side_stream_enter and is given back only here.
            unsafe { mixgan_side_stream_exit(self.0) }
        }
    }

    pub fn side_stream_enter(device: usize, id: &mut i64) -> Result<SideHandle> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: `id` and the buffer outlive the call and the buffer's length is given.
        call("taking a side stream", |err, len| {
            handle = unsafe { mixgan_side_stream_enter(device as c_int, id, err, len) };
            !handle.is_null()
        })?;
        Ok(SideHandle(handle))
    }

    pub struct Handle(*mut c_void);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from mixgan_graph_begin and is freed only here.
            unsafe { mixgan_graph_free(self.0) }
        }
    }

    /// Calls `f` with an error buffer and turns a non-zero status into the shim's message.
    fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<()> {
        let mut buf = vec![0 as c_char; 1024];
        if f(buf.as_mut_ptr(), buf.len()) {
            return Ok(());
        }
        // SAFETY: the shim writes a NUL-terminated message within the buffer.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        Err(TchError::Torch(format!("{what}: {msg}")))
    }

    pub fn current_stream(device: usize) -> *mut c_void {
        // SAFETY: no preconditions; the shim returns null on any failure.
        unsafe { mixgan_cuda_current_stream(device as c_int) }
    }

    pub fn begin(device: usize, pool: Option<Pool>) -> Result<Handle> {
        let Pool(a, b) = pool.unwrap_or(Pool(0, 0));
        let mut handle = std::ptr::null_mut();
        // SAFETY: the buffer outlives the call and its length is given.
        call("starting a CUDA graph", |err, len| {
            handle = unsafe { mixgan_graph_begin(device as c_int, a, b, err, len) };
            !handle.is_null()
        })?;
        Ok(Handle(handle))
    }

    pub fn end(g: &Handle) -> Result<()> {
        // SAFETY: a live handle; the buffer outlives the call.
        call("ending a CUDA graph", |err, len| unsafe { mixgan_graph_end(g.0, err, len) } == 0)
    }

    pub fn replay(g: &Handle) -> Result<()> {
        // SAFETY: a live handle; the buffer outlives the call.
        call("replaying a CUDA graph", |err, len| unsafe { mixgan_graph_replay(g.0, err, len) } == 0)
    }

    pub fn blocking_waits(device: usize) -> Result<()> {
        // SAFETY: the buffer outlives the call and its length is given.
        call("making waits on the GPU block", |err, len| unsafe {
            mixgan_cuda_blocking_sync(device as c_int, err, len) == 0
        })
    }

    pub fn pool(g: &Handle) -> Pool {
        let (mut a, mut b) = (0, 0);
        // SAFETY: a live handle and two valid out-pointers.
        unsafe { mixgan_graph_pool(g.0, &mut a, &mut b) };
        Pool(a, b)
    }
}

#[cfg(not(mixgan_graphs))]
mod shim {
    use super::{Pool, Result};
    use tch::TchError;

    pub struct Handle;
    pub struct SideHandle;

    pub fn side_stream_enter(_device: usize, _id: &mut i64) -> Result<SideHandle> {
        Err(TchError::Torch(NOT_BUILT.into()))
    }

    const NOT_BUILT: &str = "this binary was built without CUDA graphs (see build.rs)";

    pub fn current_stream(_device: usize) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }

    pub fn begin(_device: usize, _pool: Option<Pool>) -> Result<Handle> {
        Err(TchError::Torch(NOT_BUILT.into()))
    }

    pub fn end(_g: &Handle) -> Result<()> {
        Err(TchError::Torch(NOT_BUILT.into()))
    }

    pub fn replay(_g: &Handle) -> Result<()> {
        Err(TchError::Torch(NOT_BUILT.into()))
    }

    pub fn pool(_g: &Handle) -> Pool {
        Pool(0, 0)
    }

    pub fn blocking_waits(_device: usize) -> Result<()> {
        Err(TchError::Torch(NOT_BUILT.into()))
    }
}

#[cfg(test)]
mod tests;
