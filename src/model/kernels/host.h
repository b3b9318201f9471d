// What kernels.cu needs from CUDA, for a host build: the tests compile the kernels with the
// machine's C++ compiler into a shared library and run every (block, thread) of a launch in a
// loop, so the kernels' arithmetic and indexing are checked where there is no GPU.
#include <cmath>
#include <cstring>

#define __global__
#define __device__
#define __forceinline__ inline
#define __align__(n) alignas(n)

struct uint4 { unsigned x, y, z, w; };
struct dim3 { unsigned x, y, z; };
static dim3 blockIdx, threadIdx, blockDim;

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
