//! The compositor's CPU passes against the tensor ops they replace.

use super::super::{blend, poisson};
use super::*;
use crate::router::geometry::Rect;

/// Odd and even sides, one to four channels, a contiguous input and a window of a larger
/// tensor (the compositor's inputs are often windows).
pub(super) fn inputs() -> Vec<Tensor> {
    tch::manual_seed(11);
    let mut xs = Vec::new();
    for (c, h, w) in [(1, 37, 52), (3, 64, 65), (4, 9, 7), (1, 1, 5), (2, 6, 1)] {
        xs.push(Tensor::randn([c, h, w], (Kind::Float, Device::Cpu)));
    }
    let big = Tensor::randn([3, 40, 50], (Kind::Float, Device::Cpu));
    xs.push(big.narrow(1, 3, 30).narrow(2, 5, 41));
    xs
}

pub(super) fn largest_difference(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn blur_equals_the_tensor_ops() {
    let gauss = blend::gaussian_taps(1.5);
    let burt = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    for x in inputs() {
        for (taps, step) in [(&gauss[..], 1), (&burt[..], 1), (&burt[..], 2), (&gauss[..], 2), (&[1.0][..], 1)] {
            let ours = blur_step(&x, taps, step).unwrap();
            let ops = blend::blur_step_ops(&x, taps, step as i64).unwrap();
            // The same products summed in the same order: equal to the last bit.
            assert_eq!(largest_difference(&ours, &ops), 0.0, "{:?}, {} taps, step {step}", x.size(), taps.len());
        }
    }
}

#[test]
fn empty_windows_are_left_to_the_tensor_ops() {
    for size in [[3, 0, 5], [1, 4, 0], [0, 3, 3]] {
        let x = Tensor::zeros(size, (Kind::Float, Device::Cpu));
        assert!(!fits(&x), "{size:?}");
        // Whatever libtorch makes of them, an answer or an error, never a panic.
        let _ = blend::dilate(&x, 2);
        let _ = blend::gaussian_blur(&x, 1.0);
    }
}

#[test]
fn dilation_equals_the_tensor_ops() {
    for x in inputs() {
        for r in [0, 1, 3, 6, 40] {
            let ours = dilate(&x, r).unwrap();
            let ops = blend::dilate_ops(&x, r as i64).unwrap();
            assert_eq!(largest_difference(&ours, &ops), 0.0, "{:?}, radius {r}", x.size());
        }
    }
}

#[test]
fn colour_matching_equals_its_tensor_ops() {
    tch::manual_seed(8);
    for (h, w) in [(40, 30), (9, 7), (64, 65)] {
        let patch = Tensor::rand([3, h, w], (Kind::Float, Device::Cpu)) * 1.6 - 0.9;
        let base = Tensor::rand([3, h + 6, w + 6], (Kind::Float, Device::Cpu)) * 0.8 - 0.2;
        let inside = Tensor::rand([1, h, w], (Kind::Float, Device::Cpu));
        let ring = Tensor::rand([1, h + 6, w + 6], (Kind::Float, Device::Cpu)).gt(0.7).to_kind(Kind::Float);
        // A window of a larger canvas, as the compositor passes it.
        let canvas = Tensor::rand([3, h + 20, w + 20], (Kind::Float, Device::Cpu));
        let window = canvas.narrow(1, 5, h + 6).narrow(2, 3, w + 6);
        for around in [&base, &window] {
            let ours = blend::match_colors(&patch, &inside, around, &ring).unwrap();
            let ops = blend::match_colors_ops(&patch, &inside, around, &ring).unwrap();
            // Sums of some thousand values: float32's against double precision's.
            let diff = largest_difference(&ours, &ops);
            assert!(diff < 2e-5, "{h}x{w}: {diff}");
            assert!(largest_difference(&ours, &patch) > 1e-2, "{h}x{w}: nothing moved");
        }
    }
    // Under eight pixels inside or in the ring (none, or seven): the patch as it was, both
    // ways; eight are enough.
    let patch = Tensor::rand([3, 4, 4], (Kind::Float, Device::Cpu));
    let other = Tensor::rand([3, 4, 4], (Kind::Float, Device::Cpu)) * 0.3 + 0.5;
    let ones = Tensor::ones([1, 4, 4], (Kind::Float, Device::Cpu));
    let first = |k: i64| ones.flatten(0, -1).narrow(0, 0, k).f_constant_pad_nd([0, 16 - k]).unwrap().view([1, 4, 4]);
    for (inside, ring, moves) in
        [(first(0), first(16), false), (first(16), first(7), false), (first(8), first(8), true)]
    {
        let ours = blend::match_colors(&patch, &inside, &other, &ring).unwrap();
        let ops = blend::match_colors_ops(&patch, &inside, &other, &ring).unwrap();
        assert!(largest_difference(&ours, &ops) < 2e-5);
        assert_eq!(
            !ours.equal(&patch),
            moves,
            "{} inside, {} in the ring",
            inside.sum(Kind::Float),
            ring.sum(Kind::Float)
        );
    }
}

#[test]
fn the_first_pyramid_level_equals_its_tensor_ops() {
    tch::manual_seed(17);
    let canvas = Tensor::randn([3, 50, 60], (Kind::Float, Device::Cpu));
    // A window of the canvas, as the compositor passes it, and a contiguous base; patches
    // at the corner, inside and flush with the far edges, themselves windows of a larger
    // (premultiplied colour and alpha) tensor.
    let window = canvas.narrow(1, 4, 40).narrow(2, 7, 45);
    let contiguous = Tensor::randn([3, 40, 45], (Kind::Float, Device::Cpu));
    let mask = Tensor::rand([1, 40, 45], (Kind::Float, Device::Cpu));
    for base in [&window, &contiguous] {
        for (x, y, pw, ph) in [(0, 0, 10, 12), (5, 9, 30, 20), (15, 28, 30, 12), (0, 0, 45, 40)] {
            let both = Tensor::randn([4, ph + 3, pw + 5], (Kind::Float, Device::Cpu)).narrow(1, 2, ph).narrow(2, 1, pw);
            let (patch, alpha) = (both.narrow(0, 0, 3), both.narrow(0, 3, 1).sigmoid());
            let at = Rect { x: x as i64, y: y as i64, w: pw, h: ph };
            for a in [None, Some(&alpha)] {
                let ours = difference_level(base, &patch, a, x, y, &mask).unwrap().expect("fits");
                let ops = blend::difference_level_ops(base, &patch, a, &at, &mask).unwrap();
                assert_eq!(largest_difference(&ours, &ops), 0.0, "{at:?}, alpha {}", a.is_some());
            }
        }
    }
    // Laid over the base: as `matte::over` and a paste.
    for (x, y, pw, ph) in [(0, 0, 10, 12), (15, 28, 30, 12)] {
        let both = Tensor::randn([4, ph, pw], (Kind::Float, Device::Cpu));
        let (patch, alpha) = (both.narrow(0, 0, 3), both.narrow(0, 3, 1).sigmoid());
        for a in [None, Some(&alpha)] {
            let ours = laid_over(&window, &patch, a, x, y).unwrap().expect("fits");
            let ops = window.copy();
            let mut under = ops.narrow(1, y as i64, ph).narrow(2, x as i64, pw);
            let laid = a.map_or(patch.shallow_clone(), |a| super::super::matte::over(&under, &patch, a).unwrap());
            under.copy_(&laid);
            assert_eq!(largest_difference(&ours, &ops), 0.0, "{x}, {y}, alpha {}", a.is_some());
        }
    }
    // Out of the base, or an alpha of another size: left to the tensor ops.
    let patch = Tensor::randn([3, 10, 10], (Kind::Float, Device::Cpu));
    assert!(difference_level(&contiguous, &patch, None, 40, 0, &mask).unwrap().is_none());
    let alpha = Tensor::rand([1, 9, 10], (Kind::Float, Device::Cpu));
    assert!(difference_level(&contiguous, &patch, Some(&alpha), 0, 0, &mask).unwrap().is_none());
    assert!(laid_over(&contiguous, &patch, None, 36, 31).unwrap().is_none());
    // A place before the base's start (a negative offset cast) wraps to no overlap.
    assert!(laid_over(&contiguous, &patch, None, 0, usize::MAX - 4).unwrap().is_none());
}

#[test]
fn feathering_and_the_clone_reach_equal_their_tensor_ops() {
    for x in inputs().iter().filter(|x| x.size()[1] > 1 && x.size()[2] > 1) {
        let mask = x.narrow(0, 0, 1).sigmoid();
        let ops = (blend::gaussian_blur(&mask, 1.5).unwrap() * 2.0 - 1.0).clamp(0.0, 1.0);
        assert_eq!(largest_difference(&blend::feathered(&mask, 3.0).unwrap(), &ops), 0.0, "{:?}", x.size());
        let hard = mask.gt(0.5).to_kind(Kind::Float);
        let ops = (blend::gaussian_blur(&hard, 1.0).unwrap() * 4.0).clamp(0.0, 1.0);
        assert_eq!(largest_difference(&blend::clone_reach(&mask).unwrap(), &ops), 0.0, "{:?}", x.size());
    }
}

#[test]
fn the_masked_divergence_equals_its_tensor_ops() {
    tch::manual_seed(13);
    for (c, h, w) in [(3, 40, 33), (1, 3, 3), (2, 5, 17)] {
        let base = Tensor::randn([c, h, w], (Kind::Float, Device::Cpu));
        let patch = Tensor::randn([c, h, w], (Kind::Float, Device::Cpu));
        // A soft mask: values on both sides of the 0.5 threshold, and a window of a
        // larger tensor for the patch.
        let mask = Tensor::rand([1, h, w], (Kind::Float, Device::Cpu));
        let wide = Tensor::randn([c, h + 2, w + 4], (Kind::Float, Device::Cpu)).narrow(1, 1, h).narrow(2, 3, w);
        for p in [&patch, &wide] {
            let ours = masked_divergence(&base, p, &mask).unwrap();
            let ops = poisson::masked_divergence_ops(&base, p, &mask).unwrap();
            assert_eq!(largest_difference(&ours, &ops), 0.0, "{c} x {h} x {w}");
        }
    }
}
