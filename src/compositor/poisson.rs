//! Poisson (seamless) cloning, Pérez et al.: inside the mask the result keeps the patch's
//! gradients, outside it the canvas's, and on the window's border it equals the canvas. The
//! Poisson equation on the window is solved exactly by the discrete sine transform (a product
//! with its matrix for small windows, through the FFT for large ones), so it takes the same
//! bounded time for every input.

use tch::{Kind, TchError, Tensor};

use super::cpu;
use crate::model::device::upload;

type Result<T> = std::result::Result<T, TchError>;

/// DST-I along the last dimension: X_k = sum_j x_j sin(pi j k / (n + 1)).
fn dst1(x: &Tensor) -> Result<Tensor> {
    let n = *x.size().last().expect("a last dimension");
    let mut shape = x.size();
    *shape.last_mut().expect("a last dimension") = 1;
    let zero = Tensor::f_zeros(&shape, (x.kind(), x.device()))?;
    let ext = Tensor::f_cat(&[&zero, x, &zero, &x.f_flip([-1])?.f_neg()?], -1)?;
    let spec = ext.f_fft_rfft(None::<i64>, -1, "backward")?;
    let im = spec.f_view_as_real()?.f_select(-1, 1)?;
    im.f_narrow(-1, 1, n)?.f_mul_scalar(-0.5)
}

/// Sides up to which the DST-I is one product with its matrix. Measured on one core, a whole
/// clone: 130 x 120 in 0.8-0.9 ms that way against 2.0 through the FFT (whose extended
/// lengths are often awkward: 2 x 131 there), 200 x 190 in 2.5-2.9 against 3.9, 256 x 246 in
/// 5.8 against 5.0.
const DST_BY_MATRIX: i64 = 224;

/// The DST-I matrix of length `n`, S[j, k] = sin(pi (j + 1)(k + 1) / (n + 1)), symmetric. Its
/// 2 (n + 1) distinct values come from a table, each computed once in double precision.
fn dst_matrix(n: i64, device: tch::Device) -> Result<Tensor> {
    let period = 2 * (n as usize + 1);
    let table: Vec<f32> =
        (0..period).map(|i| (std::f64::consts::PI * i as f64 / (n + 1) as f64).sin() as f32).collect();
    let mut s = Vec::with_capacity((n * n) as usize);
    for j in 1..=n as usize {
        s.extend((1..=n as usize).map(|k| table[(j * k) % period]));
    }
    upload(&Tensor::from_slice(&s), device)?.f_view([n, n])
}

/// The DST-I over both spatial dimensions of [C, n, m] windows: S_n x S_m with the
/// transforms' matrices for small windows, through the FFT otherwise.
enum Dst2 {
    Matrices(Tensor, Tensor),
    Fft,
}

impl Dst2 {
    fn new(n: i64, m: i64, device: tch::Device) -> Result<Self> {
        Ok(if n.max(m) <= DST_BY_MATRIX {
            Self::Matrices(dst_matrix(n, device)?, dst_matrix(m, device)?)
        } else {
            Self::Fft
        })
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Matrices(sn, sm) => sn.f_matmul(&x.f_matmul(sm)?),
            Self::Fft => dst1(&dst1(x)?.f_transpose(-1, -2)?)?.f_transpose(-1, -2),
        }
    }
}

/// Guidance divergence: per edge the patch's difference where both ends are inside `hard`,
/// else the base's; summed around each interior pixel. Shape [C, h-2, w-2].
fn guidance_divergence(base: &Tensor, patch: &Tensor, hard: &Tensor) -> Result<Tensor> {
    let (h, w) = (base.size()[1], base.size()[2]);
    let dx = |t: &Tensor| -> Result<Tensor> { t.f_narrow(2, 1, w - 1)?.f_sub(&t.f_narrow(2, 0, w - 1)?) };
    let dy = |t: &Tensor| -> Result<Tensor> { t.f_narrow(1, 1, h - 1)?.f_sub(&t.f_narrow(1, 0, h - 1)?) };
    let in_x = hard.f_narrow(2, 1, w - 1)?.f_logical_and(&hard.f_narrow(2, 0, w - 1)?)?;
    let in_y = hard.f_narrow(1, 1, h - 1)?.f_logical_and(&hard.f_narrow(1, 0, h - 1)?)?;
    let gx = dx(patch)?.f_where_self(&in_x, &dx(base)?)?;
    let gy = dy(patch)?.f_where_self(&in_y, &dy(base)?)?;
    let div_x = gx.f_narrow(2, 1, w - 2)?.f_sub(&gx.f_narrow(2, 0, w - 2)?)?.f_narrow(1, 1, h - 2)?;
    let div_y = gy.f_narrow(1, 1, h - 2)?.f_sub(&gy.f_narrow(1, 0, h - 2)?)?.f_narrow(2, 1, w - 2)?;
    div_x.f_add(&div_y)
}

/// The right-hand side of `clone`'s equation for windows of at least 3 x 3: the
/// divergence, at interior pixels, of the gradient of `patch - base` on edges with both ends
/// inside the mask (> 0.5), zero elsewhere. [C, h - 2, w - 2], in tensor ops for any device.
pub(super) fn masked_divergence_ops(base: &Tensor, patch: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (h, w) = super::sides(base);
    let d = patch.f_sub(base)?.f_to_kind(Kind::Float)?;
    let hard = mask.f_gt(0.5)?.f_to_kind(Kind::Float)?;
    let gx = d
        .f_narrow(-1, 1, w - 1)?
        .f_sub(&d.f_narrow(-1, 0, w - 1)?)?
        .f_mul(&hard.f_narrow(-1, 1, w - 1)?.f_mul(&hard.f_narrow(-1, 0, w - 1)?)?)?;
    let gy = d
        .f_narrow(-2, 1, h - 1)?
        .f_sub(&d.f_narrow(-2, 0, h - 1)?)?
        .f_mul(&hard.f_narrow(-2, 1, h - 1)?.f_mul(&hard.f_narrow(-2, 0, h - 1)?)?)?;
    let div_x = gx.f_narrow(-1, 1, w - 2)?.f_sub(&gx.f_narrow(-1, 0, w - 2)?)?.f_narrow(-2, 1, h - 2)?;
    let div_y = gy.f_narrow(-2, 1, h - 2)?.f_sub(&gy.f_narrow(-2, 0, h - 2)?)?.f_narrow(-1, 1, w - 2)?;
    div_x.f_add(&div_y)
}

/// The 5-point Laplacian of [C, h, w] at interior pixels: [C, h-2, w-2].
pub fn laplacian5(x: &Tensor) -> Result<Tensor> {
    let (h, w) = (x.size()[1], x.size()[2]);
    let c = x.f_narrow(1, 1, h - 2)?.f_narrow(2, 1, w - 2)?;
    let sh = |dy: i64, dx: i64| -> Result<Tensor> { x.f_narrow(1, 1 + dy, h - 2)?.f_narrow(2, 1 + dx, w - 2) };
    sh(-1, 0)?.f_add(&sh(1, 0)?)?.f_add(&sh(0, -1)?)?.f_add(&sh(0, 1)?)?.f_sub(&c.f_mul_scalar(4.0)?)
}

/// Seamless clone of `patch` into `base` (both [(N,) C, h, w]) over `mask` [(N,) 1, h, w]; returns
/// the solved window, equal to `base` on its one-pixel border. Windows smaller than 3x3
/// come back as `base`.
///
/// Solved as `base + u`: outside the mask the guidance is `base`'s own gradient, so `u`
/// solves Δu = div(g) with g the gradient of `patch - base` on edges inside the mask (zero
/// elsewhere), and u = 0 on the border.
pub fn clone(base: &Tensor, patch: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (h, w) = super::sides(base);
    if h < 3 || w < 3 {
        return Ok(base.shallow_clone());
    }
    let kind = base.kind();
    let same_shapes = patch.size() == base.size() && mask.size() == [1, h, w];
    let rhs = if same_shapes && cpu::fits(base) && cpu::fits(patch) && cpu::fits(mask) {
        cpu::masked_divergence(base, patch, mask)?
    } else {
        masked_divergence_ops(base, patch, mask)?
    };
    let (n, m) = (h - 2, w - 2);
    let device = base.device();
    let jj = Tensor::f_arange_start(1, n + 1, (Kind::Float, device))?;
    let kk = Tensor::f_arange_start(1, m + 1, (Kind::Float, device))?;
    let lj = jj.f_mul_scalar(std::f64::consts::PI / (n + 1) as f64)?.f_cos()?.f_mul_scalar(2.0)?;
    let lk = kk.f_mul_scalar(std::f64::consts::PI / (m + 1) as f64)?.f_cos()?.f_mul_scalar(2.0)?;
    let eig = lj.f_view([n, 1])?.f_add(&lk.f_view([1, m])?)?.f_sub_scalar(4.0)?;
    let dst = Dst2::new(n, m, device)?;
    let coef = dst.apply(&rhs)?.f_div(&eig)?;
    let u = dst.apply(&coef)?.f_mul_scalar(4.0 / ((n + 1) * (m + 1)) as f64)?;
    let out = base.f_to_kind(Kind::Float)?.f_detach_copy()?;
    let mut inner = out.f_narrow(-2, 1, h - 2)?.f_narrow(-1, 1, w - 2)?;
    let _ = inner.f_add_(&u)?;
    out.f_to_kind(kind)
}

/// Largest |Laplacian(result) - guidance divergence| at interior pixels: how well `result`
/// solves the Poisson equation for (`base`, `patch`, `mask`).
pub fn residual(result: &Tensor, base: &Tensor, patch: &Tensor, mask: &Tensor) -> Result<f64> {
    let hard = mask.f_gt(0.5)?;
    let d = |t: &Tensor| t.f_to_kind(Kind::Double);
    let div = guidance_divergence(&d(base)?, &d(patch)?, &hard)?;
    laplacian5(&d(result)?)?.f_sub(&div)?.f_abs()?.f_max()?.f_double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_dst_by_its_matrix_equals_the_dst_by_the_fft() {
        tch::manual_seed(3);
        for (n, m) in [(1, 1), (5, 9), (130, 114), (64, 200)] {
            let x = Tensor::randn([3, n, m], (Kind::Float, Device::Cpu));
            let fft = Dst2::Fft.apply(&x).unwrap();
            let by_matrix = Dst2::Matrices(dst_matrix(n, Device::Cpu).unwrap(), dst_matrix(m, Device::Cpu).unwrap());
            let ours = by_matrix.apply(&x).unwrap();
            // Sums of n * m products of unit-sized values: float32 rounding of either way is
            // some 1e-6 of the largest coefficient.
            let scale = fft.abs().max().double_value(&[]);
            let diff = (&ours - &fft).abs().max().double_value(&[]);
            assert!(diff <= 1e-5 * scale, "{n} x {m}: {diff} against {scale}");
        }
    }

    #[test]
    fn a_mask_of_another_size_is_an_error_not_a_panic() {
        let base = Tensor::zeros([3, 20, 16], (Kind::Float, Device::Cpu));
        let patch = Tensor::ones([3, 20, 16], (Kind::Float, Device::Cpu));
        for size in [[1, 19, 16], [1, 20, 17], [2, 20, 16]] {
            let mask = Tensor::ones(size, (Kind::Float, Device::Cpu));
            assert!(clone(&base, &patch, &mask).is_err(), "{size:?}");
        }
    }
}
