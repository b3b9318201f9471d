//! Poisson (seamless) cloning, Pérez et al.: inside the mask the result keeps the patch's
//! gradients, outside it the canvas's, and on the window's border it equals the canvas. The
//! Poisson equation on the window is solved exactly by the discrete sine transform (products
//! with its matrix for small windows, through the FFT for large ones; on the CPU the products
//! are folded to half their arithmetic), so it takes the same bounded time for every input.

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
/// 5.8 against 5.0. (The CPU folds its products, see [`FOLDED_UP_TO`].)
const DST_BY_MATRIX: i64 = 224;

/// Sides up to which the CPU solves through the folded transform ([`solve_folded`]), else
/// through the FFT. A whole clone on one core, folded against the FFT: 130 x 114 in 0.51 ms
/// against 0.67 (then by unfolded matrices), 256 x 246 in 3.2 against 7.2, 400 x 350 in
/// 10-12 against 16, 500 x 500 in 22-28 against 33.
const FOLDED_UP_TO: i64 = 512;

/// sin(pi j k / (n + 1)) for k = 1..=count, from `table` (one period of sin(pi i / (n + 1)),
/// each value computed once in double precision), stepping its index instead of dividing.
fn sines(table: &[f32], j: usize, count: usize) -> impl Iterator<Item = f32> + '_ {
    let period = table.len();
    let step = j % period;
    (0..count).scan(0, move |at, _| {
        *at += step;
        if *at >= period {
            *at -= period;
        }
        Some(table[*at])
    })
}

/// One period of sin(pi i / (n + 1)), 2 (n + 1) values.
fn sine_table(n: i64) -> Vec<f32> {
    (0..2 * (n + 1)).map(|i| (std::f64::consts::PI * i as f64 / (n + 1) as f64).sin() as f32).collect()
}

/// The DST-I matrix of length `n`, S[j, k] = sin(pi (j + 1)(k + 1) / (n + 1)), symmetric.
fn dst_matrix(n: i64, device: tch::Device) -> Result<Tensor> {
    let table = sine_table(n);
    let mut s = Vec::with_capacity((n * n) as usize);
    for j in 1..=n as usize {
        s.extend(sines(&table, j, n as usize));
    }
    upload(&Tensor::from_slice(&s), device)?.f_view([n, n])
}

/// The folded DST-I of length `n` (see `cpu::fold`), [2, h, h] with h = ceil(n / 2): the odd
/// outputs' matrix over the mirrored sums, S[2r + 1, k + 1], then the even outputs' over the
/// differences, S[2r + 2, k + 1], zero in the row and column that pad it for odd n.
fn folded_matrices(n: i64) -> Result<Tensor> {
    let (h, half) = ((n as usize).div_ceil(2), n as usize / 2);
    let table = sine_table(n);
    let mut s = vec![0f32; 2 * h * h];
    let (odd, even) = s.split_at_mut(h * h);
    for r in 0..h {
        odd[r * h..][..h].iter_mut().zip(sines(&table, 2 * r + 1, h)).for_each(|(o, v)| *o = v);
        if r < half {
            even[r * h..][..half].iter_mut().zip(sines(&table, 2 * r + 2, half)).for_each(|(o, v)| *o = v);
        }
    }
    Tensor::from_slice(&s).f_view([2, h as i64, h as i64])
}

/// `scale` over each eigenvalue of the 5-point Laplacian on an n x m window with a zero
/// border, 2 cos(pi j / (n + 1)) + 2 cos(pi k / (m + 1)) - 4 at DST frequencies (j, k), in
/// the folded order of `cpu::fold` ([2, 2, ceil(n / 2), 1, ceil(m / 2)]: odd frequencies, then
/// even ones, along each axis), zero where a half is padded.
fn folded_inverse_eigenvalues(n: i64, m: i64, scale: f64) -> Result<Tensor> {
    // Per axis, 2 cos(pi f / (len + 1)) at each folded index's frequency f (2i + 1 in the
    // sums' half, 2i + 2 in the differences'), `None` where the half is padded.
    let halves = |len: i64| -> Vec<Option<f64>> {
        let h = (len as usize).div_ceil(2);
        (0..2 * h)
            .map(|at| {
                let f = 2 * (at % h) + 1 + at / h;
                (f <= len as usize).then(|| 2.0 * (std::f64::consts::PI * f as f64 / (len + 1) as f64).cos())
            })
            .collect()
    };
    let (rows, cols) = (halves(n), halves(m));
    let (hn, hm) = (rows.len() / 2, cols.len() / 2);
    let mut v = Vec::with_capacity(4 * hn * hm);
    for half_r in 0..2 {
        for half_c in 0..2 {
            for row in &rows[half_r * hn..][..hn] {
                v.extend(cols[half_c * hm..][..hm].iter().map(|col| match (row, col) {
                    (Some(a), Some(b)) => (scale / (a + b - 4.0)) as f32,
                    _ => 0.0,
                }));
            }
        }
    }
    Tensor::from_slice(&v).f_view([2, 2, hn as i64, 1, hm as i64])
}

/// `base` [C, n + 2, m + 2] plus the solution u of Δu = `rhs` [C, n, m] (u = 0 on the border),
/// on the CPU through the folded transform: the same sums as `Dst2::Matrices` in half the
/// arithmetic.
fn solve_folded(base: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (c, (n, m)) = (super::channels(rhs), super::sides(rhs));
    let (hn, hm) = ((n + 1) / 2, (m + 1) / 2);
    // Each quarter [hn, C, hm] is one matrix [hn, C hm] for the rows' transform and one
    // [hn C, hm] for the columns'.
    let rows = folded_matrices(n)?.f_view([2, 1, hn, hn])?;
    let cols = folded_matrices(m)?.f_view([1, 2, hm, hm])?;
    let inverse = folded_inverse_eigenvalues(n, m, 4.0 / ((n + 1) * (m + 1)) as f64)?;
    let by_rows = |x: &Tensor, t: &Tensor| t.f_matmul(&x.f_view([2, 2, hn, c * hm])?);
    let by_cols = |x: &Tensor, t: &Tensor| x.f_view([2, 2, hn * c, hm])?.f_matmul(t);
    let forward = by_cols(&by_rows(&cpu::fold(rhs)?, &rows)?, &cols.f_transpose(-1, -2)?)?;
    let coef = forward.f_view([2, 2, hn, c, hm])?.f_mul(&inverse)?;
    let u = by_cols(&by_rows(&coef, &rows.f_transpose(-1, -2)?)?, &cols)?;
    cpu::unfold_onto(&u, base)
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
    let on_cpu = same_shapes && cpu::fits(base) && cpu::fits(patch) && cpu::fits(mask);
    let rhs =
        if on_cpu { cpu::masked_divergence(base, patch, mask)? } else { masked_divergence_ops(base, patch, mask)? };
    if on_cpu && (h - 2).max(w - 2) <= FOLDED_UP_TO {
        return solve_folded(base, &rhs);
    }
    solve(base, &rhs)?.f_to_kind(kind)
}

/// `base` [(N,) C, n + 2, m + 2] (in float32) plus the solution u of Δu = `rhs` [(N,) C, n,
/// m] (u = 0 on the border), on any device: with `Dst2`, each transform full-sized.
fn solve(base: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (n, m) = super::sides(rhs);
    let device = base.device();
    let jj = Tensor::f_arange_start(1, n + 1, (Kind::Float, device))?;
    let kk = Tensor::f_arange_start(1, m + 1, (Kind::Float, device))?;
    let lj = jj.f_mul_scalar(std::f64::consts::PI / (n + 1) as f64)?.f_cos()?.f_mul_scalar(2.0)?;
    let lk = kk.f_mul_scalar(std::f64::consts::PI / (m + 1) as f64)?.f_cos()?.f_mul_scalar(2.0)?;
    let eig = lj.f_view([n, 1])?.f_add(&lk.f_view([1, m])?)?.f_sub_scalar(4.0)?;
    let dst = Dst2::new(n, m, device)?;
    let coef = dst.apply(rhs)?.f_div(&eig)?;
    let u = dst.apply(&coef)?.f_mul_scalar(4.0 / ((n + 1) * (m + 1)) as f64)?;
    let out = base.f_to_kind(Kind::Float)?.f_detach_copy()?;
    let mut inner = out.f_narrow(-2, 1, n)?.f_narrow(-1, 1, m)?;
    let _ = inner.f_add_(&u)?;
    Ok(out)
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
    use super::super::sides;
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

    /// `solve` in float64 through the FFT.
    fn exact_solve(base: &Tensor, rhs: &Tensor) -> Tensor {
        let (n, m) = sides(rhs);
        let rhs = rhs.to_kind(Kind::Double);
        let pi = std::f64::consts::PI;
        // 2 cos(pi f / (len + 1)) for f in 1..=len.
        let cosines = |len: i64| {
            (Tensor::arange_start(1, len + 1, (Kind::Double, Device::Cpu)) * (pi / (len + 1) as f64)).cos() * 2.0
        };
        let (lj, lk) = (cosines(n), cosines(m));
        let eig = lj.view([n, 1]) + lk.view([1, m]) - 4.0;
        let coef = Dst2::Fft.apply(&rhs).unwrap() / eig;
        let u = Dst2::Fft.apply(&coef).unwrap() * (4.0 / ((n + 1) * (m + 1)) as f64);
        let out = base.to_kind(Kind::Double);
        let _ = out.narrow(-2, 1, n).narrow(-1, 1, m).f_add_(&u).unwrap();
        out
    }

    #[test]
    fn the_folded_solve_is_the_solve_in_float64_to_float32_rounding() {
        tch::manual_seed(5);
        // Odd and even sides on each axis, the smallest ones, and windows past the unfolded
        // matrices' limit.
        for (n, m) in [(1, 1), (1, 2), (2, 3), (3, 3), (4, 7), (9, 8), (130, 114), (131, 115), (224, 223), (300, 257)] {
            let base = Tensor::randn([3, n + 2, m + 2], (Kind::Float, Device::Cpu));
            let rhs = Tensor::randn([3, n, m], (Kind::Float, Device::Cpu));
            let folded = solve_folded(&base, &rhs).unwrap();
            let exact = exact_solve(&base, &rhs);
            // Sums of n or m products per transform in float32: seen 8e-7 of the largest
            // value at 224 x 223 (the unfolded products, 2e-4 there).
            let scale = exact.abs().max().double_value(&[]);
            let diff = (folded.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
            assert!(diff <= 4e-6 * scale, "{n} x {m}: {diff} against {scale}");
            let border = |t: &Tensor| {
                let rows = Tensor::cat(&[t.narrow(1, 0, 1), t.narrow(1, n + 1, 1)], 1).flatten(0, -1);
                Tensor::cat(&[rows, t.narrow(2, 0, 1).flatten(0, -1), t.narrow(2, m + 1, 1).flatten(0, -1)], 0)
            };
            assert!(border(&folded).equal(&border(&base)), "{n} x {m}: the border moved");
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
