//! Bilinear enlargement on the CPU as libtorch samples it, and the Laplacian pyramid's
//! collapse step built on it: along the width by `widen` (whole ratios read by phases, other
//! ratios eight samples at a time with AVX2, the rest sample by sample from `lerp_table`),
//! then along the height row by row.

use tch::Tensor;

use super::{fresh, read, values, Result};

wide! {
/// Bilinear upscaling of [C, h, w] to [C, `to_h`, `to_w`] (neither side shrinks) as
/// libtorch's `upsample_bilinear2d` samples it (align_corners false), along the width and
/// then the height.
pub fn upscale(x: &Tensor, to_h: usize, to_w: usize) -> Result<Tensor> {
    let (x, [c, h, w]) = values(x)?;
    let rows = fresh(c, h, to_w, |out| widen(read(&x), w, to_w, out))?;
    let src = read(&rows);
    let down = lerp_table(h, to_h);
    fresh(c, to_h, to_w, |out| {
        for (n, dst) in out.chunks_exact_mut(to_w).enumerate() {
            let (ch, (lo, hi, t)) = (n / to_h, down[n % to_h]);
            let (a, b) = (&src[(ch * h + lo) * to_w..][..to_w], &src[(ch * h + hi) * to_w..][..to_w]);
            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                *d = lerp(a, b, t);
            }
        }
    })
}
}

/// Rows of `w` values in `src` resampled to rows of `to_w` in `out`, as `upscale` does.
#[inline(always)]
fn widen(src: &[f32], w: usize, to_w: usize, out: &mut [f32]) {
    let across = lerp_table(w, to_w);
    let phases = Phases::of(&across, w, to_w);
    let octets = if phases.is_none() { Octets::of(&across, w) } else { None };
    for (row, dst) in src.chunks_exact(w).zip(out.chunks_exact_mut(to_w)) {
        let (skip, take) = match (&phases, &octets) {
            (Some(ph), _) => {
                match ph.ratio {
                    2 => ph.widen::<2>(row, dst),
                    4 => ph.widen::<4>(row, dst),
                    _ => ph.widen_any(row, dst),
                }
                (ph.ratio * ph.first, ph.ratio * (ph.last - ph.first))
            }
            (None, Some(oct)) => {
                oct.widen(row, dst, &across);
                (0, to_w)
            }
            (None, None) => (0, 0),
        };
        // What the phases did not cover (the edges, or everything), sample by sample.
        from_table(row, dst, &across, (0..skip).chain(skip + take..to_w));
    }
}

/// Outputs `xs` of a row resampled sample by sample from its `lerp_table`.
#[inline(always)]
fn from_table(row: &[f32], dst: &mut [f32], table: &[(usize, usize, f32)], xs: impl Iterator<Item = usize>) {
    for x in xs {
        let (lo, hi, t) = table[x];
        dst[x] = lerp(row[lo], row[hi], t);
    }
}

/// Eight consecutive outputs of a `lerp_table` at a time, for the ratios that `Phases` does
/// not take (a 64 px face fitted to 236, odd sides in the pyramid): where the eight lower
/// samples lie within eight consecutive inputs and each upper one is the next input, AVX2
/// takes them from two loads and two permutes instead of sixteen reads gathered one by one.
/// The same operations per output as `lerp`, so the same bits.
struct Octets {
    /// (first output, first lower sample, each output's lower sample less that, its weight)
    eights: Vec<(usize, usize, [i32; 8], [f32; 8])>,
}

impl Octets {
    fn of(table: &[(usize, usize, f32)], n: usize) -> Option<Octets> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let eights = table
                .chunks_exact(8)
                .enumerate()
                .filter_map(|(k, c)| {
                    let lo = c[0].0;
                    let near = c.iter().all(|&(l, h, _)| h == l + 1 && l >= lo && l - lo < 8) && lo + 9 <= n;
                    near.then(|| {
                        (8 * k, lo, std::array::from_fn(|j| (c[j].0 - lo) as i32), std::array::from_fn(|j| c[j].2))
                    })
                })
                .collect();
            return Some(Octets { eights });
        }
        let _ = (table, n);
        None
    }

    /// The row's outputs: the eights by AVX2, the rest from the table.
    fn widen(&self, row: &[f32], dst: &mut [f32], table: &[(usize, usize, f32)]) {
        let mut from = 0;
        for &(x, lo, idx, t) in &self.eights {
            from_table(row, dst, table, from..x);
            let (a, b): (&[f32; 8], &[f32; 8]) =
                (row[lo..][..8].try_into().expect("8"), row[lo + 1..][..8].try_into().expect("8"));
            let out: &mut [f32; 8] = (&mut dst[x..x + 8]).try_into().expect("8");
            // SAFETY: `Octets::of` found AVX2 on this CPU before making any eights.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                lerp8(a, b, &idx, &t, out)
            };
            from = x + 8;
        }
        from_table(row, dst, table, from..dst.len());
    }
}

/// `out[j] = lerp(a[idx[j]], b[idx[j]], t[j])`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lerp8(a: &[f32; 8], b: &[f32; 8], idx: &[i32; 8], t: &[f32; 8], out: &mut [f32; 8]) {
    use std::arch::x86_64::*;
    // SAFETY: every pointer is to eight values of the loaded or stored type.
    unsafe {
        let idx = _mm256_loadu_si256(idx.as_ptr() as *const __m256i);
        let a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a.as_ptr()), idx);
        let b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b.as_ptr()), idx);
        let t = _mm256_loadu_ps(t.as_ptr());
        let d = _mm256_sub_ps(b, a);
        let near_a = _mm256_add_ps(a, _mm256_mul_ps(t, d));
        let near_b = _mm256_sub_ps(b, _mm256_mul_ps(d, _mm256_sub_ps(_mm256_set1_ps(1.0), t)));
        let below_half = _mm256_cmp_ps::<_CMP_LT_OQ>(t, _mm256_set1_ps(0.5));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_blendv_ps(near_b, near_a, below_half));
    }
}

/// A `lerp_table` for a whole ratio `to = ratio * n`, away from the edges: output
/// `ratio * i + p` mixes `i + shift[p]` and the next with weight `t[p]`, for every `i` in
/// `first..last`. Found by reading the table, so the samples are the table's to the bit, but
/// each source value is read once for `ratio` outputs instead of gathered for each. The
/// pyramid's expand steps (even sides) and whole-ratio enlargements are most of `widen`'s work.
struct Phases {
    ratio: usize,
    shift: Vec<isize>,
    t: Vec<f32>,
    first: usize,
    last: usize,
}

impl Phases {
    fn of(table: &[(usize, usize, f32)], n: usize, to: usize) -> Option<Phases> {
        // Rows too short for phases to pay are left to the table.
        if n < 8 || !to.is_multiple_of(n) {
            return None;
        }
        let ratio = to / n;
        let mid = n / 2;
        let at = |i: usize, p: usize| table[ratio * i + p];
        let shift: Vec<isize> = (0..ratio).map(|p| at(mid, p).0 as isize - mid as isize).collect();
        let t: Vec<f32> = (0..ratio).map(|p| at(mid, p).2).collect();
        let fits = |i: usize| {
            (0..ratio).all(|p| {
                let (lo, hi, w) = at(i, p);
                lo as isize - i as isize == shift[p] && hi == lo + 1 && w.to_bits() == t[p].to_bits()
            })
        };
        if !fits(mid) {
            return None;
        }
        let first = (0..mid).rev().take_while(|&i| fits(i)).last().unwrap_or(mid);
        let last = (mid..n).take_while(|&i| fits(i)).last()? + 1;
        Some(Phases { ratio, shift, t, first, last })
    }

    /// The phased outputs of one row, for a ratio known when compiled: the compiler unrolls
    /// the phases, which made the portrait's whole composite 3.0 ms against 2.5 with
    /// `widen_any` for every ratio (in process, five alternations).
    #[inline(always)]
    fn widen<const R: usize>(&self, row: &[f32], dst: &mut [f32]) {
        let shift: [isize; R] = std::array::from_fn(|p| self.shift[p]);
        let t: [f32; R] = std::array::from_fn(|p| self.t[p]);
        for (i, out) in dst[R * self.first..R * self.last].chunks_exact_mut(R).enumerate() {
            let i = (self.first + i) as isize;
            for p in 0..R {
                let lo = (i + shift[p]) as usize;
                out[p] = lerp(row[lo], row[lo + 1], t[p]);
            }
        }
    }

    #[inline(always)]
    fn widen_any(&self, row: &[f32], dst: &mut [f32]) {
        let r = self.ratio;
        for (i, out) in dst[r * self.first..r * self.last].chunks_exact_mut(r).enumerate() {
            let i = (self.first + i) as isize;
            for (p, o) in out.iter_mut().enumerate() {
                let lo = (i + self.shift[p]) as usize;
                *o = lerp(row[lo], row[lo + 1], self.t[p]);
            }
        }
    }
}

wide! {
/// One level of collapsing a masked Laplacian pyramid (`blend::laplacian`) in one pass over
/// the output: `level` [C + 1, h, w] and `next` [C + 1, h2, w2] are consecutive levels of
/// the difference's pyramid with the mask as the last channel, `coarse` [C, h2, w2] the
/// collapse so far. Returns `(d - up(d_next)) * m + up(coarse)`, equal to the last bit to
/// those steps with `upscale` one after another, without their four whole-size tensors.
pub fn collapse_step(level: &Tensor, next: &Tensor, coarse: &Tensor) -> Result<Tensor> {
    let (level, [c1, h, w]) = values(level)?;
    let (next, [_, h2, w2]) = values(next)?;
    let (coarse, _) = values(coarse)?;
    let c = c1 - 1;
    // The coarse difference and the collapse so far, each upscaled along the width.
    let plane = c * h2 * w;
    // In a fresh tensor: every value is written, so none is zeroed first.
    let wide = fresh(2 * c, h2, w, |wide| {
        let (wide_next, wide_coarse) = wide.split_at_mut(plane);
        widen(&read(&next)[..c * h2 * w2], w2, w, wide_next);
        widen(read(&coarse), w2, w, wide_coarse);
    })?;
    let (wide_next, wide_coarse) = read(&wide).split_at(plane);
    let (fine, down) = (read(&level), lerp_table(h2, h));
    let mask = &fine[c * h * w..];
    fresh(c, h, w, |out| {
        for (n, dst) in out.chunks_exact_mut(w).enumerate() {
            let (ch, y, (lo, hi, t)) = (n / h, n % h, down[n % h]);
            let (d, m) = (&fine[(ch * h + y) * w..][..w], &mask[y * w..][..w]);
            let (lo, hi) = ((ch * h2 + lo) * w, (ch * h2 + hi) * w);
            let (n0, n1) = (&wide_next[lo..][..w], &wide_next[hi..][..w]);
            let (c0, c1) = (&wide_coarse[lo..][..w], &wide_coarse[hi..][..w]);
            // Every slice is `w` long, which lets the compiler drop the bounds checks.
            let dst = &mut dst[..w];
            for x in 0..w {
                dst[x] = (d[x] - lerp(n0[x], n1[x], t)) * m[x] + lerp(c0[x], c1[x], t);
            }
        }
    })
}
}

/// For each of `to` samples resampling `n`: the two source samples and the weight of the
/// second, placed as libtorch places them (source `(i + 0.5) * n / to - 0.5` in single
/// precision with one rounding, clamped at 0).
pub(in crate::compositor) fn lerp_table(n: usize, to: usize) -> Vec<(usize, usize, f32)> {
    let scale = n as f32 / to as f32;
    (0..to)
        .map(|i| {
            let src = scale.mul_add(i as f32 + 0.5, -0.5).max(0.0);
            let below = (src as usize).min(n - 1);
            (below, (below + 1).min(n - 1), src - below as f32)
        })
        .collect()
}

/// `a + t * (b - a)`, computed from the nearer end as libtorch's `lerp` does.
#[inline(always)]
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    if t < 0.5 {
        a + t * (b - a)
    } else {
        b - (b - a) * (1.0 - t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{inputs, largest_difference};
    use super::*;
    use crate::compositor::blend;
    use tch::{Device, Kind};

    #[test]
    fn upscaling_equals_libtorch_bilinear() {
        for x in inputs() {
            let (h, w) = (x.size()[1], x.size()[2]);
            // Whole factors (the pyramid's expand step), other ratios (patches fitted to their
            // rectangles) and one side kept.
            for (to_h, to_w) in [(2 * h, 2 * w), (2 * h - 1, 2 * w - 1), (4 * h, 3 * w), (h + 7, w), (h, 5 * w + 3)] {
                let ours = upscale(&x, to_h as usize, to_w as usize).unwrap();
                let reference = x.unsqueeze(0).upsample_bilinear2d([to_h, to_w], false, None, None).squeeze_dim(0);
                // The same samples and weights; libtorch mixes them as `(1 - t) a + t b`, this
                // as its `lerp` does: a few units in the last place (4.8e-7 at most here).
                let diff = largest_difference(&ours, &reference);
                assert!(diff < 1e-6, "{:?} to {to_h}x{to_w}: {diff}", x.size());
            }
        }
    }

    #[test]
    fn widening_by_phases_and_by_eights_equals_the_table_to_the_bit() {
        tch::manual_seed(14);
        // Whole ratios (phased inside, the table at the edges), others (by eights with AVX2,
        // the table for the rest), and rows too short for phases.
        for (w, to_w) in [(64, 128), (67, 134), (128, 512), (20, 60), (9, 45), (64, 236), (7, 14), (33, 65)] {
            let x = Tensor::randn([2, 3, w as i64], (Kind::Float, Device::Cpu));
            let (x, _) = values(&x).unwrap();
            let mut ours = vec![0f32; 2 * 3 * to_w];
            widen(read(&x), w, to_w, &mut ours);
            let table = lerp_table(w, to_w);
            for (row, got) in read(&x).chunks_exact(w).zip(ours.chunks_exact(to_w)) {
                for (&g, &(lo, hi, t)) in got.iter().zip(&table) {
                    assert_eq!(g.to_bits(), lerp(row[lo], row[hi], t).to_bits(), "{w} to {to_w}");
                }
            }
            let phased = Phases::of(&table, w, to_w).is_some();
            assert_eq!(phased, w >= 8 && to_w % w == 0, "{w} to {to_w}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && !phased && w >= 9 {
                let eights = Octets::of(&table, w).expect("AVX2").eights.len();
                assert!(eights * 8 * 2 >= to_w, "{w} to {to_w}: {eights} eights");
            }
        }
    }

    #[test]
    fn a_collapse_step_equals_its_tensor_ops() {
        tch::manual_seed(12);
        // Even and odd sides (the coarse level is half, rounded up), one to three channels.
        for (c, h, w) in [(3, 64, 50), (3, 67, 55), (1, 9, 4), (2, 3, 3)] {
            let (h2, w2) = ((h + 1) / 2, (w + 1) / 2);
            let level = Tensor::randn([c + 1, h, w], (Kind::Float, Device::Cpu));
            let next = Tensor::randn([c + 1, h2, w2], (Kind::Float, Device::Cpu));
            let coarse = Tensor::randn([c, h2, w2], (Kind::Float, Device::Cpu));
            let ours = collapse_step(&level, &next, &coarse).unwrap();
            let ops = blend::collapse_step_ops(&level, &next, &coarse).unwrap();
            // The same lerps (`upscale`'s on the CPU), differences, products and sums.
            assert_eq!(largest_difference(&ours, &ops), 0.0, "{c} x {h} x {w}");
        }
    }
}
