//! The two ends of `poisson`'s folded sine transform on the CPU. The DST-I of length n has
//! S[j, n + 1 - k] = (-1)^(j + 1) S[j, k], so its odd outputs read only the sums of mirrored
//! inputs, x_k + x_(n+1-k), and its even outputs only their differences: two products with
//! matrices of half the side instead of one, half the arithmetic. [`fold`] makes the sums and
//! differences along both axes, [`unfold_onto`] undoes the same fold after the inverse.
//! Halves are ceil(n / 2) long; the differences' half, one shorter for odd n (the middle input
//! pairs with nothing), is padded with a zero.

use tch::Tensor;

use super::{read, values, Result};

/// `v`'s mirrored sums into `sums` and differences into `diffs` (each ceil(len / 2) long; a
/// middle value, for odd lengths, goes to `sums` alone).
fn fold_line(v: &[f32], sums: &mut [f32], diffs: &mut [f32]) {
    let half = v.len() / 2;
    let (front, back) = (&v[..half], &v[v.len() - half..]);
    for (k, (s, d)) in sums.iter_mut().zip(diffs.iter_mut()).take(half).enumerate() {
        let (a, b) = (front[k], back[half - 1 - k]);
        *s = a + b;
        *d = a - b;
    }
    if v.len() % 2 == 1 {
        sums[half] = v[half];
        diffs[half] = 0.0;
    }
}

wide! {
/// `x` [C, n, m] folded along both axes: [2, 2, ceil(n / 2), C, ceil(m / 2)], indexed by the
/// rows' half (sums, differences), the columns' half, then row, channel and column. Rows
/// outside channels let one matrix product take each quarter's rows of every channel at once.
pub fn fold(x: &Tensor) -> Result<Tensor> {
    let (x, [c, n, m]) = values(x)?;
    let src = read(&x);
    let (hn, hm) = (n.div_ceil(2), m.div_ceil(2));
    let quarter = c * hn * hm;
    let (mut sum_row, mut diff_row) = (vec![0f32; m], vec![0f32; m]);
    // Every value is written, the halves' padding included.
    let out = super::fresh(4 * hn, c, hm, |dst| {
        for ch in 0..c {
            let plane = &src[ch * n * m..][..n * m];
            for i in 0..hn {
                let (a, b) = (&plane[i * m..][..m], &plane[(n - 1 - i) * m..][..m]);
                if i == n - 1 - i {
                    sum_row.copy_from_slice(a);
                    diff_row.fill(0.0);
                } else {
                    for (((s, d), &x), &y) in sum_row.iter_mut().zip(diff_row.iter_mut()).zip(a).zip(b) {
                        *s = x + y;
                        *d = x - y;
                    }
                }
                for (half, row) in [&sum_row, &diff_row].into_iter().enumerate() {
                    let at = half * 2 * quarter + (i * c + ch) * hm;
                    let (sums, rest) = dst[at..].split_at_mut(quarter);
                    fold_line(row, &mut sums[..hm], &mut rest[..hm]);
                }
            }
        }
    })?;
    out.f_view([2, 2, hn as i64, c as i64, hm as i64])
}
}

wide! {
/// `base` [C, n + 2, m + 2] with `quarters` [2, 2, ceil(n / 2), C, ceil(m / 2)] unfolded
/// (the transpose of [`fold`]'s sums and differences) and added to its interior, as a new
/// tensor; the border keeps `base`'s values.
pub fn unfold_onto(quarters: &Tensor, base: &Tensor) -> Result<Tensor> {
    let (base, [c, h, w]) = values(base)?;
    let (n, m) = (h - 2, w - 2);
    let (hn, hm) = (n.div_ceil(2), m.div_ceil(2));
    // Four quarters, one after another.
    let (q, _) = values(&quarters.f_reshape([4 * hn as i64, c as i64, hm as i64])?)?;
    let q = read(&q);
    let quarter = c * hn * hm;
    let row = |half_r: usize, half_c: usize, ch: usize, i: usize| &q[(half_r * 2 + half_c) * quarter + (i * c + ch) * hm..][..hm];
    let (half_n, half_m) = (n / 2, m / 2);
    let (mut plus, mut minus) = (vec![0f32; m], vec![0f32; m]);
    super::fresh(c, h, w, |out| {
        out.copy_from_slice(read(&base));
        for ch in 0..c {
            for i in 0..hn {
                let (ss, sd, ds, dd) = (row(0, 0, ch, i), row(0, 1, ch, i), row(1, 0, ch, i), row(1, 1, ch, i));
                // Row i takes sums + differences, its mirror sums - differences.
                for (sign, line) in [(1f32, &mut plus), (-1f32, &mut minus)] {
                    for k in 0..half_m {
                        let (s, d) = (ss[k] + sign * ds[k], sd[k] + sign * dd[k]);
                        line[k] = s + d;
                        line[m - 1 - k] = s - d;
                    }
                    if m % 2 == 1 {
                        line[half_m] = ss[half_m] + sign * ds[half_m];
                    }
                }
                let top = &mut out[(ch * h + 1 + i) * w + 1..][..m];
                top.iter_mut().zip(&plus).for_each(|(o, &v)| *o += v);
                if i < half_n {
                    let bottom = &mut out[(ch * h + n - i) * w + 1..][..m];
                    bottom.iter_mut().zip(&minus).for_each(|(o, &v)| *o += v);
                }
            }
        }
    })
}
}
