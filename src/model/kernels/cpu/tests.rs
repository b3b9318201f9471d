//! The CPU's passes against the tensor ops they replace.

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
    let fin = Finish { d: &d, nb: &nb, noise: Some(&noise), noise_gain: 0.7, slope: 0.2, clamp: Some(1.5), post: None };
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
