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
mod tests {
    use super::*;
    use crate::model::kernels::{for_device, tests::with_tensor_ops};

    fn channels_last(x: Tensor) -> Tensor {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    /// Whether the two tensors hold the same values bit for bit.
    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        a.size() == b.size() && a.view_dtype(Kind::Int).equal(&b.view_dtype(Kind::Int))
    }

    /// The epilogue, against the tensor ops StyleConv runs without kernels, over every mix of
    /// its operands: per-channel and per-pixel bias, with and without noise, clamp and the next
    /// layer's scaling, leaky ReLU and none, channel counts that are and are not multiples of
    /// eight. Where the CPU has FMA the bits are the tensor ops'; elsewhere within a rounding.
    #[test]
    fn the_epilogue_is_the_tensor_ops() {
        tch::manual_seed(5);
        let fma = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("fma");
        for (n, c, h) in [(1, 64, 8), (3, 13, 5), (2, 32, 16), (4, 3, 1)] {
            for case in 0..16 {
                let (per_pixel, noisy, clamped, post) = (case & 1 == 1, case & 2 == 2, case & 4 == 4, case & 8 == 8);
                let y = channels_last(randn(&[n, c, h, h]) * 300);
                let d = randn(&[n, c]).abs();
                let nb = if per_pixel { channels_last(randn(&[1, c, h, h])) } else { randn(&[c]) };
                let noise = noisy.then(|| randn(&[n, 1, h, h]));
                let post_s = post.then(|| randn(&[n, c]));
                let slope = if case % 3 == 0 { 1.0 } else { 0.2 };
                let fin = Finish {
                    d: &d,
                    nb: &nb,
                    noise: noise.as_ref(),
                    noise_gain: 0.7,
                    slope,
                    clamp: clamped.then_some(256.0),
                    post: post_s.as_ref(),
                };
                let mut want = nb.view([-1, c, if per_pixel { h } else { 1 }, if per_pixel { h } else { 1 }]);
                want = want.addcmul(&y, &d.view([n, c, 1, 1]));
                if let Some(z) = &noise {
                    want += z.f_mul_scalar(0.7).unwrap();
                }
                want = want.prelu(&Tensor::from_slice(&[slope as f32]));
                if clamped {
                    want = want.clamp(-256.0, 256.0);
                }
                if let Some(s) = &post_s {
                    want *= s.view([n, c, 1, 1]);
                }
                let got = y.copy();
                let what = format!("{n}x{c}x{h}x{h}, case {case}");
                assert!(
                    epilogue(&got, &fin).unwrap(),
                    "{what}: taken {:?} {:?} {:?}",
                    got.stride(),
                    nb.size(),
                    nb.stride()
                );
                let diff = (&got - &want).abs().max().double_value(&[]);
                let tol = want.abs().max().double_value(&[]) * 2.0 * f64::from(f32::EPSILON);
                assert!(diff <= tol, "{what}: {diff}");
                assert!(!fma || same_bits(&got, &want), "{what}: not the tensor ops' bits");
            }
        }
    }

    /// The style scaling is the tensor op's product, bit for bit.
    #[test]
    fn the_scaling_is_the_tensor_op() {
        for (n, c, h) in [(2, 64, 4), (3, 13, 3)] {
            let x = channels_last(randn(&[n, c, h, h]));
            let s = randn(&[n, c]);
            let got = scale(&x, &s).unwrap().expect("taken");
            assert!(same_bits(&got, &(&x * s.view([n, c, 1, 1]))), "{n}x{c}x{h}x{h}");
            assert_eq!(got.stride(), x.stride(), "in the features' layout");
        }
    }

    /// Features in another layout or type, or elsewhere, are left to the tensor ops.
    #[test]
    fn only_float32_channels_last_on_the_cpu_is_taken() {
        let x = channels_last(randn(&[2, 8, 4, 4]));
        let s = randn(&[2, 8]);
        assert!(scale(&x, &s).unwrap().is_some());
        for other in [x.contiguous(), x.to_kind(Kind::Half), x.to_kind(Kind::Double), x.narrow(2, 0, 2)] {
            assert!(features(&other).is_none(), "{:?} {:?} {:?}", other.size(), other.stride(), other.kind());
            assert!(scale(&other, &s).unwrap().is_none());
        }
    }

    /// toRGB against the tensor ops: a matrix product, the bias and the clamp, onto nothing, a
    /// picture at the same size (in place) or one at half the size (upsampled by StyleGAN2's
    /// filter); the features scaled for the next layer beside it are the scaling pass's, bit
    /// for bit. Float32's rounding apart (another order of the sums).
    #[test]
    fn torgb_is_the_tensor_ops() {
        use crate::model::kernels::{Picture, Rgb, CPU};
        use crate::model::ops::Filter;
        let taps = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 1.0]);
        let filter = Filter::from_buffer(&(taps.outer(&taps) / 64.0)).unwrap();
        tch::manual_seed(8);
        for (n, c, h, o) in [(2, 64, 8, 3), (3, 13, 4, 4), (1, 32, 16, 1)] {
            let what = format!("{n}x{c}x{h}x{h} to {o}");
            let x = channels_last(randn(&[n, c, h, h]));
            let (wm, bias, s) = (randn(&[n, o, c]) * 0.3, randn(&[o]), randn(&[n, c]));
            let contribution = wm
                .matmul(&x.contiguous().view([n, c, h * h]))
                .view([n, o, h, h])
                .f_add(&bias.view([1, o, 1, 1]))
                .unwrap()
                .clamp(-2.0, 2.0);
            let (same, small) = (randn(&[n, o, h, h]), randn(&[n, o, h / 2, h / 2]));
            let up = filter.upsample2d(&small, false).unwrap();
            // The picture at the same size is added to in place.
            let onto = same.copy();
            for (prev, want) in [
                (None, contribution.shallow_clone()),
                (Some(Picture::Same(&onto)), &same + &contribution),
                (Some(Picture::Half(&small)), &up + &contribution),
            ] {
                let rgb = Rgb { wm: &wm, bias: &bias, clamp: Some(2.0), prev, next: Some(&s), keep: true };
                let (picture, scaled) = CPU.to_rgb(&x, &rgb).unwrap().expect("taken");
                let diff = (&picture - &want).abs().max().double_value(&[]);
                assert!(diff <= 1e-5, "{what}: {diff}");
                assert!(same_bits(&scaled.unwrap(), &scale(&x, &s).unwrap().unwrap()), "{what}: the scaled features");
            }
            let in_place = (&onto - (&same + &contribution)).abs().max().double_value(&[]);
            assert!(in_place <= 1e-5, "{what}: the picture at the same size is added to in place");
        }
    }

    /// A block's last epilogue with its toRGB layer in one pass makes the bits of the two
    /// passes one after the other: the features (scaled for the next layer or not, left as
    /// they were where nobody reads them) and the picture.
    #[test]
    fn the_epilogue_with_torgb_is_the_two_passes_in_one() {
        use crate::model::kernels::{Picture, Rgb, CPU};
        tch::manual_seed(9);
        let (n, c, h) = (2, 24, 8);
        let x = channels_last(randn(&[n, c, h, h]) * 3);
        let (d, nb, noise) = (randn(&[n, c]).abs(), channels_last(randn(&[1, c, h, h])), randn(&[n, 1, h, h]));
        let fin =
            Finish { d: &d, nb: &nb, noise: Some(&noise), noise_gain: 0.7, slope: 0.2, clamp: Some(1.5), post: None };
        let (wm, bias, s) = (randn(&[n, 3, c]) * 0.3, randn(&[3]), randn(&[n, c]));
        let small = randn(&[n, 3, h / 2, h / 2]);
        for (next, keep) in [(None, true), (Some(&s), true), (None, false)] {
            let what = format!("next {}, keep {keep}", next.is_some());
            let rgb = Rgb { wm: &wm, bias: &bias, clamp: Some(2.0), prev: Some(Picture::Half(&small)), next, keep };
            let two = x.copy();
            assert!(CPU.epilogue(&two, &fin).unwrap());
            let (picture, scaled) = CPU.to_rgb(&two, &rgb).unwrap().expect("taken");
            let one = x.copy();
            let in_one = CPU.epilogue_rgb(&one, &fin, &rgb).unwrap().expect("taken");
            assert!(same_bits(&in_one, &picture), "{what}: the picture");
            let features = if keep { scaled.unwrap_or(two) } else { x.shallow_clone() };
            assert!(same_bits(&one, &features), "{what}: the features");
        }
    }

    /// The face model draws what it draws with tensor ops alone with the CPU's passes, to
    /// float32's rounding (well under an 8-bit level), and the passes ran.
    #[test]
    fn the_generator_draws_the_same_with_the_cpu_passes() {
        use crate::model::{GenerationParams, Model, NoiseMode};
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/face");
        let model = Model::load(&dir, Device::Cpu).unwrap();
        for noise_mode in [NoiseMode::Const, NoiseMode::Random] {
            let params: Vec<GenerationParams> =
                (0..3).map(|s| GenerationParams { trunc: 0.7, noise_mode, ..model.default_params(s) }).collect();
            assert!(for_device(Device::Cpu).is_some_and(|k| !k.filter()));
            let before = RAN.with(|r| r.get());
            let with = model.generate(&params).unwrap();
            let ran = RAN.with(|r| r.get()) - before;
            let plain = with_tensor_ops(|| model.generate(&params).unwrap());
            assert!(ran >= 10, "{noise_mode:?}: {ran} passes");
            assert_eq!(RAN.with(|r| r.get()) - before, ran, "none with tensor ops alone");
            let diff = (&with - &plain).abs().max().double_value(&[]);
            assert!(diff <= 1e-4, "{noise_mode:?}: {diff}");
        }
    }
}
