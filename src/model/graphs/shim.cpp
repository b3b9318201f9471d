// CUDA graph capture and replay for the generator, over libtorch's own at::cuda::CUDAGraph
// (tch binds none of it), so the caching allocator and libtorch's streams take part as they
// do for PyTorch's graphs. Every entry point catches C++ exceptions and hands back their text:
// nothing may unwind into Rust. CUDA runtime calls of our own are looked up at run time in the
// runtime libtorch already loaded, so the binary needs no CUDA library at link time beyond
// libtorch's.
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

// Starts recording this thread's work on `device` into a new graph: a side stream from
// libtorch's pool becomes current (a graph cannot be captured on the default stream) and
// allocations made while recording come from the memory pool (pool_a, pool_b), or a new pool
// when both are 0. Other threads' work is neither recorded nor disturbed (thread-local mode).
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
