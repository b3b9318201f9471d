// What kernels.cu needs from CUDA, for a host build: the tests compile the kernels with the
// machine's C++ compiler into a shared library and run every (block, thread) of a launch in a
// loop, so the kernels' arithmetic and indexing are checked where there is no GPU.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __forceinline__ inline
#define __align__(n) alignas(n)

struct uint4 { unsigned x, y, z, w; };
struct dim3 { unsigned x, y, z; };
// Per host thread: tests run side by side, each launch in its own thread.
static thread_local dim3 blockIdx, threadIdx, blockDim;

extern "C" void host_set_thread(unsigned block, unsigned thread, unsigned threads) {
  blockIdx = {block, 0, 0};
  threadIdx = {thread, 0, 0};
  blockDim = {threads, 1, 1};
}

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float host_half_to_float(unsigned short h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
inline unsigned short host_float_to_half(float f) {
  _Float16 v = (_Float16)f;  // round to nearest even, as cvt.rn.f16.f32
  unsigned short h;
  std::memcpy(&h, &v, 2);
  return h;
}
using std::fmaxf;
using std::fminf;

// A kernel called as cuLaunchKernel calls it: `args` holds a pointer to each argument.
template <typename... A, std::size_t... I>
void host_call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <typename... A>
void host_call(void (*kernel)(A...), void** args) {
  host_call_with(kernel, args, std::index_sequence_for<A...>{});
}
#define MIXGAN_HOST_CALL(kernel) \
  extern "C" void host_call_##kernel(void** args) { host_call(kernel, args); }
