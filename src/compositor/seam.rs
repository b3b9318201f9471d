//! The seam score: how visible a region's boundary is in a finished picture. It is the mean
//! absolute difference across the boundary (pixel pairs with one end inside the region's
//! hard mask and one outside) over the mean difference of the pairs beside it that do not
//! cross (within a few pixels on either side). About 1 means the boundary is as smooth as
//! the picture around it; a pasted patch scores well above.

use tch::{Kind, TchError, Tensor};

/// `image` [C, h, w] and `mask` [1, h, w] over the same window.
pub fn seam_score(image: &Tensor, mask: &Tensor, band: i64) -> Result<f64, TchError> {
    let (h, w) = (image.size()[1], image.size()[2]);
    let hard = mask.f_gt(0.5)?.f_to_kind(Kind::Float)?;
    let pool = |t: &Tensor| super::blend::dilate(t, band);
    // Pixels within `band` of both sides: the boundary's neighbourhood.
    let near = pool(&hard)?.f_mul(&pool(&hard.f_neg()?.f_add_scalar(1.0)?)?)?;
    let mut crossing = (0.0, 0.0);
    let mut beside = (0.0, 0.0);
    for (dim, len) in [(1i64, h), (2i64, w)] {
        let a = |t: &Tensor| t.f_narrow(dim, 0, len - 1);
        let b = |t: &Tensor| t.f_narrow(dim, 1, len - 1);
        let diff = a(image)?.f_sub(&b(image)?)?.f_abs()?.f_mean_dim(0, true, Kind::Float)?;
        let cross = a(&hard)?.f_sub(&b(&hard)?)?.f_abs()?;
        let both_near = a(&near)?.f_mul(&b(&near)?)?;
        let side = both_near.f_mul(&cross.f_neg()?.f_add_scalar(1.0)?)?;
        let sum = |m: &Tensor| -> Result<(f64, f64), TchError> {
            Ok((diff.f_mul(m)?.f_sum(Kind::Double)?.f_double_value(&[])?, m.f_sum(Kind::Double)?.f_double_value(&[])?))
        };
        let (s, n) = sum(&cross)?;
        crossing = (crossing.0 + s, crossing.1 + n);
        let (s, n) = sum(&side)?;
        beside = (beside.0 + s, beside.1 + n);
    }
    if crossing.1 == 0.0 || beside.1 == 0.0 {
        return Ok(0.0);
    }
    Ok((crossing.0 / crossing.1) / (beside.0 / beside.1).max(1e-6))
}
