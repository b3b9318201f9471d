//! The compositor's separable filters (blurs, the pyramid's reduce step, bilinear upscaling)
//! as two matrix products, one per axis, on a GPU: there each shifted multiply-add of the
//! tensor-op versions is a kernel launch, some fifty for a 13-tap blur, which cost the host
//! more than the arithmetic; a product with the filter's matrix is one launch per axis. The
//! matrices are made on the host once per shape and kept per thread (a thread composites on
//! its own stream, so they stay on it). Up to [`LARGEST_SIDE`] samples a side, where the
//! products' extra arithmetic is still cheap for a GPU. The CPU keeps its own filters
//! (`cpu`) and, for batches, the tensor ops: its cores pay for every multiplication the
//! matrices add (a CPU service painting batches went from 0.76 of its generators to 0.67).

use std::cell::RefCell;
use std::collections::HashMap;

use tch::{Device, Kind, TchError, Tensor};

use crate::model::device::upload;

type Result<T> = std::result::Result<T, TchError>;

/// The longest side, in or out, filtered by matrices; longer ones take the tensor ops.
pub const LARGEST_SIDE: i64 = 1024;

/// Matrices kept per thread before the cache starts afresh.
const KEPT: usize = 64;

/// What a matrix resamples: `n` samples to `to`, by a blur's taps (as f32 bits) and step, or
/// bilinearly.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Filter {
    Blur { taps: Vec<u32>, step: usize },
    Bilinear,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    filter: Filter,
    n: usize,
    to: usize,
    /// The [n, to] matrix (multiplied on the right, along the width) or its transpose (on
    /// the left, along the height).
    across: bool,
    device: Device,
}

thread_local! {
    static MATRICES: RefCell<HashMap<Key, Tensor>> = RefCell::new(HashMap::new());
}

/// For each output sample, its inputs and their weights.
fn weights(filter: &Filter, n: usize, to: usize) -> Vec<Vec<(usize, f32)>> {
    match filter {
        Filter::Blur { taps, step } => {
            let p = taps.len() / 2;
            (0..to)
                .map(|i| {
                    let taps = taps.iter().map(|&t| f32::from_bits(t));
                    taps.enumerate().map(|(k, t)| ((i * step + k).saturating_sub(p).min(n - 1), t)).collect()
                })
                .collect()
        }
        Filter::Bilinear => {
            super::cpu::lerp_table(n, to).into_iter().map(|(lo, hi, t)| vec![(lo, 1.0 - t), (hi, t)]).collect()
        }
    }
}

/// The filter's matrix on `device`: [n, to] when `across`, else [to, n].
fn matrix(key: Key) -> Result<Tensor> {
    if let Some(m) = MATRICES.with(|c| c.borrow().get(&key).map(Tensor::shallow_clone)) {
        return Ok(m);
    }
    let (n, to) = (key.n, key.to);
    let mut values = vec![0f32; n * to];
    for (i, inputs) in weights(&key.filter, n, to).into_iter().enumerate() {
        for (j, w) in inputs {
            values[if key.across { j * to + i } else { i * n + j }] += w;
        }
    }
    let shape = if key.across { [n as i64, to as i64] } else { [to as i64, n as i64] };
    let m = upload(&Tensor::from_slice(&values), key.device)?.f_view(shape)?;
    MATRICES.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEPT {
            c.clear();
        }
        c.insert(key, m.shallow_clone());
    });
    Ok(m)
}

/// `x` [.., h, w] filtered along the width to `ow` samples and along the height to `oh`, on
/// any device: `None` where a side is longer than [`LARGEST_SIDE`] or empty.
fn separable(x: &Tensor, filter: Filter, oh: i64, ow: i64) -> Result<Option<Tensor>> {
    let (h, w) = super::sides(x);
    if [h, w, oh, ow].iter().any(|s| !(1..=LARGEST_SIDE).contains(s)) || x.kind() != Kind::Float {
        return Ok(None);
    }
    let device = x.device();
    let key =
        |n: i64, to: i64, across: bool| Key { filter: filter.clone(), n: n as usize, to: to as usize, across, device };
    let across = matrix(key(w, ow, true))?;
    let down = matrix(key(h, oh, false))?;
    Ok(Some(down.f_matmul(&x.f_matmul(&across)?)?))
}

/// `blend::blur_step` by matrices where they serve (see [`separable`]; never on the CPU):
/// the blur with `taps`, edges replicated, keeping every `step`-th output along each axis.
pub fn blur_step(x: &Tensor, taps: &[f32], step: usize) -> Result<Option<Tensor>> {
    if x.device() == Device::Cpu {
        return Ok(None);
    }
    blur_step_anywhere(x, taps, step)
}

fn blur_step_anywhere(x: &Tensor, taps: &[f32], step: usize) -> Result<Option<Tensor>> {
    let (h, w) = super::sides(x);
    let filter = Filter::Blur { taps: taps.iter().map(|t| t.to_bits()).collect(), step };
    separable(x, filter, (h as usize).div_ceil(step) as i64, (w as usize).div_ceil(step) as i64)
}

/// `resample::upscale` by matrices where they serve (never on the CPU): bilinear, as
/// libtorch samples it (align_corners false).
pub fn upscale(x: &Tensor, h: i64, w: i64) -> Result<Option<Tensor>> {
    if x.device() == Device::Cpu {
        return Ok(None);
    }
    upscale_anywhere(x, h, w)
}

fn upscale_anywhere(x: &Tensor, h: i64, w: i64) -> Result<Option<Tensor>> {
    separable(x, Filter::Bilinear, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compositor::{blend, resample};

    fn largest_difference(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.size(), b.size());
        (a - b).abs().max().double_value(&[])
    }

    /// Single windows, batches and windows of larger tensors, odd and even sides.
    fn inputs() -> Vec<Tensor> {
        tch::manual_seed(12);
        let mut xs: Vec<Tensor> = [vec![3, 37, 52], vec![1, 64, 65], vec![2, 4, 9, 7], vec![1, 1, 1, 5], vec![4, 6, 1]]
            .iter()
            .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)))
            .collect();
        xs.push(Tensor::randn([2, 3, 40, 50], (Kind::Float, Device::Cpu)).narrow(2, 3, 30).narrow(3, 5, 41));
        xs
    }

    /// The products sum the same terms as the shifted multiply-adds in another order (and
    /// add up the taps that replicated edges bring onto one sample first): float32 rounding,
    /// a few 1e-7 of values of about one.
    #[test]
    fn blurs_by_matrices_equal_the_shifted_sums() {
        let gauss = blend::gaussian_taps(1.5);
        let burt = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
        for x in inputs() {
            for (taps, step) in [(&gauss[..], 1), (&burt[..], 1), (&burt[..], 2), (&gauss[..], 2), (&[1.0][..], 1)] {
                let ours = blur_step_anywhere(&x, taps, step).unwrap().expect("small enough");
                let ops = blend::blur_step_ops(&x, taps, step as i64).unwrap();
                let diff = largest_difference(&ours, &ops);
                assert!(diff < 2e-6, "{:?}, {} taps, step {step}: {diff}", x.size(), taps.len());
            }
        }
    }

    #[test]
    fn upscaling_by_matrices_equals_libtorch_bilinear() {
        for x in inputs() {
            let (h, w) = crate::compositor::sides(&x);
            for (to_h, to_w) in [(h, w), (2 * h, 2 * w), (4 * h, 3 * w), (h + 7, 3 * w + 1)] {
                let ours = upscale_anywhere(&x, to_h, to_w).unwrap().expect("small enough");
                let four = if x.dim() == 3 { x.unsqueeze(0) } else { x.shallow_clone() };
                let reference = four.upsample_bilinear2d([to_h, to_w], false, None, None).reshape(ours.size());
                let diff = largest_difference(&ours, &reference);
                assert!(diff < 1e-5, "{:?} to {to_h} x {to_w}: {diff}", x.size());
            }
        }
    }

    /// Past the largest side the tensor ops take over, with the same result.
    #[test]
    fn long_sides_are_left_to_the_tensor_ops() {
        let x = Tensor::randn([1, 1, LARGEST_SIDE + 1, 6], (Kind::Float, Device::Cpu));
        assert!(blur_step_anywhere(&x, &[0.25, 0.5, 0.25], 1).unwrap().is_none());
        assert!(upscale_anywhere(&x.narrow(2, 0, 8), LARGEST_SIDE + 1, 6).unwrap().is_none());
        // And the CPU keeps its own ways whatever the size.
        assert!(blur_step(&x.narrow(2, 0, 8), &[0.25, 0.5, 0.25], 1).unwrap().is_none());
        let taps = blend::gaussian_taps(1.0);
        let through = blend::gaussian_blur(&x, 1.0).unwrap();
        assert_eq!(largest_difference(&through, &blend::blur_step_ops(&x, &taps, 1).unwrap()), 0.0);
        let up = resample::upscale(&x.narrow(2, 0, 8), LARGEST_SIDE + 1, 6).unwrap();
        assert_eq!(up.size(), [1, 1, LARGEST_SIDE + 1, 6]);
    }

    /// A thread keeps each matrix it made, and makes it again after the cache starts afresh.
    #[test]
    fn matrices_are_kept_per_shape() {
        let x = Tensor::randn([3, 20, 30], (Kind::Float, Device::Cpu));
        let first = upscale_anywhere(&x, 40, 60).unwrap().unwrap();
        let cached = MATRICES.with(|c| c.borrow().len());
        assert!(cached >= 2);
        let again = upscale_anywhere(&x, 40, 60).unwrap().unwrap();
        assert_eq!(MATRICES.with(|c| c.borrow().len()), cached, "made again");
        assert_eq!(largest_difference(&first, &again), 0.0);
        for n in 0..KEPT {
            let _ = upscale_anywhere(&x, 41 + n as i64, 60).unwrap();
        }
        assert!(MATRICES.with(|c| c.borrow().len()) <= KEPT);
    }
}
