//! The element-wise kernels on the CPU, in Rust: a layer's epilogue (in place) and the style
//! scaling, over float32 features stored channels-last (the CPU's layout, [`features`]).
//! libtorch makes the epilogue in four or five broadcasting passes (`addcmul`, the noise's
//! add, leaky ReLU, clamp, the next layer's scaling); here each is one pass over the features
//! on the caller's thread, a row of channels at a time.
//!
//! Where the CPU has AVX2 and FMA (chosen at each call) `y·d + nb` is one fused multiply-add,
//! as libtorch's `addcmul` makes it on such CPUs, and every other step is the tensor ops' own
//! operation in their order: the same bits. Elsewhere the product rounds before the sum. Other
//! layouts and types are not taken (`None` or `false`), and the caller keeps its tensor ops.

use tch::{Device, Kind, Tensor};

use super::{Dense, Finish, Result};

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
    let pass = Epilogue {
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
    };
    // SAFETY: `y` is dense (checked) and the layer's own fresh features; the operands are
    // other tensors.
    unsafe { write_into(y, |y| pass.run(y)) };
    #[cfg(test)]
    RAN.with(|r| r.set(r.get() + 1));
    Ok(true)
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

impl Epilogue<'_> {
    fn run(&self, y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU was just found to have AVX2 and FMA.
            return unsafe { self.run_fma(y) };
        }
        self.rows::<false>(y);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, y: &mut [f32]) {
        self.rows::<true>(y);
    }

    /// Each optional operand chosen once, outside the loops.
    #[inline(always)]
    fn rows<const FMA: bool>(&self, y: &mut [f32]) {
        match (self.noise.is_some(), self.post.is_some()) {
            (false, false) => self.rows_with::<FMA, false, false>(y),
            (false, true) => self.rows_with::<FMA, false, true>(y),
            (true, false) => self.rows_with::<FMA, true, false>(y),
            (true, true) => self.rows_with::<FMA, true, true>(y),
        }
    }

    #[inline(always)]
    fn rows_with<const FMA: bool, const NOISE: bool, const POST: bool>(&self, y: &mut [f32]) {
        let (c, hw, slope, clamp) = (self.c, self.hw, self.slope, self.clamp);
        for (i, row) in y.chunks_exact_mut(c).enumerate() {
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
        }
    }
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

    /// The face model draws the same bits with the CPU's passes as with tensor ops alone, and
    /// the passes ran.
    #[test]
    fn the_generator_draws_the_same_with_the_cpu_passes() {
        use crate::model::{GenerationParams, Model, NoiseMode};
        let fma = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("fma");
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/face");
        let model = Model::load(&dir, Device::Cpu).unwrap();
        for noise_mode in [NoiseMode::Const, NoiseMode::Random] {
            let params: Vec<GenerationParams> =
                (0..3).map(|s| GenerationParams { trunc: 0.7, noise_mode, ..model.default_params(s) }).collect();
            assert!(for_device(Device::Cpu).is_some_and(|k| !k.complete()));
            let before = RAN.with(|r| r.get());
            let with = model.generate(&params).unwrap();
            let ran = RAN.with(|r| r.get()) - before;
            let plain = with_tensor_ops(|| model.generate(&params).unwrap());
            assert!(ran >= 10, "{noise_mode:?}: {ran} passes");
            assert_eq!(RAN.with(|r| r.get()) - before, ran, "none with tensor ops alone");
            let diff = (&with - &plain).abs().max().double_value(&[]);
            assert!(diff <= 1e-5, "{noise_mode:?}: {diff}");
            assert!(!fma || same_bits(&with, &plain), "{noise_mode:?}: {diff}");
        }
    }
}
