//! The kernels on the CPU, in Rust: a layer's epilogue (in place), the style scaling, a toRGB
//! layer, and a block's last epilogue with its toRGB layer, over float32 features stored
//! channels-last (the CPU's layout, [`features`]). libtorch makes the epilogue in four or five
//! broadcasting passes (`addcmul`, the noise's add, leaky ReLU, clamp, the next layer's
//! scaling) and toRGB in a matrix product with three more for the bias, the clamp and the
//! picture so far; here each is one pass over the features on the caller's thread, a row of
//! channels (one pixel) at a time. The upsampling layers' filter stays with the tensor ops.
//!
//! Where the CPU has AVX2 and FMA (chosen at each call) `y·d + nb` is one fused multiply-add,
//! as libtorch's `addcmul` makes it on such CPUs, and every other step of the epilogue is the
//! tensor ops' own operation in their order: the same bits. Elsewhere the product rounds
//! before the sum. toRGB sums its products in its own order, and upsamples the picture so far
//! bilinearly (the same numbers as StyleGAN2's filter, as the CUDA kernels do): float32's
//! rounding apart from the tensor ops. Other layouts and types are not taken (`None` or
//! `false`), and the caller keeps its tensor ops.

use tch::{Device, Kind, Tensor};

use super::{Dense, Finish, Operands, Result, Rgb, RgbLaunch};

/// The sizes of `x` where these kernels take it: float32 [N, C, H, W] on the CPU, dense and
/// channels-last (or with one pixel or one channel, where both layouts are one).
pub(super) fn features(x: &Tensor) -> Option<Dense> {
    let shape = Dense::layout(x)?;
    let rows_of_channels = shape.channels_last || shape.hw == 1 || shape.c == 1;
    (x.device() == Device::Cpu && x.kind() == Kind::Float && rows_of_channels).then_some(shape)
}

/// A dense float32 CPU tensor's values.
fn values(x: &Tensor) -> &[f32] {
    debug_assert!(x.device() == Device::Cpu && x.kind() == Kind::Float);
    // SAFETY: the callers pass dense float32 CPU tensors (checked by `features` or made
    // contiguous), holding `numel` values from `data_ptr`, borrowed for the slice's lifetime.
    unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, x.numel()) }
}

/// Runs `write` over a dense float32 CPU tensor's values in place.
///
/// SAFETY: nothing else reads or writes those values while `write` runs.
unsafe fn write_into(x: &Tensor, write: impl FnOnce(&mut [f32])) {
    write(std::slice::from_raw_parts_mut(x.data_ptr() as *mut f32, x.numel()))
}

/// In place: the epilogue `fin` over `y`. `false` where `y` or `fin`'s tensors are not taken.
pub(super) fn epilogue(y: &Tensor, fin: &Finish) -> Result<bool> {
    let Some(shape) = features(y) else { return Ok(false) };
    let Some(ops) = fin.operands(shape, Kind::Float, Device::Cpu)? else { return Ok(false) };
    let pass = Epilogue::of(fin, &ops, shape);
    // SAFETY: `y` is dense (checked) and the layer's own fresh features; the operands are
    // other tensors.
    unsafe { write_into(y, |y| pass.run(y, true, &mut ())) };
    #[cfg(test)]
    RAN.with(|r| r.set(r.get() + 1));
    Ok(true)
}

/// A toRGB layer `rgb` over the features `x`: the picture, and with `rgb.next` the features
/// scaled by it ([`super::Kernels::to_rgb`]). `None` where the tensors are not taken.
pub(super) fn to_rgb(x: &Tensor, rgb: &Rgb) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let Some(shape) = features(x) else { return Ok(None) };
    let Some(l) = rgb.prepare(x, shape)? else { return Ok(None) };
    let scaled = match l.next {
        Some(_) => {
            let scaled = x.f_empty_like()?;
            if features(&scaled) != Some(shape) {
                return Ok(None);
            }
            Some(scaled)
        }
        None => None,
    };
    let pass = ToRgb::of(&l, shape);
    let x = values(x);
    // SAFETY: `l.out` (the picture so far itself, where it is at this size) and `scaled` are
    // dense float32 tensors that nothing else reads meanwhile; `x` is another tensor.
    unsafe {
        write_into(&l.out, |out| match &scaled {
            Some(s) => write_into(s, |s| pass.run(x, out, Some(s))),
            None => pass.run(x, out, None),
        })
    };
    #[cfg(test)]
    RAN.with(|r| r.set(r.get() + 1));
    Ok(Some((l.out, scaled)))
}

/// In place: a block's last epilogue `fin` over `y` and its toRGB layer `rgb` over the
/// features that makes, in one pass ([`super::Kernels::epilogue_rgb`]): the picture, with `y`
/// as the features (scaled by `rgb.next` where given) when `rgb.keep`, else untouched. `None`
/// (and `y` untouched) where the tensors are not taken.
pub(super) fn epilogue_rgb(y: &Tensor, fin: &Finish, rgb: &Rgb) -> Result<Option<Tensor>> {
    let Some(shape) = features(y).filter(|_| fin.post.is_none() && (rgb.keep || rgb.next.is_none())) else {
        return Ok(None);
    };
    let Some(ops) = fin.operands(shape, Kind::Float, Device::Cpu)? else { return Ok(None) };
    let Some(l) = rgb.prepare(y, shape)? else { return Ok(None) };
    let finish = Epilogue::of(fin, &ops, shape);
    let pass = ToRgb::of(&l, shape);
    // SAFETY: `y` is the layer's own fresh features and `l.out` the picture (dense float32,
    // checked), distinct tensors that nothing else reads meanwhile.
    unsafe { write_into(&l.out, |out| write_into(y, |y| finish.run(y, rgb.keep, &mut PictureToo { pass, out }))) };
    #[cfg(test)]
    RAN.with(|r| r.set(r.get() + 1));
    Ok(Some(l.out))
}

/// `x · s` per sample and channel into a new tensor, `s` [N, C]; `None` where `x` is not taken.
pub(super) fn scale(x: &Tensor, s: &Tensor) -> Result<Option<Tensor>> {
    let Some(shape) = features(x) else { return Ok(None) };
    let s = s.f_to_kind(Kind::Float)?.f_contiguous()?;
    let out = x.f_empty_like()?;
    if features(&out) != Some(shape) || s.device() != Device::Cpu || s.numel() as i64 != shape.n * shape.c {
        return Ok(None);
    }
    let (c, hw) = (shape.c as usize, shape.hw as usize);
    // SAFETY: `out` was made just now (dense, checked) and nothing else holds it.
    unsafe { write_into(&out, |out| scaled(values(x), values(&s), out, c, hw)) };
    #[cfg(test)]
    RAN.with(|r| r.set(r.get() + 1));
    Ok(Some(out))
}

wide! {
    /// `out = x · s[n, c]` over rows of `c` channels, `hw` rows a sample.
    fn scaled(x: &[f32], s: &[f32], out: &mut [f32], c: usize, hw: usize) {
        for (i, (row, from)) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)).enumerate() {
            let s = &s[i / hw * c..][..c];
            for ((o, &v), &s) in row.iter_mut().zip(from).zip(s) {
                *o = v * s;
            }
        }
    }
}

/// One epilogue's operands as values: `clamp(lrelu(y·d + nb + noise·noise_gain)) · post`, the
/// kernels' [`Finish`] over channels-last rows.
struct Epilogue<'a> {
    /// [N, C]
    d: &'a [f32],
    /// [C], or [HW, C] where `per_pixel`.
    nb: &'a [f32],
    per_pixel: bool,
    /// [N, HW]
    noise: Option<&'a [f32]>,
    noise_gain: f32,
    slope: f32,
    clamp: f32,
    /// [N, C]
    post: Option<&'a [f32]>,
    c: usize,
    hw: usize,
}

/// What an epilogue does with each pixel's row once it is made (a trait rather than a
/// closure, so that it is inlined into the pass compiled for AVX2).
trait ThenRow {
    fn row(&mut self, i: usize, row: &mut [f32]);
}

/// Nothing more.
impl ThenRow for () {
    #[inline(always)]
    fn row(&mut self, _: usize, _: &mut [f32]) {}
}

/// The block's toRGB layer over the row, into `out`, then the row scaled for the next layer.
struct PictureToo<'a, 'b> {
    pass: ToRgb<'a>,
    out: &'b mut [f32],
}

impl ThenRow for PictureToo<'_, '_> {
    #[inline(always)]
    fn row(&mut self, i: usize, row: &mut [f32]) {
        self.pass.pixel(i, row, self.out);
        self.pass.scale_row(i, row);
    }
}

/// Whether the CPU has AVX2 and FMA, for which the passes are also compiled.
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[allow(unreachable_code)]
    false
}

impl<'a> Epilogue<'a> {
    fn of(fin: &Finish, ops: &'a Operands, shape: Dense) -> Self {
        Epilogue {
            d: values(&ops.d),
            nb: values(&ops.nb),
            per_pixel: ops.per_pixel,
            noise: ops.noise.as_ref().map(values),
            noise_gain: fin.noise_gain as f32,
            slope: fin.slope as f32,
            clamp: fin.clamp.map_or(f32::INFINITY, |c| c as f32),
            post: ops.post.as_ref().map(values),
            c: shape.c as usize,
            hw: shape.hw as usize,
        }
    }

    /// The epilogue over each pixel's row of `y`, in place where `in_place` (else over a copy
    /// of the row, `y` untouched), then `then` with the pixel and its row.
    fn run(&self, y: &mut [f32], in_place: bool, then: &mut impl ThenRow) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU was just found to have AVX2 and FMA.
            return unsafe { self.run_fma(y, in_place, then) };
        }
        self.rows::<false>(y, in_place, then);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, y: &mut [f32], in_place: bool, then: &mut impl ThenRow) {
        self.rows::<true>(y, in_place, then);
    }

    /// Each optional operand chosen once, outside the loops.
    #[inline(always)]
    fn rows<const FMA: bool>(&self, y: &mut [f32], in_place: bool, then: &mut impl ThenRow) {
        match (self.noise.is_some(), self.post.is_some()) {
            (false, false) => self.rows_with::<FMA, false, false>(y, in_place, then),
            (false, true) => self.rows_with::<FMA, false, true>(y, in_place, then),
            (true, false) => self.rows_with::<FMA, true, false>(y, in_place, then),
            (true, true) => self.rows_with::<FMA, true, true>(y, in_place, then),
        }
    }

    #[inline(always)]
    fn rows_with<const FMA: bool, const NOISE: bool, const POST: bool>(
        &self,
        y: &mut [f32],
        in_place: bool,
        then: &mut impl ThenRow,
    ) {
        let (c, hw, slope, clamp) = (self.c, self.hw, self.slope, self.clamp);
        let mut copy = vec![0.0; if in_place { 0 } else { c }];
        for (i, row) in y.chunks_exact_mut(c).enumerate() {
            let row = if in_place {
                row
            } else {
                copy.copy_from_slice(row);
                &mut copy[..]
            };
            let (n, p) = (i / hw, i % hw);
            let d = &self.d[n * c..][..c];
            let nb = if self.per_pixel { &self.nb[p * c..][..c] } else { &self.nb[..c] };
            let z = if NOISE { self.noise.map_or(0.0, |z| z[i]) * self.noise_gain } else { 0.0 };
            let post = if POST { self.post.map_or(d, |s| &s[n * c..][..c]) } else { d };
            for k in 0..c {
                let mut a = if FMA { row[k].mul_add(d[k], nb[k]) } else { row[k] * d[k] + nb[k] };
                if NOISE {
                    a += z;
                }
                if a < 0.0 {
                    a *= slope;
                }
                // NaN goes through, as libtorch's clamp lets it.
                if a < -clamp {
                    a = -clamp;
                }
                if a > clamp {
                    a = clamp;
                }
                if POST {
                    a *= post[k];
                }
                row[k] = a;
            }
            then.row(i, row);
        }
    }
}

/// One toRGB layer's operands as values (the kernels' [`Rgb`], prepared): per pixel,
/// `out[n, o] = prev + clamp(Σ_c x[c] · wm[n, o, c] + bias[o])`.
struct ToRgb<'a> {
    /// [N, O, C]
    wm: &'a [f32],
    /// [O]
    bias: &'a [f32],
    clamp: f32,
    prev: Prev<'a>,
    /// [N, C]: the next layer's input styles, to scale the features by.
    next: Option<&'a [f32]>,
    o: usize,
    c: usize,
    h: usize,
    w: usize,
}

/// The picture a toRGB layer adds to.
enum Prev<'a> {
    None,
    /// At this size, in the output itself.
    InOut,
    /// At half this size, [N, O, H/2, W/2].
    Half(&'a [f32]),
}

impl<'a> ToRgb<'a> {
    fn of(l: &'a RgbLaunch, shape: Dense) -> Self {
        let prev = match &l.prev {
            None => Prev::None,
            Some(p) if l.half => Prev::Half(values(p)),
            Some(_) => Prev::InOut,
        };
        ToRgb {
            wm: values(&l.wm),
            bias: values(&l.bias),
            clamp: l.clamp,
            prev,
            next: l.next.as_ref().map(values),
            o: l.o as usize,
            c: shape.c as usize,
            h: l.h as usize,
            w: l.w as usize,
        }
    }

    /// The layer over every pixel's row of `x` into `out` [N, O, H, W], and the rows scaled by
    /// `next` into `scaled` where given.
    fn run(&self, x: &[f32], out: &mut [f32], scaled: Option<&mut [f32]>) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU was just found to have AVX2 and FMA.
            return unsafe { self.run_fma(x, out, scaled) };
        }
        self.rows(x, out, scaled);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, x: &[f32], out: &mut [f32], scaled: Option<&mut [f32]>) {
        self.rows(x, out, scaled);
    }

    #[inline(always)]
    fn rows(&self, x: &[f32], out: &mut [f32], scaled: Option<&mut [f32]>) {
        let c = self.c;
        match (scaled, self.next) {
            (Some(scaled), Some(next)) => {
                for (i, (row, dst)) in x.chunks_exact(c).zip(scaled.chunks_exact_mut(c)).enumerate() {
                    self.pixel(i, row, out);
                    let s = &next[i / (self.h * self.w) * c..][..c];
                    for ((d, &v), &s) in dst.iter_mut().zip(row).zip(s) {
                        *d = v * s;
                    }
                }
            }
            _ => {
                for (i, row) in x.chunks_exact(c).enumerate() {
                    self.pixel(i, row, out);
                }
            }
        }
    }

    /// Pixel `i`'s picture values from its features `row`, into `out`.
    #[inline(always)]
    fn pixel(&self, i: usize, row: &[f32], out: &mut [f32]) {
        let (o, c, hw) = (self.o, self.c, self.h * self.w);
        let (n, p) = (i / hw, i % hw);
        let wm = &self.wm[n * o * c..][..o * c];
        for k in 0..o {
            let at = (n * o + k) * hw + p;
            let mut a = dot(row, &wm[k * c..][..c]) + self.bias[k];
            if a < -self.clamp {
                a = -self.clamp;
            }
            if a > self.clamp {
                a = self.clamp;
            }
            let base = match self.prev {
                Prev::None => 0.0,
                Prev::InOut => out[at],
                Prev::Half(prev) => {
                    upsampled(&prev[(n * o + k) * hw / 4..][..hw / 4], p / self.w, p % self.w, self.h, self.w)
                }
            };
            out[at] = base + a;
        }
    }

    /// Pixel `i`'s features `row` scaled in place by `next`, where given.
    #[inline(always)]
    fn scale_row(&self, i: usize, row: &mut [f32]) {
        if let Some(next) = self.next {
            let s = &next[i / (self.h * self.w) * self.c..][..self.c];
            for (v, &s) in row.iter_mut().zip(s) {
                *v *= s;
            }
        }
    }
}

/// `Σ x[k] · w[k]` in eight running sums (which vectorise), added up at the end.
#[inline(always)]
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (xs, ws) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = xs.remainder().iter().zip(ws.remainder()).map(|(a, b)| a * b).sum();
    for (x, w) in xs.zip(ws) {
        for j in 0..8 {
            sums[j] += x[j] * w[j];
        }
    }
    (sums[0] + sums[4]) + (sums[1] + sums[5]) + ((sums[2] + sums[6]) + (sums[3] + sums[7])) + tail
}

/// The picture so far at output pixel (`y`, `x`) of an `h` x `w` picture from `plane`, at half
/// that size: StyleGAN2's [1, 3, 3, 1] upsampling, which is bilinear interpolation of the
/// plane padded with zeros (the nearer input pixel weighing 3/4 along each axis).
#[inline(always)]
fn upsampled(plane: &[f32], y: usize, x: usize, h: usize, w: usize) -> f32 {
    let (hh, hw) = (h / 2, w / 2);
    let (ky, kx) = (y / 2, x / 2);
    let ny = if y % 2 == 1 { ky + 1 } else { ky.wrapping_sub(1) };
    let nx = if x % 2 == 1 { kx + 1 } else { kx.wrapping_sub(1) };
    let (row, col) = (ny < hh, nx < hw);
    let a = plane[ky * hw + kx];
    let b = if col { plane[ky * hw + nx] } else { 0.0 };
    let c = if row { plane[ny * hw + kx] } else { 0.0 };
    let d = if row && col { plane[ny * hw + nx] } else { 0.0 };
    0.5625 * a + 0.1875 * (b + c) + 0.0625 * d
}

#[cfg(test)]
thread_local! {
    /// Epilogues and scalings these passes made on this thread.
    pub(super) static RAN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests;
