//! The generator's own CUDA kernels, for the passes libtorch would split into several
//! broadcasting element-wise kernels: a layer's style scaling, its epilogue (demodulation,
//! noise and bias, leaky ReLU, clamp) and a toRGB layer with the picture's skip sum. At 1024 px
//! those passes are bytes-bound, and libtorch's broadcasting kernels move about a third of
//! what the memory can; each of these reads and writes its features once. On the CPU all but
//! the upsampling layer's filter run as Rust passes ([`cpu`]).
//!
//! Compiled at first use with NVRTC (the one libtorch's CUDA build ships) for the device in
//! hand and launched through the CUDA driver on the thread's current libtorch stream
//! ([`cuda`]), so they queue in order with its kernels (and a CUDA graph being recorded takes
//! them in). Both libraries are opened at run time: a CPU-only machine, or one where either
//! is missing or the compile fails, gets `None` and the caller keeps its tensor ops. This
//! module owns no model state and does not decide when to use a kernel; it only says which
//! tensors it can take (dense NCHW or NHWC, 16-byte aligned).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, TchError, Tensor};

mod cpu;
mod cuda;
mod ffi;
#[cfg(test)]
mod tests;

pub use cuda::{set_enabled, state};
use cuda::{Arg, Cuda};

use super::ops::Up2Padding;

type Result<T> = std::result::Result<T, TchError>;

const THREADS: u32 = 256;
/// Elements per thread in the element-wise kernels (16 bytes of half precision).
const VEC: i64 = 8;

/// [`Finish`]'s tensors as a kernel reads them: `d` and `post` float32 contiguous, `nb` [C]
/// contiguous or, `per_pixel`, [C, H, W] in the features' layout, `noise` float32 contiguous.
struct Operands {
    d: Tensor,
    nb: Tensor,
    per_pixel: bool,
    noise: Option<Tensor>,
    post: Option<Tensor>,
}

/// A layer's epilogue: `clamp(lrelu(y·d + nb + noise·noise_gain), ±clamp)`, with `slope` 1 for
/// no activation, then times `post` where given. `d` and `post` [N, C] float32; `nb` in the
/// features' type, [C] or [C, H, W] in their layout; `noise` [N, H, W] float32.
pub struct Finish<'a> {
    pub d: &'a Tensor,
    pub nb: &'a Tensor,
    pub noise: Option<&'a Tensor>,
    pub noise_gain: f64,
    pub slope: f64,
    pub clamp: Option<f64>,
    pub post: Option<&'a Tensor>,
}

impl Finish<'_> {
    /// The tensors for features of `shape` in `kind` on `device`; `None` where they do not fit.
    fn operands(&self, shape: Dense, kind: Kind, device: Device) -> Result<Option<Operands>> {
        if !on(device, &[Some(self.d), Some(self.nb), self.noise, self.post]) {
            return Ok(None);
        }
        let nb = self.nb;
        let per_channel = nb.numel() as i64 == shape.c;
        let per_pixel = nb.numel() as i64 == shape.c * shape.hw
            && Dense::layout(nb).is_some_and(|s| s.channels_last == shape.channels_last);
        if nb.kind() != kind || !(per_channel || per_pixel) {
            return Ok(None);
        }
        let nb = if per_channel { nb.f_contiguous()? } else { nb.shallow_clone() };
        let d = self.d.f_to_kind(Kind::Float)?.f_contiguous()?;
        let noise = match self.noise {
            Some(t) if t.numel() as i64 == shape.n * shape.hw => Some(t.f_to_kind(Kind::Float)?.f_contiguous()?),
            Some(_) => return Ok(None),
            None => None,
        };
        let post = self.post.map(|p| p.f_to_kind(Kind::Float)?.f_contiguous()).transpose()?;
        let per_sample_channel = |t: &Tensor| t.numel() as i64 == shape.n * shape.c;
        if !per_sample_channel(&d) || post.as_ref().is_some_and(|p| !per_sample_channel(p)) {
            return Ok(None);
        }
        Ok(Some(Operands { d, nb, per_pixel: !per_channel, noise, post }))
    }

    /// The kernels' arguments from `d` on, for features of `shape` in `kind` on `device`, with
    /// the tensors they point into (to be held until the launch); `None` where the tensors do
    /// not fit.
    fn args(&self, shape: Dense, kind: Kind, device: Device) -> Result<Option<(Vec<Arg>, Vec<Tensor>)>> {
        let Some(Operands { d, nb, per_pixel, noise, post }) = self.operands(shape, kind, device)? else {
            return Ok(None);
        };
        if per_pixel && Dense::of(&nb).is_none() {
            return Ok(None);
        }
        let args = vec![
            Arg::tensor(Some(&d)),
            Arg::tensor(Some(&nb)),
            Arg::I32(if per_pixel { 2 } else { 1 }),
            Arg::tensor(noise.as_ref()),
            Arg::F32(self.noise_gain as f32),
            Arg::F32(self.slope as f32),
            Arg::F32(self.clamp.map_or(f32::INFINITY, |c| c as f32)),
            Arg::tensor(post.as_ref()),
            Arg::I64(shape.c),
            Arg::I64(shape.hw),
            Arg::I64(shape.total()),
            Arg::I32(shape.channels_last as i32),
        ];
        Ok(Some((args, [Some(d), Some(nb), noise, post].into_iter().flatten().collect())))
    }
}

/// The kernels loaded into one device's primary context, the CPU's Rust passes, or, for the
/// tests, the CUDA kernels built for the host and run there over CPU tensors, thread by thread.
pub struct Kernels {
    backend: Backend,
}

enum Backend {
    /// In Rust, all but the filtering epilogue ([`cpu`]).
    Cpu,
    Cuda(Cuda),
    #[cfg(test)]
    Host(tests::HostBuild),
}

// SAFETY: a CUDA context and the functions loaded into it may be used from any thread; the
// context is pushed around each launch and popped after.
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

static CPU_ENABLED: AtomicBool = AtomicBool::new(true);
static CPU: Kernels = Kernels { backend: Backend::Cpu };

/// Turns the CPU's passes on or off for the whole process (the `cpu_kernels` setting).
pub fn set_cpu_enabled(on: bool) {
    CPU_ENABLED.store(on, Ordering::Relaxed);
}

/// The kernels for `device`: the CPU's passes, or the CUDA kernels compiled and loaded at the
/// first call; `None` when turned off or where they cannot be built (said once in the log),
/// and the generator keeps its tensor operations.
pub fn for_device(device: Device) -> Option<&'static Kernels> {
    #[cfg(test)]
    if let Some(k) = tests::kernels_for(device) {
        return k;
    }
    match device {
        Device::Cpu => CPU_ENABLED.load(Ordering::Relaxed).then_some(&CPU),
        _ => state(device).ok(),
    }
}

const SUFFIXES: [&str; 3] = ["f32", "f16", "bf16"];

/// The name suffix of a kernel's instance for values of `kind`.
fn suffix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Float => Some(SUFFIXES[0]),
        Kind::Half => Some(SUFFIXES[1]),
        Kind::BFloat16 => Some(SUFFIXES[2]),
        _ => None,
    }
}

impl Kernels {
    /// Whether an upsampling layer's epilogue can filter its features ([`Kernels::up_epilogue`]):
    /// CUDA's kernels and the tests' host build of them, not the CPU's passes.
    pub fn filter(&self) -> bool {
        !matches!(self.backend, Backend::Cpu)
    }

    /// Whether `x` lives where these kernels run.
    fn takes(&self, x: &Tensor) -> bool {
        match &self.backend {
            Backend::Cpu => x.device() == Device::Cpu,
            Backend::Cuda(cuda) => x.device() == Device::Cuda(cuda.ordinal),
            #[cfg(test)]
            Backend::Host(_) => x.device() == Device::Cpu,
        }
    }

    fn launch(&self, base: &str, kind: Kind, blocks: i64, mut args: Vec<Arg>) -> Result<()> {
        let suffix = suffix(kind).ok_or_else(|| TchError::Kind(format!("no {base} kernel for {kind:?}")))?;
        let name = format!("{base}_{suffix}");
        let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(Arg::as_ptr).collect();
        let blocks = u32::try_from(blocks).map_err(|_| TchError::Shape(format!("{base}: {blocks} blocks")))?;
        match &self.backend {
            Backend::Cpu => Err(TchError::Kind(format!("no {base} kernel on the CPU"))),
            Backend::Cuda(cuda) => cuda.launch(&name, blocks, &mut ptrs).map_err(TchError::Torch),
            #[cfg(test)]
            Backend::Host(host) => {
                host.call(&name, blocks, &mut ptrs);
                Ok(())
            }
        }
    }

    /// `x * s`, per sample and channel: `x` [N, C, H, W] dense in either layout, `s` [N, C]
    /// float32. `None` where the kernel cannot take `x`.
    pub fn scale(&self, x: &Tensor, s: &Tensor) -> Result<Option<Tensor>> {
        if let Backend::Cpu = self.backend {
            return cpu::scale(x, s);
        }
        let Some(shape) = Dense::of(x).filter(|_| self.takes(x) && on(x.device(), &[Some(s)])) else {
            return Ok(None);
        };
        let s = s.f_to_kind(Kind::Float)?.f_contiguous()?;
        let out = x.f_empty_like()?;
        if Dense::of(&out) != Some(shape) || s.numel() as i64 != shape.n * shape.c {
            return Ok(None);
        }
        let args = vec![
            Arg::tensor(Some(x)),
            Arg::tensor(Some(&s)),
            Arg::tensor(Some(&out)),
            Arg::I64(shape.c),
            Arg::I64(shape.hw),
            Arg::I64(shape.total()),
            Arg::I32(shape.channels_last as i32),
        ];
        self.launch("scale", x.kind(), shape.vector_blocks(), args)?;
        Ok(Some(out))
    }

    /// In place: the epilogue `fin` over `y`. `false` where the kernel cannot take the tensors.
    pub fn epilogue(&self, y: &Tensor, fin: &Finish) -> Result<bool> {
        if let Backend::Cpu = self.backend {
            return cpu::epilogue(y, fin);
        }
        let Some(shape) = Dense::of(y).filter(|_| self.takes(y)) else { return Ok(false) };
        let Some((fin_args, _held)) = fin.args(shape, y.kind(), y.device())? else { return Ok(false) };
        let mut args = vec![Arg::tensor(Some(y))];
        args.extend(fin_args);
        self.launch("epilogue", y.kind(), shape.vector_blocks(), args)?;
        Ok(true)
    }

    /// An upsampling layer's FIR filter and epilogue in one pass: `t` [N, C, Ht, Wt] is its
    /// strided transposed convolution's result, `fir` [taps, taps] float32 the kernel the
    /// filter correlates with (gain included) after padding `t` by `pad`; then the epilogue
    /// `fin`, whose `nb` and noise have the output's size. Returns the features in `t`'s
    /// layout, or `None` where the kernel cannot take the tensors.
    pub fn up_epilogue(&self, t: &Tensor, fir: &Tensor, pad: Up2Padding, fin: &Finish) -> Result<Option<Tensor>> {
        let Some(input) = Dense::layout_of(t).filter(|_| self.filter() && self.takes(t)) else { return Ok(None) };
        let taps = fir.size().first().copied().unwrap_or(0);
        let fir_fits = fir.kind() == Kind::Float
            && fir.is_contiguous()
            && fir.size() == [taps, taps]
            && on(t.device(), &[Some(fir)]);
        let (ht, wt) = (t.size()[2], t.size()[3]);
        let (ho, wo) = (ht + pad.before + pad.after - taps + 1, wt + pad.before + pad.after - taps + 1);
        if !fir_fits || !(1..=8).contains(&taps) || pad.before != pad.after || ho < 1 || wo < 1 {
            return Ok(None);
        }
        let (n, c) = (input.n, input.c);
        let y = if input.channels_last {
            Tensor::f_empty([n, ho, wo, c], (t.kind(), t.device()))?.f_permute([0, 3, 1, 2])?
        } else {
            Tensor::f_empty([n, c, ho, wo], (t.kind(), t.device()))?
        };
        let Some(shape) = Dense::of(&y) else { return Ok(None) };
        if shape.channels_last != input.channels_last || (!shape.channels_last && wo % VEC != 0) {
            return Ok(None);
        }
        let Some((fin_args, _held)) = fin.args(shape, t.kind(), t.device())? else { return Ok(None) };
        let mut args = vec![
            Arg::tensor(Some(t)),
            Arg::tensor(Some(fir)),
            Arg::I32(taps as i32),
            Arg::I32(pad.before as i32),
            Arg::I64(ht),
            Arg::I64(wt),
            Arg::tensor(Some(&y)),
            Arg::I64(wo),
        ];
        args.extend(fin_args);
        self.launch("up_epilogue", t.kind(), shape.vector_blocks(), args)?;
        Ok(Some(y))
    }

    /// A toRGB layer `rgb` over the features `x`: the picture, and with `rgb.next` the features
    /// scaled for the next layer (in `x`'s type and layout, as [`Kernels::scale`] makes them:
    /// its input, made as `x` is read anyway). `None` where the kernel cannot take the tensors.
    pub fn to_rgb(&self, x: &Tensor, rgb: &Rgb) -> Result<Option<(Tensor, Option<Tensor>)>> {
        if let Backend::Cpu = self.backend {
            return cpu::to_rgb(x, rgb);
        }
        let Some(shape) = Dense::of(x).filter(|_| self.takes(x)) else { return Ok(None) };
        let Some(l) = rgb.prepare(x, shape)? else { return Ok(None) };
        let scaled = match l.next {
            Some(_) => {
                let scaled = x.f_empty_like()?;
                if Dense::of(&scaled) != Some(shape) {
                    return Ok(None);
                }
                Some(scaled)
            }
            None => None,
        };
        let pixels = shape.n * shape.hw;
        let mut args = vec![Arg::tensor(Some(x)), Arg::I64(shape.c), Arg::I32(shape.channels_last as i32)];
        args.extend(l.args(pixels));
        args.push(Arg::tensor(scaled.as_ref()));
        self.launch("to_rgb", x.kind(), pixel_blocks(pixels), args)?;
        Ok(Some((l.out, scaled)))
    }

    /// In place: a layer's epilogue `fin` over `y` (no `post` scaling), and the block's toRGB
    /// layer `rgb` over the features that makes, in the same pass: `y` ends as the features
    /// (scaled by `rgb.next` where given; untouched unless `rgb.keep`) and the picture is
    /// returned, the same bits as [`Kernels::epilogue`] then [`Kernels::to_rgb`] make, without
    /// reading the features back. `None` (and `y` untouched) where the kernel cannot take the
    /// tensors.
    pub fn epilogue_rgb(&self, y: &Tensor, fin: &Finish, rgb: &Rgb) -> Result<Option<Tensor>> {
        if let Backend::Cpu = self.backend {
            return cpu::epilogue_rgb(y, fin, rgb);
        }
        let fits = |_: &Dense| self.takes(y) && fin.post.is_none() && (rgb.keep || rgb.next.is_none());
        let Some(shape) = Dense::of(y).filter(fits) else { return Ok(None) };
        let Some((fin_args, _held)) = fin.args(shape, y.kind(), y.device())? else { return Ok(None) };
        let Some(l) = rgb.prepare(y, shape)? else { return Ok(None) };
        let pixels = shape.n * shape.hw;
        let mut args = vec![Arg::tensor(Some(y))];
        args.extend(fin_args);
        args.extend(l.args(pixels));
        args.push(Arg::I32(rgb.keep as i32));
        self.launch("epilogue_rgb", y.kind(), pixel_blocks(pixels), args)?;
        Ok(Some(l.out))
    }
}

/// Blocks for one thread per pixel.
fn pixel_blocks(pixels: i64) -> i64 {
    (pixels + THREADS as i64 - 1) / THREADS as i64
}

/// A toRGB layer as the kernels take it: `clamp(Σ_c x·wm + bias, ±clamp)` per pixel plus the
/// picture so far, as float32 [N, O, H, W]. `wm` [N, O, C] float32 is the modulated 1x1 weight,
/// O at most 4; the picture so far is `Same(p)`, [N, O, H, W] (written into), or `Half(p)`,
/// [N, O, H/2, W/2], upsampled by the kernel with StyleGAN2's [1, 3, 3, 1] filter; `next`
/// ([N, C] float32), the next layer's input styles, to scale the features by for it; `keep`,
/// whether anyone reads the features after the picture ([`Kernels::epilogue_rgb`] stores them
/// only then; the last block's are not needed).
pub struct Rgb<'a> {
    pub wm: &'a Tensor,
    pub bias: &'a Tensor,
    pub clamp: Option<f64>,
    pub prev: Option<Picture<'a>>,
    pub next: Option<&'a Tensor>,
    pub keep: bool,
}

/// A toRGB launch's tensors beyond the features (held until the launch) and its sizes.
struct RgbLaunch {
    wm: Tensor,
    bias: Tensor,
    clamp: f32,
    prev: Option<Tensor>,
    half: bool,
    out: Tensor,
    next: Option<Tensor>,
    h: i64,
    w: i64,
    o: i64,
}

impl RgbLaunch {
    /// The toRGB arguments both kernels take in this order: wm, bias, clamp, prev, prev_half,
    /// out, H, W, pixels, O, next_s.
    fn args(&self, pixels: i64) -> [Arg; 11] {
        [
            Arg::tensor(Some(&self.wm)),
            Arg::tensor(Some(&self.bias)),
            Arg::F32(self.clamp),
            Arg::tensor(self.prev.as_ref()),
            Arg::I32(self.half as i32),
            Arg::tensor(Some(&self.out)),
            Arg::I64(self.h),
            Arg::I64(self.w),
            Arg::I64(pixels),
            Arg::I32(self.o as i32),
            Arg::tensor(self.next.as_ref()),
        ]
    }
}

impl Rgb<'_> {
    /// The launch's tensors for features `x` of `shape`, or `None` where they do not fit.
    fn prepare(&self, x: &Tensor, shape: Dense) -> Result<Option<RgbLaunch>> {
        let o = self.bias.numel() as i64;
        let picture = self.prev.map(|p| match p {
            Picture::Same(p) | Picture::Half(p) => p,
        });
        let fits = on(x.device(), &[Some(self.wm), Some(self.bias), picture, self.next])
            && (1..=4).contains(&o)
            && self.wm.numel() as i64 == shape.n * o * shape.c
            && self.next.is_none_or(|s| s.numel() as i64 == shape.n * shape.c);
        if !fits {
            return Ok(None);
        }
        let (h, w) = (x.size()[2], x.size()[3]);
        let want = [shape.n, o, h, w];
        let dense = |p: &Tensor, size: &[i64]| p.size() == size && p.kind() == Kind::Float && p.is_contiguous();
        let new = || Tensor::f_empty(want, (Kind::Float, x.device()));
        let (out, prev, half) = match self.prev {
            None => (new()?, None, false),
            Some(Picture::Same(p)) if dense(p, &want) => (p.shallow_clone(), Some(p.shallow_clone()), false),
            Some(Picture::Half(p)) if h % 2 == 0 && w % 2 == 0 && dense(p, &[shape.n, o, h / 2, w / 2]) => {
                (new()?, Some(p.shallow_clone()), true)
            }
            Some(_) => return Ok(None),
        };
        Ok(Some(RgbLaunch {
            wm: self.wm.f_to_kind(Kind::Float)?.f_contiguous()?,
            bias: self.bias.f_to_kind(Kind::Float)?.f_contiguous()?,
            clamp: self.clamp.map_or(f32::INFINITY, |c| c as f32),
            prev,
            half,
            out,
            next: self.next.map(|s| s.f_to_kind(Kind::Float)?.f_contiguous()).transpose()?,
            h,
            w,
            o,
        }))
    }
}

/// Whether every tensor given lives on `device` (a kernel reads them all there).
fn on(device: Device, tensors: &[Option<&Tensor>]) -> bool {
    tensors.iter().flatten().all(|t| t.device() == device)
}

/// The picture a toRGB layer adds to: at its own size, or at half of it (to be upsampled).
#[derive(Clone, Copy)]
pub enum Picture<'a> {
    Same(&'a Tensor),
    Half(&'a Tensor),
}

/// A dense [N, C, H, W] tensor's sizes and layout, where the element-wise kernels can take it:
/// float32, float16 or bfloat16, NCHW with H·W a multiple of 8 or NHWC with C a multiple of 8,
/// its data 16-byte aligned (on the kernels' device: [`Kernels::takes`]).
#[derive(Clone, Copy, PartialEq, Debug)]
struct Dense {
    n: i64,
    c: i64,
    hw: i64,
    channels_last: bool,
}

impl Dense {
    fn of(x: &Tensor) -> Option<Dense> {
        let shape = Self::layout_of(x)?;
        (shape.channels_last || shape.hw % VEC == 0).then_some(shape)
    }

    /// As [`Dense::of`], without asking NCHW's pixels to come in eights (for a kernel's
    /// input that it reads value by value in that layout).
    fn layout_of(x: &Tensor) -> Option<Dense> {
        let shape = Self::layout(x)?;
        let aligned = (x.data_ptr() as usize).is_multiple_of(16);
        let fits = !shape.channels_last || shape.c % VEC == 0;
        (aligned && fits).then_some(shape)
    }

    /// The sizes and layout of a non-empty [N, C, H, W] tensor of a kernel's type stored
    /// densely, NCHW or NHWC, whatever its alignment and sizes.
    fn layout(x: &Tensor) -> Option<Dense> {
        let typed = suffix(x.kind()).is_some();
        if x.dim() != 4 || !typed {
            return None;
        }
        let (size, stride) = (x.size(), x.stride());
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let nchw = stride == [c * h * w, h * w, w, 1];
        let nhwc = stride == [h * w * c, 1, w * c, c];
        let shape = Dense { n, c, hw: h * w, channels_last: nhwc && !nchw };
        ((nchw || nhwc) && x.numel() > 0).then_some(shape)
    }

    fn total(self) -> i64 {
        self.n * self.c * self.hw
    }

    fn vector_blocks(self) -> i64 {
        let threads = self.total() / VEC;
        (threads + THREADS as i64 - 1) / THREADS as i64
    }
}
