//! The compositor's filters on the CPU as whole passes in plain Rust: a separable blur
//! (optionally keeping every second output, the pyramid's reduce step), a square dilation,
//! bilinear upscaling and a level of the Laplacian pyramid's collapse ([`bilinear`]), the
//! Poisson equation's right-hand side, and colour matching's statistics and shifts. libtorch
//! runs each as a dozen strided element-wise passes, gathers, or a max-pool that is slow for
//! one channel; these read each input once per axis. They take float32 [C, h, w] tensors on
//! the CPU ([`fits`]); `blend`, `resample` and `poisson` keep the tensor-op versions for every
//! other device and tests hold these to them. Nothing here knows about regions.

use tch::{Device, Kind, TchError, Tensor};

mod bilinear;
mod fold;

pub(in crate::compositor) use bilinear::lerp_table;
pub use bilinear::{collapse_step, upscale};
pub use fold::{fold, unfold_onto};

type Result<T> = std::result::Result<T, TchError>;

/// Whether `x` is a non-empty float32 [C, h, w] tensor on the CPU, which the filters here take.
pub fn fits(x: &Tensor) -> bool {
    x.device() == Device::Cpu && x.kind() == Kind::Float && x.dim() == 3 && x.numel() > 0
}

/// `x` made contiguous and its values, and its shape as (C, h, w).
fn values(x: &Tensor) -> Result<(Tensor, [usize; 3])> {
    let x = x.f_contiguous()?;
    let s = x.size();
    Ok((x, [s[0] as usize, s[1] as usize, s[2] as usize]))
}

/// The values of a contiguous float32 CPU tensor.
fn read(x: &Tensor) -> &[f32] {
    debug_assert!(fits(x) && x.is_contiguous());
    // SAFETY: `x` is a contiguous float32 tensor on the CPU holding `numel` values, borrowed
    // for the slice's lifetime; nothing writes to it meanwhile.
    unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, x.numel()) }
}

/// The rows of a float32 [C, h, w] CPU tensor whose rows are contiguous but whose planes and
/// rows need not be (a window of a larger tensor), read in place.
pub(in crate::compositor) struct Rows<'a> {
    x: &'a Tensor,
    plane: usize,
    row: usize,
    w: usize,
}

impl<'a> Rows<'a> {
    /// `None` unless `x` [`fits`] with rows of stride 1 and non-negative strides.
    pub(in crate::compositor) fn of(x: &'a Tensor) -> Option<Self> {
        let (size, stride) = (x.size(), x.stride());
        let ok = fits(x) && stride[2] == 1 && stride[0] >= 0 && stride[1] >= 0;
        ok.then(|| Rows { x, plane: stride[0] as usize, row: stride[1] as usize, w: size[2] as usize })
    }

    /// Row `y` of plane `ch`.
    pub(in crate::compositor) fn at(&self, ch: usize, y: usize) -> &'a [f32] {
        debug_assert!((ch as i64) < self.x.size()[0] && (y as i64) < self.x.size()[1]);
        // SAFETY: `x` is a float32 CPU view whose element (ch, y, i) lies at data_ptr + ch
        // plane + y row + i, inside its storage for every index within its size; the slice
        // borrows `x`, and nothing writes to it meanwhile.
        unsafe {
            std::slice::from_raw_parts((self.x.data_ptr() as *const f32).add(ch * self.plane + y * self.row), self.w)
        }
    }
}

/// A new [c, h, w] float32 tensor whose values `fill` writes (all of them).
pub(in crate::compositor) fn fresh(c: usize, h: usize, w: usize, fill: impl FnOnce(&mut [f32])) -> Result<Tensor> {
    let out = Tensor::f_empty([c as i64, h as i64, w as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: `out` was just allocated contiguous with c * h * w float32 values and no other
    // reference to its storage exists while `fill` writes.
    fill(unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, c * h * w) });
    Ok(out)
}

wide! {
/// Separable blur of [C, h, w] with the 1-D `taps` (odd length), edge pixels replicated,
/// keeping every `step`-th output along each axis: [C, ceil(h / step), ceil(w / step)].
/// Along the width first, then the height; each output is the first tap's product plus the
/// others' in order, as the tensor-op version sums them.
pub fn blur_step(x: &Tensor, taps: &[f32], step: usize) -> Result<Tensor> {
    let (x, [c, h, w]) = values(x)?;
    let src = read(&x);
    let p = taps.len() / 2;
    let (oh, ow) = (h.div_ceil(step), w.div_ceil(step));
    // Each row padded and split into its `step` phases, so that every tap reads a run of
    // consecutive values: padded[i * step + k] is phases[k % step][i + k / step].
    let phase_len = ow + 2 * p / step + 1;
    let rows = fresh(c, h, ow, |out| {
        let mut padded = vec![0f32; phase_len * step];
        let mut phases = if step == 1 { Vec::new() } else { vec![0f32; phase_len * step] };
        for (row, dst) in src.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
            padded[..p].fill(row[0]);
            padded[p..p + w].copy_from_slice(row);
            padded[p + w..].fill(row[w - 1]);
            let runs = if step == 1 {
                &padded[..]
            } else {
                if step == 2 {
                    // The pyramid's reduce step: pairs split, which vectorises (`step_by` does not).
                    let (even, odd) = phases.split_at_mut(phase_len);
                    for ((pair, e), o) in padded.chunks_exact(2).zip(even).zip(odd) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                } else {
                    for (r, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                        for (d, &v) in phase.iter_mut().zip(padded[r..].iter().step_by(step)) {
                            *d = v;
                        }
                    }
                }
                &phases[..]
            };
            let tap = |k: usize| &runs[(k % step) * phase_len + k / step..][..ow];
            for (d, &v) in dst.iter_mut().zip(tap(0)) {
                *d = v * taps[0];
            }
            for (k, &t) in taps.iter().enumerate().skip(1) {
                for (d, &v) in dst.iter_mut().zip(tap(k)) {
                    *d += v * t;
                }
            }
        }
    })?;
    let src = read(&rows);
    fresh(c, oh, ow, |out| {
        let row = |ch: usize, y: isize| -> &[f32] {
            let y = y.clamp(0, h as isize - 1) as usize;
            &src[(ch * h + y) * ow..][..ow]
        };
        for (n, dst) in out.chunks_exact_mut(ow).enumerate() {
            let (ch, i) = (n / oh, (n % oh) * step);
            let first = i as isize - p as isize;
            for (d, &v) in dst.iter_mut().zip(row(ch, first)) {
                *d = v * taps[0];
            }
            for (k, &t) in taps.iter().enumerate().skip(1) {
                for (d, &v) in dst.iter_mut().zip(row(ch, first + k as isize)) {
                    *d += v * t;
                }
            }
        }
    })
}
}

wide! {
/// Max over the (2r+1)-square neighbourhood of each pixel of [C, h, w], within the picture.
pub fn dilate(x: &Tensor, r: usize) -> Result<Tensor> {
    let (x, [c, h, w]) = values(x)?;
    let src = read(&x);
    let rows = fresh(c, h, w, |out| {
        for (row, dst) in src.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
            dst.copy_from_slice(row);
            for d in 1..=r.min(w - 1) {
                for (o, &v) in dst[..w - d].iter_mut().zip(&row[d..]) {
                    *o = o.max(v);
                }
                for (o, &v) in dst[d..].iter_mut().zip(&row[..w - d]) {
                    *o = o.max(v);
                }
            }
        }
    })?;
    let src = read(&rows);
    fresh(c, h, w, |out| {
        for (n, dst) in out.chunks_exact_mut(w).enumerate() {
            let (ch, y) = (n / h, n % h);
            let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
            dst.copy_from_slice(&src[(ch * h + lo) * w..][..w]);
            for yy in lo + 1..=hi {
                for (o, &v) in dst.iter_mut().zip(&src[(ch * h + yy) * w..][..w]) {
                    *o = o.max(v);
                }
            }
        }
    })
}
}

wide! {
/// `poisson::clone`'s right-hand side in one pass: for `base` and `patch` [C, h, w] and
/// `mask` [1, h, w] (h, w >= 3), the divergence at interior pixels of the gradient of
/// `patch - base` on edges with both ends inside the mask (> 0.5), zero elsewhere:
/// [C, h - 2, w - 2], equal to the last bit to `poisson::masked_divergence_ops`.
pub fn masked_divergence(base: &Tensor, patch: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (base, [c, h, w]) = values(base)?;
    let (patch, _) = values(patch)?;
    let (mask, _) = values(mask)?;
    let d: Vec<f32> = read(&patch).iter().zip(read(&base)).map(|(&p, &b)| p - b).collect();
    let inside: Vec<f32> = read(&mask).iter().map(|&m| if m > 0.5 { 1.0 } else { 0.0 }).collect();
    let (n, k) = (h - 2, w - 2);
    fresh(c, n, k, |out| {
        for (i, dst) in out.chunks_exact_mut(k).enumerate() {
            let (ch, y) = (i / n, i % n + 1);
            let (above, here, below) =
                (&d[(ch * h + y - 1) * w..][..w], &d[(ch * h + y) * w..][..w], &d[(ch * h + y + 1) * w..][..w]);
            let (m_above, m_here, m_below) =
                (&inside[(y - 1) * w..][..w], &inside[y * w..][..w], &inside[(y + 1) * w..][..w]);
            for (j, o) in dst.iter_mut().enumerate() {
                let x = j + 1;
                // The edges to the right, left, below and above, in the tensor ops' order.
                let right = (here[x + 1] - here[x]) * (m_here[x + 1] * m_here[x]);
                let left = (here[x] - here[x - 1]) * (m_here[x] * m_here[x - 1]);
                let down = (below[x] - here[x]) * (m_below[x] * m_here[x]);
                let up = (here[x] - above[x]) * (m_here[x] * m_above[x]);
                *o = (right - left) + (down - up);
            }
        }
    })
}
}

/// A patch laid over a rectangle of a base: `base` [C, h, w], `patch` [C, ph, pw] at (x, y),
/// and `alpha` [1, ph, pw] where the patch is premultiplied colour with that coverage. All
/// read in place.
struct Overlay<'a> {
    base: Rows<'a>,
    patch: Rows<'a>,
    alpha: Option<Rows<'a>>,
    /// C, h, w of `base`; x, y, pw, ph of the rectangle.
    size: [usize; 3],
    rect: [usize; 4],
}

impl<'a> Overlay<'a> {
    /// `None` where a tensor does not fit [`Rows`] or the shapes do not agree.
    fn of(base: &'a Tensor, patch: &'a Tensor, alpha: Option<&'a Tensor>, x: usize, y: usize) -> Option<Self> {
        let alpha = match alpha {
            Some(t) => Some(Rows::of(t).filter(|_| sizes(t)[0] == 1 && sizes(t)[1..] == sizes(patch)[1..])?),
            None => None,
        };
        let (size, [pc, ph, pw]) = (sizes(base), sizes(patch));
        let within = |at: usize, len: usize, side: usize| at.checked_add(len).is_some_and(|end| end <= side);
        let fits_in = pc == size[0] && within(y, ph, size[1]) && within(x, pw, size[2]);
        Some(Overlay { base: Rows::of(base)?, patch: Rows::of(patch)?, alpha, size, rect: [x, y, pw, ph] })
            .filter(|_| fits_in)
    }

    /// Row `row` of plane `ch` (see [`OverlayRow`]); `ones` stands in for a missing alpha.
    fn row<'r>(&'r self, ch: usize, row: usize, ones: &'r [f32]) -> OverlayRow<'r> {
        let [_, y, pw, ph] = self.rect;
        let inside = (y..y + ph).contains(&row).then(|| {
            let coverage = match &self.alpha {
                Some(a) => a.at(0, row - y),
                None => &ones[..pw],
            };
            (self.patch.at(ch, row - y), coverage)
        });
        OverlayRow { under: self.base.at(ch, row), inside }
    }
}

/// One row of an [`Overlay`]: the base's, and where the row crosses the rectangle the patch's
/// colour and coverage there (all ones without alpha), over columns x..x + pw.
struct OverlayRow<'r> {
    under: &'r [f32],
    inside: Option<(&'r [f32], &'r [f32])>,
}

wide! {
/// The first level of `blend::laplacian`'s pyramid, [C + 1, h, w]: the patch's difference
/// from `base` [C, h, w] over the rectangle at (`x`, `y`) the size of `patch` [C, ph, pw], zero
/// elsewhere, then `mask` [1, h, w]. With `alpha` [1, ph, pw] the patch is premultiplied colour
/// laid over `base` by that coverage, so its difference is `patch - alpha * base` (without,
/// the coverage is one: `patch - base`). `None` where the shapes do not agree or a tensor's
/// rows are not contiguous.
pub fn difference_level(
    base: &Tensor,
    patch: &Tensor,
    alpha: Option<&Tensor>,
    x: usize,
    y: usize,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
    let (Some(o), Some(m)) = (Overlay::of(base, patch, alpha, x, y), Rows::of(mask)) else {
        return Ok(None);
    };
    let ([c, h, w], pw) = (o.size, o.rect[2]);
    if sizes(mask) != [1, h, w] {
        return Ok(None);
    }
    let ones = vec![1f32; pw];
    fresh(c + 1, h, w, |out| {
        for (n, dst) in out.chunks_exact_mut(w).enumerate() {
            let (ch, row) = (n / h, n % h);
            if ch == c {
                dst.copy_from_slice(m.at(0, row));
                continue;
            }
            dst.fill(0.0);
            if let OverlayRow { under, inside: Some((colour, coverage)) } = o.row(ch, row, &ones) {
                let (inside, under) = (&mut dst[x..x + pw], &under[x..x + pw]);
                for ((d, &u), (&v, &k)) in inside.iter_mut().zip(under).zip(colour.iter().zip(coverage)) {
                    *d = v - k * u;
                }
            }
        }
    })
    .map(Some)
}
}

wide! {
/// `base` [C, h, w] with the rectangle at (`x`, `y`) the size of `patch` [C, ph, pw] replaced
/// by the patch, laid over the base by `alpha` [1, ph, pw] where given (`patch + (1 - alpha) *
/// base`, as `matte::over`): a new tensor. `None` as for [`difference_level`].
pub fn laid_over(base: &Tensor, patch: &Tensor, alpha: Option<&Tensor>, x: usize, y: usize) -> Result<Option<Tensor>> {
    let Some(o) = Overlay::of(base, patch, alpha, x, y) else {
        return Ok(None);
    };
    let ([c, h, w], pw) = (o.size, o.rect[2]);
    let ones = vec![1f32; pw];
    let straight = alpha.is_none();
    fresh(c, h, w, |out| {
        for (n, dst) in out.chunks_exact_mut(w).enumerate() {
            let OverlayRow { under, inside } = o.row(n / h, n % h, &ones);
            dst.copy_from_slice(under);
            match inside {
                Some((colour, _)) if straight => dst[x..x + pw].copy_from_slice(colour),
                Some((colour, coverage)) => {
                    let (laid, under) = (&mut dst[x..x + pw], &under[x..x + pw]);
                    for ((d, &u), (&v, &k)) in laid.iter_mut().zip(under).zip(colour.iter().zip(coverage)) {
                        *d = u * (1.0 - k) + v;
                    }
                }
                None => {}
            }
        }
    })
    .map(Some)
}
}

/// `f` of each value of `x` (which [`fits`]), as a new tensor: a chain of element-wise tensor
/// ops in one pass, for the small masks where each op's own cost is most of its time.
pub fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    let (x, [c, h, w]) = values(x)?;
    let src = read(&x);
    fresh(c, h, w, |out| out.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v)))
}

/// A [4, h, w] colour-and-alpha patch (which [`fits`]) as [colour × coverage, coverage] in
/// one pass, `coverage` turning its alpha into coverage (`matte::premultiplied`).
pub fn premultiplied(patch: &Tensor, coverage: impl Fn(f32) -> f32) -> Result<Tensor> {
    let (x, [c, h, w]) = values(patch)?;
    if c != 4 {
        return Err(TchError::Shape(format!("a colour-and-alpha patch has 4 channels, not {c}")));
    }
    let (src, plane) = (read(&x), h * w);
    fresh(4, h, w, |out| {
        let (colour, alpha) = out.split_at_mut(3 * plane);
        alpha.iter_mut().zip(&src[3 * plane..]).for_each(|(a, &u)| *a = coverage(u));
        for (dst, values) in colour.chunks_exact_mut(plane).zip(src.chunks_exact(plane)) {
            dst.iter_mut().zip(values).zip(&*alpha).for_each(|((o, &v), &a)| *o = v * a);
        }
    })
}

/// The sides of a tensor that [`fits`], as (C, h, w).
fn sizes(x: &Tensor) -> [usize; 3] {
    let s = x.size();
    [s[0] as usize, s[1] as usize, s[2] as usize]
}

/// Whether `x` fits the filters here and `weight` is one plane of its size.
pub fn weighs(x: &Tensor, weight: &Tensor) -> bool {
    fits(x) && fits(weight) && weight.size()[0] == 1 && weight.size()[1..] == x.size()[1..]
}

/// Per channel of `x` [C, h, w] (see [`weighs`]), the mean and the standard deviation (with
/// 1e-8 added under the root) over the pixels where `weight` is over one half; `None` under 8
/// such pixels. Colour matching's statistics in two passes, summed in double precision.
pub fn masked_stats(x: &Tensor, weight: &Tensor) -> Result<Option<Vec<(f32, f32)>>> {
    let (x, [_, h, w]) = values(x)?;
    let (weight, _) = values(weight)?;
    let inside: Vec<bool> = read(&weight).iter().map(|&m| m > 0.5).collect();
    let n = inside.iter().filter(|&&i| i).count();
    if n < 8 {
        return Ok(None);
    }
    let stats = read(&x)
        .chunks_exact(h * w)
        .map(|plane| {
            let picked = || plane.iter().zip(&inside).filter(|(_, &i)| i).map(|(&v, _)| f64::from(v));
            let mean = picked().sum::<f64>() / n as f64;
            let var = picked().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            (mean as f32, (var + 1e-8).sqrt() as f32)
        })
        .collect();
    Ok(Some(stats))
}

wide! {
/// `x` [C, h, w] with channel `c` made `(x - from) * gain + to` for `moves[c] = (from, gain,
/// to)`, in one pass.
pub fn shift_channels(x: &Tensor, moves: &[(f32, f32, f32)]) -> Result<Tensor> {
    let (x, [c, h, w]) = values(x)?;
    let src = read(&x);
    fresh(c, h, w, |out| {
        for ((dst, plane), &(from, gain, to)) in out.chunks_exact_mut(h * w).zip(src.chunks_exact(h * w)).zip(moves) {
            for (d, &v) in dst.iter_mut().zip(plane) {
                *d = (v - from) * gain + to;
            }
        }
    })
}
}

#[cfg(test)]
mod tests;
