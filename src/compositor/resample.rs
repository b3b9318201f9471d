//! Bilinear resampling of [C, h, w] tensors for the compositor: patches fitted to their
//! rectangles and the pyramid's expand step. Upscaling is done here with separable lerps
//! (in plain Rust on the CPU, `cpu::upscale`), because libtorch's kernel takes a slow
//! channels-last path for three channels; shrinking stays with libtorch's antialiased
//! kernel. Nothing here knows about layouts or models.

use tch::{TchError, Tensor};

use super::cpu;
use crate::model::device::upload;

type Result<T> = std::result::Result<T, TchError>;

/// Bilinear resize of [C, h, w] (or [N, C, h, w]), antialiased when it shrinks either side.
pub fn resize(x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    let (xh, xw) = super::sides(x);
    if xh == h && xw == w {
        return Ok(x.shallow_clone());
    }
    if h >= xh && w >= xw {
        return upscale(x, h, w);
    }
    super::as_batch(x, |x| x.f_internal_upsample_bilinear2d_aa([h, w], false, None, None))
}

/// Bilinear upscaling of [C, h, w] to [C, `h`, `w`] (neither side shrinks), one axis at a time.
pub fn upscale(x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    if cpu::fits(x) && h > 0 && w > 0 {
        return cpu::upscale(x, h as usize, w as usize);
    }
    match super::matrices::upscale(x, h, w)? {
        Some(y) => Ok(y),
        None => upscale_ops(x, h, w),
    }
}

/// `upscale` in tensor ops, for any device and size.
fn upscale_ops(x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    let across = x.dim() as i64 - 1;
    let along_w = upscale_axis_to(x, w, across)?;
    upscale_axis_to(&along_w, h, across - 1)
}

fn upscale_axis_to(x: &Tensor, to: i64, dim: i64) -> Result<Tensor> {
    let n = x.size()[dim as usize];
    if to % n == 0 {
        upscale_axis(x, to / n, dim)
    } else {
        lerp_axis(x, to, dim)
    }
}

/// Bilinear resampling of axis `dim` to `to` samples for any ratio, as libtorch computes it
/// (align_corners false: source `(i + 0.5) * n / to - 0.5`, clamped at 0): two gathers and a
/// lerp with per-sample weights.
fn lerp_axis(x: &Tensor, to: i64, dim: i64) -> Result<Tensor> {
    let table = cpu::lerp_table(x.size()[dim as usize] as usize, to as usize);
    let lo: Vec<i64> = table.iter().map(|&(lo, _, _)| lo as i64).collect();
    let hi: Vec<i64> = table.iter().map(|&(_, hi, _)| hi as i64).collect();
    let t: Vec<f32> = table.iter().map(|&(_, _, t)| t).collect();
    let device = x.device();
    let lo = upload(&Tensor::from_slice(&lo), device)?;
    let hi = upload(&Tensor::from_slice(&hi), device)?;
    let mut shape = vec![1i64; x.dim()];
    shape[dim as usize] = to;
    let t = upload(&Tensor::from_slice(&t), device)?.f_view(shape.as_slice())?;
    x.f_index_select(dim, &lo)?.f_lerp_tensor(&x.f_index_select(dim, &hi)?, &t)
}

/// Bilinear upscaling of axis `dim` of [C, h, w] by the whole factor `s`, equal to libtorch's
/// `upsample_bilinear2d` (align_corners false) there: output phase `r` of every source pixel
/// is a fixed lerp of two neighbours (edges replicated). A few strided lerps beat the general
/// kernel, which takes its slow channels-last path for three channels, about six times.
fn upscale_axis(x: &Tensor, s: i64, dim: i64) -> Result<Tensor> {
    if s == 1 {
        return Ok(x.shallow_clone());
    }
    let mut size = x.size();
    let n = size[dim as usize];
    let pad = if dim == x.dim() as i64 - 1 { [1, 1, 0, 0] } else { [0, 0, 1, 1] };
    let padded = super::blend::replicate_edges(x, pad)?;
    let mut phased = size.clone();
    phased.insert(dim as usize + 1, s);
    let out = Tensor::f_empty(phased.as_slice(), (x.kind(), x.device()))?;
    for r in 0..s {
        let src = (r as f64 + 0.5) / s as f64 - 0.5;
        let below = src.floor();
        let (a, b) = (padded.f_narrow(dim, below as i64 + 1, n)?, padded.f_narrow(dim, below as i64 + 2, n)?);
        let _ = a.f_lerp_scalar_out(&out.f_select(dim + 1, r)?, &b, src - below)?;
    }
    size[dim as usize] = n * s;
    out.f_view(size.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn whole_factor_upscale_equals_libtorch_bilinear() {
        tch::manual_seed(5);
        let x = Tensor::randn([3, 12, 9], (Kind::Float, Device::Cpu));
        for (sh, sw) in [(2, 2), (3, 3), (4, 4), (2, 4), (1, 3), (5, 1)] {
            let (h, w) = (12 * sh, 9 * sw);
            let reference = x.unsqueeze(0).upsample_bilinear2d([h, w], false, None, None).squeeze_dim(0);
            for ours in [resize(&x, h, w).unwrap(), upscale_ops(&x, h, w).unwrap()] {
                assert_eq!(ours.size(), vec![3, h, w]);
                let diff = (ours - &reference).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "factor {sh}x{sw}: max diff {diff}");
            }
        }
    }

    #[test]
    fn any_upscale_equals_libtorch_bilinear() {
        tch::manual_seed(6);
        let x = Tensor::randn([3, 32, 29], (Kind::Float, Device::Cpu));
        for (h, w) in [(236, 192), (33, 30), (64, 100), (511, 301), (32, 200)] {
            let reference = x.unsqueeze(0).upsample_bilinear2d([h, w], false, None, None).squeeze_dim(0);
            for ours in [resize(&x, h, w).unwrap(), upscale_ops(&x, h, w).unwrap()] {
                let diff = (ours - &reference).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{h}x{w}: max diff {diff}");
            }
        }
    }

    #[test]
    fn upscaling_to_nothing_gives_an_empty_tensor() {
        let x = Tensor::ones([3, 4, 5], (Kind::Float, Device::Cpu));
        for (h, w) in [(0, 5), (4, 0)] {
            assert_eq!(upscale(&x, h, w).unwrap().numel(), 0, "{h}x{w}");
        }
    }
}
