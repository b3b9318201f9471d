// The generator's element-wise kernels (see mod.rs), compiled at run time by NVRTC with no
// headers (and, for the tests, by the host's C++ compiler with host.h). Each element-wise
// thread takes 8 neighbours in memory: 8 channels of one pixel when the features are
// channels-last (NHWC), 8 pixels of one channel otherwise (NCHW). Arithmetic is in float32
// whatever the storage type; each value is rounded once, when stored.

// The host build (host.h) also wraps each kernel to take its arguments as a launch passes
// them (one pointer per argument), so that the tests run the Rust launchers themselves.
#ifndef MIXGAN_HOST_CALL
#define MIXGAN_HOST_CALL(kernel)
#endif

typedef unsigned short u16;
struct f16 { u16 x; };
struct bf16 { u16 x; };

__device__ __forceinline__ float ld(float v) { return v; }
#ifdef __CUDACC_RTC__
__device__ __forceinline__ float ld(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
  return f;
}
#else
// The host build of the tests (host.h) converts with the C++ compiler's half type.
__device__ __forceinline__ float ld(f16 v) { return host_half_to_float(v.x); }
#endif
__device__ __forceinline__ float ld(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }

template <typename T> __device__ __forceinline__ T st(float f);
template <> __device__ __forceinline__ float st<float>(float f) { return f; }
template <> __device__ __forceinline__ f16 st<f16>(float f) {
  f16 h;
#ifdef __CUDACC_RTC__
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.x) : "f"(f));
#else
  h.x = host_float_to_half(f);
#endif
  return h;
}
template <> __device__ __forceinline__ bf16 st<bf16>(float f) {
  // Round to nearest even; NaN stays NaN.
  unsigned u = __float_as_uint(f);
  bf16 h;
  h.x = (u & 0x7fffffffu) > 0x7f800000u ? (u16)0x7fc0 : (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return h;
}

// Eight values, moved as 16-byte words.
template <typename T> union Pack {
  uint4 words[sizeof(T) / 2];
  T v[8];
};
template <typename T> __device__ __forceinline__ void load8(const T* p, Pack<T>& r) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int k = 0; k < (int)(sizeof(T) / 2); ++k) r.words[k] = q[k];
}
template <typename T> __device__ __forceinline__ void store8(T* p, const Pack<T>& r) {
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int k = 0; k < (int)(sizeof(T) / 2); ++k) q[k] = r.words[k];
}

// Where element i sits: sample n, channel c, pixel p. 64-bit division costs the GPU many
// instructions, so indices below 2^32 (every batch of config-F up to 64 at 1024 px) divide
// in 32 bits.
struct Place { long long n, c, p; };
template <typename I> __device__ __forceinline__ Place place_in(I i, I C, I HW, int cl) {
  Place at;
  if (cl) {
    at.c = i % C;
    I q = i / C;
    at.p = q % HW;
    at.n = q / HW;
  } else {
    at.p = i % HW;
    I q = i / HW;
    at.c = q % C;
    at.n = q / C;
  }
  return at;
}
__device__ __forceinline__ Place place(long long i, long long C, long long HW, int cl) {
  if (i < 4294967296LL) return place_in<unsigned>((unsigned)i, (unsigned)C, (unsigned)HW, cl);
  return place_in<long long>(i, C, HW, cl);
}

// Each thread's 8 values of x through f(value, n, c, p), stored to out (which may be x).
template <typename T, typename F>
__device__ __forceinline__ void map8(const T* x, T* out, long long C, long long HW, long long total, int cl, F f) {
  long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i >= total) return;
  Place at = place(i, C, HW, cl);
  Pack<T> v;
  load8(x + i, v);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    long long c = cl ? at.c + j : at.c;
    long long p = cl ? at.p : at.p + j;
    v.v[j] = st<T>(f(ld(v.v[j]), at.n, c, p));
  }
  store8(out + i, v);
}

// What the epilogue makes of one value a of sample n, channel c, pixel p (of HW):
// clamp(lrelu(a * d[n, c] + nb + noise[n, p] * noise_gain)), times post[n, c] when given (the
// next layer's style scaling). nb_mode 1: nb[c]; 2: nb[c, p] in the features' layout. slope 1
// is no activation; clampv infinity, no clamp.
template <typename T> struct Finish {
  const float* d;
  const T* nb;
  int nb_mode;
  const float* noise;
  float noise_gain, slope, clampv;
  const float* post;
  long long C, HW;
  int cl;
  __device__ __forceinline__ float operator()(float a, long long n, long long c, long long p) const {
    a *= d[n * C + c];
    if (nb_mode == 1) a += ld(nb[c]);
    else if (nb_mode == 2) a += ld(nb[cl ? p * C + c : c * HW + p]);
    if (noise) a += noise[n * HW + p] * noise_gain;
    if (a < 0.f) a *= slope;
    a = fminf(fmaxf(a, -clampv), clampv);
    return post ? a * post[n * C + c] : a;
  }
};

// The epilogue in place over y.
template <typename T>
__device__ void epilogue(T* y, const float* d, const T* nb, int nb_mode, const float* noise, float noise_gain,
                         float slope, float clampv, const float* post, long long C, long long HW, long long total,
                         int cl) {
  map8(y, y, C, HW, total, cl, Finish<T>{d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, cl});
}

// An upsampling layer's FIR filter and epilogue in one pass: t [N, C, Ht, Wt] is the strided
// transposed convolution's result; each output value y[n, c, oy, ox] (Ho x Wo) is
// sum_ij fir[i, j] * t[n, c, oy + i - before, ox + j - before] (zero outside t), then the
// epilogue. t and y share a layout; a thread makes 8 channels of one pixel (NHWC) or 8 pixels
// of one row (NCHW, Wo a multiple of 8). taps at most 8.
template <typename T>
__device__ void up_epilogue(const T* t, const float* fir, int taps, int before, long long Ht, long long Wt, T* y,
                            long long Wo, const float* d, const T* nb, int nb_mode, const float* noise,
                            float noise_gain, float slope, float clampv, const float* post, long long C, long long HW,
                            long long total, int cl) {
  long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i >= total) return;
  const Finish<T> fin{d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, cl};
  Place at = place(i, C, HW, cl);
  long long oy, ox;
  if (at.p < 4294967296LL) {
    oy = (unsigned)at.p / (unsigned)Wo;
    ox = (unsigned)at.p % (unsigned)Wo;
  } else {
    oy = at.p / Wo;
    ox = at.p % Wo;
  }
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int a = 0; a < taps; ++a) {
    long long iy = oy + a - before;
    if (iy < 0 || iy >= Ht) continue;
    for (int b = 0; b < taps; ++b) {
      float k = fir[a * taps + b];
      if (cl) {
        long long ix = ox + b - before;
        if (ix < 0 || ix >= Wt) continue;
        Pack<T> v;
        load8(t + ((at.n * Ht + iy) * Wt + ix) * C + at.c, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] += k * ld(v.v[j]);
      } else {
        const T* row = t + ((at.n * C + at.c) * Ht + iy) * Wt;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          long long ix = ox + j + b - before;
          if (ix >= 0 && ix < Wt) acc[j] += k * ld(row[ix]);
        }
      }
    }
  }
  Pack<T> v;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    long long c = cl ? at.c + j : at.c;
    long long p = cl ? at.p : at.p + j;
    v.v[j] = st<T>(fin(acc[j], at.n, c, p));
  }
  store8(y + i, v);
}

// out = x * s[n, c].
template <typename T>
__device__ void scale(const T* x, const float* s, T* out, long long C, long long HW, long long total, int cl) {
  map8(x, out, C, HW, total, cl, [=](float a, long long n, long long c, long long) { return a * s[n * C + c]; });
}

// The picture so far at output pixel (y, x) of an H x W picture when prev is at half that
// size: StyleGAN2's [1, 3, 3, 1] upsampling, which is bilinear interpolation of prev padded
// with zeros (weights 3/4 and 1/4 along each axis, the nearer input pixel weighing 3/4).
__device__ __forceinline__ float upsampled(const float* plane, long long y, long long x, long long H, long long W) {
  long long h = H / 2, w = W / 2, ky = y >> 1, kx = x >> 1;
  long long ny = (y & 1) ? ky + 1 : ky - 1, nx = (x & 1) ? kx + 1 : kx - 1;
  bool row = ny >= 0 && ny < h, col = nx >= 0 && nx < w;
  float a = plane[ky * w + kx];
  float b = col ? plane[ky * w + nx] : 0.f;
  float c = row ? plane[ny * w + kx] : 0.f;
  float d = row && col ? plane[ny * w + nx] : 0.f;
  return 0.5625f * a + 0.1875f * (b + c) + 0.0625f * d;
}

// A value as it is: what to_rgb makes of the features it reads.
struct AsIs {};

// Stored value v made by make(value, n, c, p), rounded to T as a stored feature is; as it is
// for AsIs (no round trip through float32).
template <typename T, typename Make>
__device__ __forceinline__ T made(T v, Make make, long long n, long long c, long long p) {
  return st<T>(make(ld(v), n, c, p));
}
template <typename T> __device__ __forceinline__ T made(T v, AsIs, long long, long long, long long) { return v; }

// One pixel (idx of N x H x W) of a toRGB layer, one thread each: the pixel's features x in
// turn, each made by make (`made`), then
// out[n, o, p] = prev + clamp(sum_c feature * wm[n, o, c] + bias[o]), float32 NCHW (H x W);
// O <= 4. prev: null, the picture at the same size (it may be out itself), or, with
// prev_half, the picture at half the size, upsampled here. With keep, each feature is also
// stored there in x's layout (keep may be x), times next_s[n, c] where next_s is given: the
// next layer's style scaling, made as the features are read rather than in a pass of its own.
template <typename T, typename Make>
__device__ __forceinline__ void rgb_pixel(const T* x, Make make, T* keep, const float* next_s, const float* wm,
                                          const float* bias, float clampv, const float* prev, int prev_half,
                                          float* out, long long C, long long H, long long W, long long idx, int O,
                                          int cl) {
  long long HW = H * W;
  // One pixel's place, as in place(): 32-bit division where the index allows.
  long long n, p;
  if (idx < 4294967296LL) {
    n = (unsigned)idx / (unsigned)HW;
    p = (unsigned)idx % (unsigned)HW;
  } else {
    n = idx / HW;
    p = idx % HW;
  }
  const float* w = wm + n * O * C;
  const float* s = next_s ? next_s + n * C : nullptr;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (cl) {
    const T* xp = x + idx * C;
    for (long long c = 0; c < C; c += 8) {
      Pack<T> v, kept;
      load8(xp + c, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        T r = made(v.v[j], make, n, c + j, p);
        float xv = ld(r);
#pragma unroll
        for (int o = 0; o < 4; ++o)
          if (o < O) acc[o] += xv * w[o * C + c + j];
        kept.v[j] = s ? st<T>(xv * s[c + j]) : r;
      }
      if (keep) store8(keep + idx * C + c, kept);
    }
  } else {
    long long at = n * C * HW + p;
    for (long long c = 0; c < C; ++c) {
      T r = made(x[at + c * HW], make, n, c, p);
      float xv = ld(r);
#pragma unroll
      for (int o = 0; o < 4; ++o)
        if (o < O) acc[o] += xv * w[o * C + c];
      if (keep) keep[at + c * HW] = s ? st<T>(xv * s[c]) : r;
    }
  }
#pragma unroll
  for (int o = 0; o < 4; ++o) {
    if (o < O) {
      long long k = (n * O + o) * HW + p;
      float a = fminf(fmaxf(acc[o] + bias[o], -clampv), clampv);
      float base = 0.f;
      if (prev && prev_half) {
        long long y = p < 4294967296LL ? (unsigned)p / (unsigned)W : p / W;
        base = upsampled(prev + (n * O + o) * (HW / 4), y, p - y * W, H, W);
      }
      if (prev && !prev_half) base = prev[k];
      out[k] = base + a;
    }
  }
}

// A toRGB layer over stored features x (rgb_pixel as they are); with next_out, the features
// scaled by next_s go there.
template <typename T>
__device__ void to_rgb(const T* x, long long C, int cl, const float* wm, const float* bias, float clampv,
                       const float* prev, int prev_half, float* out, long long H, long long W, long long pixels, int O,
                       const float* next_s, T* next_out) {
  long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= pixels) return;
  rgb_pixel(x, AsIs{}, next_out, next_out ? next_s : nullptr, wm, bias, clampv, prev, prev_half, out, C, H, W, idx,
            O, cl);
}

// A layer's epilogue (as the epilogue kernel makes it, with no post scaling: the callers pass
// none) and the block's toRGB layer in one pass, one thread per pixel: with keep, y becomes
// the layer's features in place (scaled by next_s where given; without, y is left as it was,
// for the last block, whose features nobody reads), and the picture is what to_rgb would make
// of them, bit for bit, without reading them back. HW is H x W; `total` (the values of y) only
// completes the epilogue's arguments.
template <typename T>
__device__ void epilogue_rgb(T* y, const float* d, const T* nb, int nb_mode, const float* noise, float noise_gain,
                             float slope, float clampv, const float* post, long long C, long long HW, long long total,
                             int cl, const float* wm, const float* bias, float rgb_clamp, const float* prev,
                             int prev_half, float* out, long long H, long long W, long long pixels, int O,
                             const float* next_s, int keep) {
  long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= pixels) return;
  const Finish<T> fin{d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, cl};
  rgb_pixel(y, fin, keep ? y : nullptr, next_s, wm, bias, rgb_clamp, prev, prev_half, out, C, H, W, idx, O, cl);
}

#define MIXGAN_KERNELS(T, SUFFIX)                                                                          \
  extern "C" __global__ void epilogue_##SUFFIX(T* y, const float* d, const T* nb, int nb_mode,             \
                                               const float* noise, float noise_gain, float slope,         \
                                               float clampv, const float* post, long long C, long long HW, \
                                               long long total, int cl) {                                 \
    epilogue<T>(y, d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, total, cl);             \
  }                                                                                                        \
  extern "C" __global__ void up_epilogue_##SUFFIX(                                                         \
      const T* t, const float* fir, int taps, int before, long long Ht, long long Wt, T* y, long long Wo,     \
      const float* d, const T* nb, int nb_mode, const float* noise, float noise_gain, float slope,            \
      float clampv, const float* post, long long C, long long HW, long long total, int cl) {                  \
    up_epilogue<T>(t, fir, taps, before, Ht, Wt, y, Wo, d, nb, nb_mode, noise, noise_gain, slope, clampv,      \
                   post, C, HW, total, cl);                                                                  \
  }                                                                                                        \
  extern "C" __global__ void scale_##SUFFIX(const T* x, const float* s, T* out, long long C, long long HW, \
                                            long long total, int cl) {                                    \
    scale<T>(x, s, out, C, HW, total, cl);                                                                 \
  }                                                                                                        \
  extern "C" __global__ void to_rgb_##SUFFIX(const T* x, long long C, int cl, const float* wm,            \
                                             const float* bias, float clampv, const float* prev,          \
                                             int prev_half, float* out, long long H, long long W,         \
                                             long long pixels, int O, const float* next_s, T* next_out) { \
    to_rgb<T>(x, C, cl, wm, bias, clampv, prev, prev_half, out, H, W, pixels, O, next_s, next_out);        \
  }                                                                                                        \
  extern "C" __global__ void epilogue_rgb_##SUFFIX(                                                        \
      T* y, const float* d, const T* nb, int nb_mode, const float* noise, float noise_gain, float slope,      \
      float clampv, const float* post, long long C, long long HW, long long total, int cl, const float* wm,   \
      const float* bias, float rgb_clamp, const float* prev, int prev_half, float* out, long long H,          \
      long long W, long long pixels, int O, const float* next_s, int keep) {                                  \
    epilogue_rgb<T>(y, d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, total, cl, wm, bias,     \
                    rgb_clamp, prev, prev_half, out, H, W, pixels, O, next_s, keep);                           \
  }                                                                                                        \
  MIXGAN_HOST_CALL(epilogue_##SUFFIX)                                                                      \
  MIXGAN_HOST_CALL(up_epilogue_##SUFFIX)                                                                   \
  MIXGAN_HOST_CALL(scale_##SUFFIX)                                                                         \
  MIXGAN_HOST_CALL(to_rgb_##SUFFIX)                                                                        \
  MIXGAN_HOST_CALL(epilogue_rgb_##SUFFIX)

MIXGAN_KERNELS(float, f32)
MIXGAN_KERNELS(f16, f16)
MIXGAN_KERNELS(bf16, bf16)
