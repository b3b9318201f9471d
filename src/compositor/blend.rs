//! Blending a patch into a canvas window: feathered alpha, multi-band (Laplacian pyramid,
//! Burt and Adelson) and colour matching. All on tensors on the canvas's device; windows are
//! [C, h, w] and masks [1, h, w] in [0, 1].

use tch::{Kind, TchError, Tensor};

use super::cpu;
use crate::router::geometry::Rect;

type Result<T> = std::result::Result<T, TchError>;

/// Separable blur with the 1-D `taps` (odd length), replicating edge pixels. Done as
/// shifted multiply-adds, which beat depthwise convolution for these small kernels on CPU.
fn blur(x: &Tensor, taps: &[f32]) -> Result<Tensor> {
    blur_step(x, taps, 1)
}

/// `blur`, keeping every `step`-th output along each axis (a pyramid's reduce step when 2).
fn blur_step(x: &Tensor, taps: &[f32], step: i64) -> Result<Tensor> {
    if cpu::fits(x) {
        return cpu::blur_step(x, taps, step as usize);
    }
    match super::matrices::blur_step(x, taps, step as usize)? {
        Some(y) => Ok(y),
        None => blur_step_ops(x, taps, step),
    }
}

/// `blur_step` in tensor ops, for any device and size.
pub(super) fn blur_step_ops(x: &Tensor, taps: &[f32], step: i64) -> Result<Tensor> {
    let p = (taps.len() / 2) as i64;
    let mut y = x.shallow_clone();
    let across = x.dim() as i64 - 1;
    for dim in [across, across - 1] {
        let len = y.size()[dim as usize];
        let pad = if dim == across { [p, p, 0, 0] } else { [0, 0, p, p] };
        let padded = replicate_edges(&y, pad)?;
        let tap = |k: i64| padded.f_slice(dim, k, k + len, step);
        let mut acc = tap(0)?.f_mul_scalar(f64::from(taps[0]))?;
        for (k, &t) in taps.iter().enumerate().skip(1) {
            acc = acc.f_add(&tap(k as i64)?.f_mul_scalar(f64::from(t))?)?;
        }
        y = acc;
    }
    Ok(y)
}

/// `x` [C, h, w] or [N, C, h, w] with its edge pixels repeated outwards by `pad` (left,
/// right, top, bottom).
pub(super) fn replicate_edges(x: &Tensor, pad: [i64; 4]) -> Result<Tensor> {
    super::as_batch(x, |x| x.f_pad(pad, "replicate", None))
}

/// Max over a (2r+1)-square neighbourhood of [C, h, w], in two 1-D passes.
pub fn dilate(x: &Tensor, r: i64) -> Result<Tensor> {
    if cpu::fits(x) {
        return cpu::dilate(x, r.max(0) as usize);
    }
    dilate_ops(x, r)
}

/// `dilate` in tensor ops, for any device.
pub(super) fn dilate_ops(x: &Tensor, r: i64) -> Result<Tensor> {
    let k = 2 * r + 1;
    super::as_batch(x, |x| {
        x.f_max_pool2d([1, k], [1, 1], [0, r], [1, 1], false)?.f_max_pool2d([k, 1], [1, 1], [r, 0], [1, 1], false)
    })
}

pub fn gaussian_taps(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| (v / s) as f32).collect()
}

pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Result<Tensor> {
    if sigma <= 0.0 {
        return Ok(x.shallow_clone());
    }
    blur(x, &gaussian_taps(sigma))
}

/// A mask whose edge ramps from 0 at the shape's boundary to 1 about `feather` pixels in.
pub fn feathered(mask: &Tensor, feather: f64) -> Result<Tensor> {
    if feather < 0.5 {
        return Ok(mask.shallow_clone());
    }
    let blurred = gaussian_blur(mask, feather / 2.0)?;
    if cpu::fits(&blurred) {
        return cpu::map(&blurred, |v| (v * 2.0 - 1.0).clamp(0.0, 1.0));
    }
    blurred.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?.f_clamp(0.0, 1.0)
}

/// Where a Poisson clone of `mask` takes over from the canvas: one inside the hard mask (over
/// one half) and its first pixel or two outside, ramping to zero over the next (the hard
/// mask blurred by one pixel, times four, at most one).
pub fn clone_reach(mask: &Tensor) -> Result<Tensor> {
    if cpu::fits(mask) {
        let hard = cpu::map(mask, |m| if m > 0.5 { 1.0 } else { 0.0 })?;
        return cpu::map(&gaussian_blur(&hard, 1.0)?, |v| (v * 4.0).clamp(0.0, 1.0));
    }
    gaussian_blur(&mask.f_gt(0.5)?.f_to_kind(Kind::Float)?, 1.0)?.f_mul_scalar(4.0)?.f_clamp(0.0, 1.0)
}

/// `alpha * patch + (1 - alpha) * base`.
pub fn mix(base: &Tensor, patch: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    base.f_add(&patch.f_sub(base)?.f_mul(alpha)?)
}

/// `mix` written into `base` (a window of the canvas) in place: the same values.
pub fn mix_into(base: &Tensor, patch: &Tensor, alpha: &Tensor) -> Result<()> {
    let _ = base.shallow_clone().f_add_(&patch.f_sub(base)?.f_mul(alpha)?)?;
    Ok(())
}

const BURT_ADELSON: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];

fn down(x: &Tensor) -> Result<Tensor> {
    blur_step(x, &BURT_ADELSON, 2)
}

fn up(x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    super::resample::upscale(x, h, w)
}

/// Pyramid levels for a region of `side` pixels (its shorter side).
pub fn levels_for(side: i64) -> usize {
    ((side.max(1) as f64).log2().floor() as i64 - 4).clamp(1, 5) as usize
}

/// Multi-band blending (Burt and Adelson) of `patch`, pasted over `at` (a rectangle of
/// `base`'s window), into `base`, under `mask`: the Laplacian pyramids of `base` and of
/// `base` with the patch pasted, mixed level by level under the Gaussian pyramid of `mask`,
/// then collapsed. Since the Laplacian pyramid is linear, that is `base` plus the collapsed,
/// masked pyramid of the difference, which needs one pyramid instead of two; the difference
/// is the patch minus `base` over `at` and zero elsewhere. With `alpha`, the patch is
/// premultiplied colour laid over `base` by that coverage ([`super::matte::over`]), whose
/// difference from `base` is `patch - alpha * base`. Returns that collapsed difference (the
/// blend less `base`), for the caller to add to its window in place.
pub fn laplacian(
    base: &Tensor,
    patch: &Tensor,
    alpha: Option<&Tensor>,
    at: &Rect,
    mask: &Tensor,
    levels: usize,
) -> Result<Tensor> {
    // The difference and the mask as one tensor, so that each level is one blur.
    let first = match cpu::difference_level(base, patch, alpha, at.x as usize, at.y as usize, mask)? {
        Some(first) => first,
        None => difference_level_ops(base, patch, alpha, at, mask)?,
    };
    let c = super::channels(base);
    let mut pyramid = vec![first];
    for _ in 0..levels {
        let last = pyramid.last().expect("non-empty");
        let (h, w) = super::sides(last);
        if h < 4 || w < 4 {
            break;
        }
        let next = down(last)?;
        pyramid.push(next);
    }
    let top = &pyramid[pyramid.len() - 1];
    let mut out = top.f_narrow(-3, 0, c)?.f_mul(&top.f_narrow(-3, c, 1)?)?;
    for k in (0..pyramid.len() - 1).rev() {
        out = if cpu::fits(&pyramid[k]) && cpu::fits(&out) {
            cpu::collapse_step(&pyramid[k], &pyramid[k + 1], &out)?
        } else {
            collapse_step_ops(&pyramid[k], &pyramid[k + 1], &out)?
        };
    }
    Ok(out)
}

/// `laplacian`'s first level in tensor ops, for any device and batch.
pub(super) fn difference_level_ops(
    base: &Tensor,
    patch: &Tensor,
    alpha: Option<&Tensor>,
    at: &Rect,
    mask: &Tensor,
) -> Result<Tensor> {
    let (c, (h, w)) = (super::channels(base), super::sides(base));
    let first = Tensor::f_zeros(super::shaped_like(base, c + 1, h, w), (Kind::Float, base.device()))?;
    let under = super::window(base, at)?;
    let difference = match alpha {
        Some(a) => patch.f_sub(&under.f_mul(a)?)?,
        None => patch.f_sub(&under)?,
    };
    super::window(&first.f_narrow(-3, 0, c)?, at)?.f_copy_(&difference)?;
    first.f_narrow(-3, c, 1)?.f_copy_(mask)?;
    Ok(first)
}

/// One level of the collapse: `level` and `next` are consecutive levels [C + 1, h, w] of the
/// pyramid of the difference with the mask as the last channel, `coarse` [C, ...] the
/// collapse so far at `next`'s size. The band `d - up(d_next)` under the mask, plus
/// `up(coarse)`. In tensor ops, for any device.
pub(super) fn collapse_step_ops(level: &Tensor, next: &Tensor, coarse: &Tensor) -> Result<Tensor> {
    let (h, w) = super::sides(level);
    let c = super::channels(level) - 1;
    let band = level.f_narrow(-3, 0, c)?.f_sub(&up(&next.f_narrow(-3, 0, c)?, h, w)?)?;
    band.f_mul(&level.f_narrow(-3, c, 1)?)?.f_add(&up(coarse, h, w)?)
}

/// Mean and standard deviation per channel of `x` [(N,) C, h, w] where `weight` [(N,) 1, h,
/// w] is over one half, and whether there are at least 8 such pixels ([(N,) 1, 1, 1]).
/// Nothing is read on the host: on a GPU the caller's work goes on being queued.
fn masked_stats(x: &Tensor, weight: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let sel = weight.f_gt(0.5)?.f_to_kind(Kind::Float)?;
    let n = sel.f_sum_dim_intlist(&[-3i64, -2, -1][..], true, Kind::Float)?;
    // Sums over no pixels stay finite; `enough` then leaves them unused.
    let count = n.f_clamp_min(1.0)?;
    let plane = &[-2i64, -1][..];
    let mean = x.f_mul(&sel)?.f_sum_dim_intlist(plane, true, Kind::Float)?.f_div(&count)?;
    let var = x.f_sub(&mean)?.f_square()?.f_mul(&sel)?.f_sum_dim_intlist(plane, true, Kind::Float)?.f_div(&count)?;
    Ok((mean, var.f_add_scalar(1e-8)?.f_sqrt()?, n.f_ge(8.0)?))
}

/// Colour matching: the patch's per-channel mean and deviation (inside `inside`) moved to
/// those of `base` over `ring`.
pub fn match_colors(patch: &Tensor, inside: &Tensor, base: &Tensor, ring: &Tensor) -> Result<Tensor> {
    if cpu::weighs(patch, inside) && cpu::weighs(base, ring) && patch.size()[0] == base.size()[0] {
        return match (cpu::masked_stats(patch, inside)?, cpu::masked_stats(base, ring)?) {
            (Some(own), Some(around)) => {
                let moves: Vec<_> =
                    own.iter().zip(&around).map(|(&(mp, sp), &(mr, sr))| (mp, sr / sp.max(1e-3), mr)).collect();
                cpu::shift_channels(patch, &moves)
            }
            _ => Ok(patch.shallow_clone()),
        };
    }
    match_colors_ops(patch, inside, base, ring)
}

/// `match_colors` in tensor ops, for any device.
pub(super) fn match_colors_ops(patch: &Tensor, inside: &Tensor, base: &Tensor, ring: &Tensor) -> Result<Tensor> {
    let (mp, sp, own) = masked_stats(patch, inside)?;
    let (mr, sr, around) = masked_stats(base, ring)?;
    let matched = patch.f_sub(&mp)?.f_mul(&sr.f_div(&sp.f_clamp_min(1e-3)?)?)?.f_add(&mr)?;
    matched.f_where_self(&own.f_logical_and(&around)?, patch)
}

/// Pixels within `r` of the hard mask but outside it.
pub fn ring(mask: &Tensor, r: i64) -> Result<Tensor> {
    let hard = mask.f_gt(0.5)?.f_to_kind(Kind::Float)?;
    dilate(&hard, r)?.f_sub(&hard)
}
