//! Mattes: patches whose model draws its own alpha (a fourth channel, the subject's coverage)
//! are resampled premultiplied and laid over the canvas by that alpha before the region's
//! blend, so the backdrop the expert was trained on never reaches the picture. Also the
//! measure of how much of a patch's backdrop leaks into a finished picture.

use tch::{Kind, TchError, Tensor};

use super::cpu;
use crate::router::geometry::Rect;
use crate::router::Region;

type Result<T> = std::result::Result<T, TchError>;

/// Alpha in generator units to coverage in [0, 1], as NVIDIA's uint8 conversion reads it
/// (`x * 127.5 + 128`, over 255).
pub fn coverage(alpha_units: &Tensor) -> Result<Tensor> {
    alpha_units.f_mul_scalar(COVERAGE_SCALE)?.f_add_scalar(COVERAGE_OFFSET)?.f_clamp(0.0, 1.0)
}

const COVERAGE_SCALE: f64 = 127.5 / 255.0;
const COVERAGE_OFFSET: f64 = 128.0 / 255.0;

/// [`coverage`] of one value, in the same float32 steps.
fn coverage_of(alpha_units: f32) -> f32 {
    (alpha_units * COVERAGE_SCALE as f32 + COVERAGE_OFFSET as f32).clamp(0.0, 1.0)
}

/// A [(N,) 4, S, S] colour-and-alpha patch as [colour × coverage, coverage]: resampling the
/// premultiplied colour keeps the backdrop's colour out of the subject's edge pixels.
pub fn premultiplied(patch: &Tensor) -> Result<Tensor> {
    if cpu::fits(patch) && patch.size()[0] == 4 {
        return cpu::premultiplied(patch, coverage_of);
    }
    let a = coverage(&patch.f_narrow(-3, 3, 1)?)?;
    Tensor::f_cat(&[&patch.f_narrow(-3, 0, 3)?.f_mul(&a)?, &a], -3)
}

/// Premultiplied colour back to straight colour (where the coverage is near zero the colour
/// is meaningless and comes back near zero).
pub fn unpremultiplied(colour: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    colour.f_div(&alpha.f_clamp_min(1e-3)?)
}

/// Premultiplied `colour` with coverage `alpha` laid over `base`.
pub fn over(base: &Tensor, colour: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    base.f_mul(&alpha.f_neg()?.f_add_scalar(1.0)?)?.f_add(colour)
}

/// Below this coverage a pixel counts as the subject's backdrop.
pub const BACKDROP_ALPHA: f64 = 0.1;

/// How much of the patch's backdrop shows in `region` of a finished canvas: the mean absolute
/// difference, in 8-bit levels averaged over the channels, between `canvas` and
/// `background_alone` (the same layout without its regions) over the region's pixels (mask
/// over one half) where the patch's `alpha` is below [`BACKDROP_ALPHA`] and no other region's
/// final matte (`others`, [1, H, W], when regions overlap) reaches it. Returns the figure and
/// the number of such pixels; `None` when there are none.
pub fn backdrop_leak(
    canvas: &Tensor,
    background_alone: &Tensor,
    region: &Region,
    alpha: &Tensor,
    others: Option<&Tensor>,
) -> Result<Option<(f64, i64)>> {
    let v: &Rect = &region.visible;
    let cut = |t: &Tensor| -> Result<Tensor> { t.f_narrow(1, v.y, v.h)?.f_narrow(2, v.x, v.w) };
    let mask = Tensor::from_slice(&region.mask).f_view([1, v.h, v.w])?.f_to_device(alpha.device())?;
    let mut sel = mask.f_gt(0.5)?.f_logical_and(&alpha.f_lt(BACKDROP_ALPHA)?)?;
    if let Some(o) = others {
        sel = sel.f_logical_and(&cut(&o.f_to_device(alpha.device())?)?.f_lt(BACKDROP_ALPHA)?)?;
    }
    let sel = sel.f_to_kind(Kind::Float)?;
    let n = sel.f_sum(Kind::Float)?.f_double_value(&[])?;
    if n < 1.0 {
        return Ok(None);
    }
    let diff = cut(canvas)?.f_sub(&cut(&background_alone.f_to_device(canvas.device())?)?)?.f_abs()?;
    let total = diff.f_mul(&sel.f_to_device(canvas.device())?)?.f_sum(Kind::Float)?.f_double_value(&[])?;
    Ok(Some((total * 127.5 / (3.0 * n), n as i64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiplied_patch_over_base_is_the_alpha_mix() {
        let colour = Tensor::from_slice(&[0.5f32, -0.5, 1.0]).view([3, 1, 1]);
        // Alpha 0.5 in coverage is -1/255 in units (128 + 127.5 x = 127.5).
        let alpha_units = Tensor::from_slice(&[-1.0f32 / 255.0]).view([1, 1, 1]);
        let patch = Tensor::cat(&[&colour, &alpha_units], 0);
        let p = premultiplied(&patch).unwrap();
        let a = p.narrow(0, 3, 1);
        assert!((a.double_value(&[0, 0, 0]) - 0.5).abs() < 1e-6);
        let base = Tensor::from_slice(&[0.0f32, 0.0, 0.0]).view([3, 1, 1]);
        let out = over(&base, &p.narrow(0, 0, 3), &a).unwrap();
        let want = [0.25, -0.25, 0.5];
        for (c, w) in want.iter().enumerate() {
            assert!((out.double_value(&[c as i64, 0, 0]) - w).abs() < 1e-6);
        }
        let back = unpremultiplied(&p.narrow(0, 0, 3), &a).unwrap();
        assert!((back.double_value(&[2, 0, 0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn premultiplying_on_the_cpu_equals_the_tensor_ops() {
        tch::manual_seed(21);
        // Alpha on both sides of the clamps, and a window of a larger patch.
        let patch = Tensor::randn([4, 20, 30], (Kind::Float, tch::Device::Cpu)) * 1.5;
        for p in [patch.shallow_clone(), patch.narrow(1, 3, 12).narrow(2, 5, 17)] {
            let a = coverage(&p.narrow(0, 3, 1)).unwrap();
            let ops = Tensor::cat(&[p.narrow(0, 0, 3) * &a, a], 0);
            let ours = premultiplied(&p).unwrap();
            assert_eq!((ours - ops).abs().max().double_value(&[]), 0.0);
        }
    }

    #[test]
    fn coverage_follows_nvidia_uint8() {
        let units = Tensor::from_slice(&[-1.0f32, 1.0, -2.0, 2.0]);
        let c = coverage(&units).unwrap();
        let got: Vec<f64> = (0..4).map(|i| c.double_value(&[i])).collect();
        assert!((got[0] - 0.5 / 255.0).abs() < 1e-6, "{got:?}");
        assert_eq!(got[1], 1.0);
        assert_eq!(got[2], 0.0);
        assert_eq!(got[3], 1.0);
    }
}
