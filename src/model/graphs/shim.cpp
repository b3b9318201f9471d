// CUDA graph capture and replay for the generator, over libtorch's own at::cuda::CUDAGraph
// (tch binds none of it), so the caching allocator and libtorch's streams take part as they
// do for PyTorch's graphs; and side streams from libtorch's pool for work that should not
// queue behind everything else on the default stream. Every entry point catches C++
// exceptions and hands back their text: nothing may unwind into Rust. CUDA runtime calls of
// our own are looked up at run time in the runtime libtorch already loaded, so the binary
// needs no CUDA library at link time beyond libtorch's.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <dlfcn.h>

#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  c10::DeviceIndex device = 0;
  c10::MempoolId_t pool{0, 0};
  // The thread's stream before the capture, current again once it ends.
  std::optional<c10::cuda::CUDAStream> previous;
};

void report(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, what, len - 1);
    err[len - 1] = '\0';
  }
}

template <class F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    report(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    report(err, len, e.what());
  } catch (...) {
    report(err, len, "an unknown C++ exception");
  }
  return 1;
}

// A failed capture leaves its error as the runtime's last error, which libtorch's next
// kernel-launch check would report against an unrelated operation: read it away.
void clear_last_error() {
  using GetLastError = int (*)();
  static auto get = reinterpret_cast<GetLastError>(dlsym(RTLD_DEFAULT, "cudaGetLastError"));
  if (get != nullptr) {
    get();
  }
}

// Makes `device` current for the scope and puts the previous one back.
struct DeviceScope {
  c10::DeviceIndex before;
  explicit DeviceScope(c10::DeviceIndex device) : before(c10::cuda::current_device()) {
    c10::cuda::set_device(device);
  }
  ~DeviceScope() {
    try {
      c10::cuda::set_device(before);
    } catch (...) {
    }
  }
};

// A stream of this thread's own for a stretch of work (see SideStream in mod.rs).
struct Side {
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStream side;
};

// Makes `later` wait (on the GPU, not the host) for what `first` has queued so far, through
// an event made for the purpose (the runtime's calls looked up as for the blocking sync:
// ATen's event class pulls in headers the shim cannot build with).
void order_after(const c10::cuda::CUDAStream& first, const c10::cuda::CUDAStream& later) {
  using Create = int (*)(void**, unsigned int);
  using Record = int (*)(void*, void*);
  using Wait = int (*)(void*, void*, unsigned int);
  using Destroy = int (*)(void*);
  static auto create = reinterpret_cast<Create>(dlsym(RTLD_DEFAULT, "cudaEventCreateWithFlags"));
  static auto record = reinterpret_cast<Record>(dlsym(RTLD_DEFAULT, "cudaEventRecord"));
  static auto wait = reinterpret_cast<Wait>(dlsym(RTLD_DEFAULT, "cudaStreamWaitEvent"));
  static auto destroy = reinterpret_cast<Destroy>(dlsym(RTLD_DEFAULT, "cudaEventDestroy"));
  if (create == nullptr || record == nullptr || wait == nullptr || destroy == nullptr) {
    throw std::runtime_error("the loaded CUDA runtime lacks its event calls");
  }
  DeviceScope scope(first.device_index());
  void* event = nullptr;
  constexpr unsigned int kDisableTiming = 0x02;  // cudaEventDisableTiming
  int rc = create(&event, kDisableTiming);
  if (rc == 0) {
    rc = record(event, first.stream());
    if (rc == 0) {
      rc = wait(later.stream(), event, 0);
    }
    destroy(event);  // the wait already queued keeps what it needs
  }
  if (rc != 0) {
    clear_last_error();
    throw std::runtime_error("ordering two CUDA streams failed with CUDA error " + std::to_string(rc));
  }
}

}  // namespace

extern "C" {

// The thread's current stream on `device` (what libtorch queues on), or null.
void* mixgan_cuda_current_stream(int device) {
  try {
    return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  } catch (...) {
    return nullptr;
  }
}

// Starts recording this thread's work on `device` into a new graph: a stream from libtorch's
// low-priority pool becomes current (a graph cannot be captured on the default stream; side
// streams never come from that pool) and allocations made while recording come from the
// memory pool (pool_a, pool_b), or a new pool when both are 0. Other threads' work is neither
// recorded nor disturbed (thread-local mode).
void* mixgan_graph_begin(int device, unsigned long long pool_a, unsigned long long pool_b, char* err, size_t len) {
  Graph* out = nullptr;
  guarded(err, len, [&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    DeviceScope scope(index);
    auto g = std::make_unique<Graph>();
    g->device = index;
    g->pool = (pool_a != 0 || pool_b != 0) ? c10::MempoolId_t{pool_a, pool_b} : at::cuda::graph_pool_handle();
    g->previous = c10::cuda::getCurrentCUDAStream(index);
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, index));
    try {
      g->graph.capture_begin(g->pool, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      clear_last_error();
      throw;
    }
    out = g.release();
  });
  return out;
}

// Ends the recording (the graph is then ready to replay) and makes the previous stream current
// again. On failure the pool is handed back and the graph is left to mixgan_graph_free.
int mixgan_graph_end(void* handle, char* err, size_t len) {
  auto* g = static_cast<Graph*>(handle);
  int rc = guarded(err, len, [&] {
    DeviceScope scope(g->device);
    g->graph.capture_end();
  });
  guarded(nullptr, 0, [&] { c10::cuda::setCurrentCUDAStream(*g->previous); });
  if (rc != 0) {
    clear_last_error();
    // capture_end stops routing allocations to the pool only once the capture succeeded;
    // where it did not get that far, stop it here and drop the pool's reference.
    bool routed = guarded(nullptr, 0, [&] {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(g->device, g->pool);
    }) == 0;
    if (routed) {
      guarded(nullptr, 0, [&] { c10::cuda::CUDACachingAllocator::releasePool(g->device, g->pool); });
    }
  }
  return rc;
}

// Makes host threads that wait on `device` sleep until it is done instead of spinning
// (cudaDeviceScheduleBlockingSync on its primary context; the runtime overwrites the flags of
// a context already made).
int mixgan_cuda_blocking_sync(int device, char* err, size_t len) {
  return guarded(err, len, [&] {
    using SetFlags = int (*)(unsigned int);
    static auto set_flags = reinterpret_cast<SetFlags>(dlsym(RTLD_DEFAULT, "cudaSetDeviceFlags"));
    if (set_flags == nullptr) {
      throw std::runtime_error("the loaded CUDA runtime has no cudaSetDeviceFlags");
    }
    DeviceScope scope(static_cast<c10::DeviceIndex>(device));
    int rc = set_flags(cudaDeviceScheduleBlockingSync);
    if (rc != 0) {
      clear_last_error();
      throw std::runtime_error("cudaSetDeviceFlags failed with CUDA error " + std::to_string(rc));
    }
  });
}

// Makes a stream current for this thread on `device`, after everything queued so far on the
// thread's current stream: the stream `*id` names, or (where it is 0) one from libtorch's
// pool, whose id is then written to `*id`. Side streams come from the high-priority pool and
// recordings take theirs from the other one, so no thread's work can land in a stream that
// another thread is recording.
void* mixgan_side_stream_enter(int device, long long* id, char* err, size_t len) {
  Side* out = nullptr;
  guarded(err, len, [&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    auto previous = c10::cuda::getCurrentCUDAStream(index);
    auto side = *id != 0 ? c10::cuda::CUDAStream::unpack3(*id, index, c10::DeviceType::CUDA)
                         : c10::cuda::getStreamFromPool(true, index);
    order_after(previous, side);
    c10::cuda::setCurrentCUDAStream(side);
    *id = side.id();
    out = new Side{previous, side};
  });
  return out;
}

// Makes the previous stream current again, ordered after the side stream's work.
void mixgan_side_stream_exit(void* handle) {
  auto* s = static_cast<Side*>(handle);
  guarded(nullptr, 0, [&] { order_after(s->side, s->previous); });
  guarded(nullptr, 0, [&] { c10::cuda::setCurrentCUDAStream(s->previous); });
  delete s;
}

// Queues the recorded work on the thread's current stream.
int mixgan_graph_replay(void* handle, char* err, size_t len) {
  auto* g = static_cast<Graph*>(handle);
  return guarded(err, len, [&] { g->graph.replay(); });
}

// The memory pool the graph allocated from, for the next capture to share.
void mixgan_graph_pool(void* handle, unsigned long long* pool_a, unsigned long long* pool_b) {
  auto* g = static_cast<Graph*>(handle);
  *pool_a = g->pool.first;
  *pool_b = g->pool.second;
}

void mixgan_graph_free(void* handle) {
  auto* g = static_cast<Graph*>(handle);
  guarded(nullptr, 0, [&] { delete g; });
}

}  // extern "C"
