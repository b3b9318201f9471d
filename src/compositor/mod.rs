//! The compositor: paints the background, then each region's patch in paint order, fitted to
//! its rectangle and blended under its mask. Works on tensors on the generators' device; only
//! the finished canvas leaves it. It never runs a model or reads the layout JSON.

pub mod batch;
pub mod blend;
mod cpu;
mod matrices;
pub mod matte;
pub mod poisson;
pub mod resample;
pub mod seam;

use tch::{Device, Kind, TchError, Tensor};

use crate::layout::{BlendMode, Fit};
use crate::model::device::upload;
use crate::router::geometry::{contained, Rect};
use crate::router::{Background, Region, RoutePlan};
use resample::resize;

type Result<T> = std::result::Result<T, TchError>;

/// The generated patches of a plan, each [C, S, S] on the device in generator units; or
/// each [N, C, S, S] for N canvases of one plan that differ only in their patches (see
/// [`Compositor::composite`]).
pub struct Patches {
    pub background: Option<Tensor>,
    /// Indexed like `RoutePlan::regions`.
    pub regions: Vec<Option<Tensor>>,
}

pub struct Compositor {
    pub device: Device,
}

/// A finished canvas and what each region's patch covered.
pub struct Composited {
    /// [3, H, W] in generator units.
    pub canvas: Tensor,
    /// Indexed like `RoutePlan::regions`: the patch's fitted alpha over the region's visible
    /// rectangle, [1, h, w] in [0, 1], for regions matted by their patch; the final matte is
    /// this times the region's mask.
    pub alphas: Vec<Option<Tensor>>,
}

/// 8-bit values in generator units are `(c + UNIT_OFFSET) / UNIT_SCALE`, chosen so NVIDIA's
/// uint8 conversion gives them back exactly.
const UNIT_OFFSET: f64 = 0.5 - 128.0;
const UNIT_SCALE: f64 = 127.5;

fn color_units(c: u8) -> f64 {
    (f64::from(c) + UNIT_OFFSET) / UNIT_SCALE
}

/// Where `cover` puts a `pw` x `ph` patch for a `w` x `h` rectangle: the scaled patch's size,
/// and the rectangle's place at its centre.
fn covered(pw: f64, ph: f64, w: i64, h: i64) -> (i64, i64, Rect) {
    let s = (w as f64 / pw).max(h as f64 / ph);
    let (rh, rw) = (((ph * s).ceil() as i64).max(h), ((pw * s).ceil() as i64).max(w));
    (rh, rw, Rect { x: (rw - w) / 2, y: (rh - h) / 2, w, h })
}

/// Height and width: the last two sides of a [C, h, w] or [N, C, h, w] tensor.
pub(crate) fn sides(t: &Tensor) -> (i64, i64) {
    let s = t.size();
    (s[s.len() - 2], s[s.len() - 1])
}

/// Channels: the third side from the end.
pub(crate) fn channels(t: &Tensor) -> i64 {
    let s = t.size();
    s[s.len() - 3]
}

/// `f` of `x` as a batch [N, C, h, w], for libtorch's 2-D kernels: a single [C, h, w] goes
/// in as a batch of one and comes back as it was.
pub(crate) fn as_batch(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dim() == 3 {
        return f(&x.f_unsqueeze(0)?)?.f_squeeze_dim(0);
    }
    f(x)
}

/// The shape of `t` with its channels and sides replaced (its leading batch side kept).
pub(crate) fn shaped_like(t: &Tensor, c: i64, h: i64, w: i64) -> Vec<i64> {
    let mut s = t.size();
    let n = s.len();
    s[n - 3..].copy_from_slice(&[c, h, w]);
    s
}

/// The patch as three contiguous channels (generator outputs may be channels-last views,
/// which the resize kernels handle slowly).
fn rgb(patch: &Tensor) -> Result<Tensor> {
    match channels(patch) {
        1 => {
            let (h, w) = sides(patch);
            patch.f_expand(shaped_like(patch, 3, h, w), false)?.f_contiguous()
        }
        3 => patch.f_contiguous(),
        _ => patch.f_narrow(-3, 0, 3)?.f_contiguous(),
    }
}

/// The patch scaled into a `w` x `h` rectangle, with its coverage when it does not fill it.
/// With `matte`, the patch's alpha is fitted by the same transform and is the coverage, and
/// the colour comes back premultiplied by it (see [`matte::premultiplied`]).
pub fn fit_patch(patch: &Tensor, w: i64, h: i64, fit: Fit, matte: bool) -> Result<(Tensor, Option<Tensor>)> {
    let p = if matte { matte::premultiplied(patch)? } else { rgb(patch)? };
    let (ph, pw) = sides(&p);
    let (ph, pw) = (ph as f64, pw as f64);
    let split = |t: Tensor, cov: Option<Tensor>| -> Result<(Tensor, Option<Tensor>)> {
        if !matte {
            return Ok((t, cov));
        }
        Ok((t.f_narrow(-3, 0, 3)?, Some(t.f_narrow(-3, 3, 1)?)))
    };
    match fit {
        Fit::Stretch => split(resize(&p, h, w)?, None),
        Fit::Cover => {
            let (rh, rw, at) = covered(pw, ph, w, h);
            split(window(&resize(&p, rh, rw)?, &at)?, None)
        }
        Fit::Contain => {
            let at = contained(pw as i64, ph as i64, w, h);
            let r = resize(&p, at.h, at.w)?;
            let img = Tensor::f_zeros(shaped_like(&p, channels(&p), h, w), (Kind::Float, p.device()))?;
            let cov = Tensor::f_zeros([1, h, w], (Kind::Float, p.device()))?;
            window(&img, &at)?.f_copy_(&r)?;
            let _ = window(&cov, &at)?.f_fill_(1.0)?;
            split(img, Some(cov))
        }
    }
}

/// Where a patch goes: fitted by `fit` to a `w` x `h` rectangle (a region's, or the canvas's
/// for a background), as [`fit_patch`] fits it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fitting {
    pub fit: Fit,
    pub w: i64,
    pub h: i64,
}

impl Fitting {
    /// Where the compositor fits the generated background: to the whole canvas.
    pub fn background(plan: &RoutePlan) -> Option<Fitting> {
        match &plan.background {
            Background::Generated { fit, .. } => Some(Fitting { fit: *fit, w: plan.width, h: plan.height }),
            _ => None,
        }
    }

    /// Where the compositor fits a region's patch: to the region's rectangle.
    pub fn region(region: &Region) -> Fitting {
        Fitting { fit: region.fit, w: region.rect.w, h: region.rect.h }
    }

    /// `patch` fitted here by [`fit_patch`].
    pub fn fit(&self, patch: &Tensor, matte: bool) -> Result<(Tensor, Option<Tensor>)> {
        fit_patch(patch, self.w, self.h, self.fit, matte)
    }

    /// The size (h, w) that [`fit_patch`] resizes a `ph` x `pw` patch to.
    pub fn resized(&self, ph: i64, pw: i64) -> (i64, i64) {
        match self.fit {
            Fit::Stretch => (self.h, self.w),
            Fit::Cover => {
                let (rh, rw, _) = covered(pw as f64, ph as f64, self.w, self.h);
                (rh, rw)
            }
            Fit::Contain => {
                let at = contained(pw, ph, self.w, self.h);
                (at.h, at.w)
            }
        }
    }

    /// `patch` [C, H, W] resized on its own device as [`fit_patch`] would resize it: fitting
    /// the result then resizes nothing, and gives the same pixels. `None` where the size would
    /// not change, where the result would be resized again, or where it would have more than
    /// [`LARGEST_RESIZED_FIRST`] pixels. A GPU does this before a patch is copied to the host
    /// for a CPU canvas: a 1024 px patch for a 236 px region is a nineteenth of the bytes, and
    /// a 128 px background for a 512 px canvas leaves the host's cores nothing to upscale.
    pub fn resize_first(&self, patch: &Tensor) -> Result<Option<Tensor>> {
        let (ph, pw) = sides(patch);
        let (h, w) = self.resized(ph, pw);
        if (h, w) == (ph, pw) || h * w > LARGEST_RESIZED_FIRST || self.resized(h, w) != (h, w) {
            return Ok(None);
        }
        Ok(Some(resize(&patch.f_contiguous()?, h, w)?))
    }
}

/// The most pixels [`Fitting::resize_first`] enlarges a patch to: 1024 x 1024, the largest
/// canvas `composite_on = auto` composites on the CPU (12 MB of float32 colour to copy).
pub const LARGEST_RESIZED_FIRST: i64 = 1024 * 1024;

/// The rectangle `r` of [C, h, w] or [N, C, h, w], a view.
fn window(t: &Tensor, r: &Rect) -> Result<Tensor> {
    t.f_narrow(-2, r.y, r.h)?.f_narrow(-1, r.x, r.w)
}

/// `inner` placed over `at` (a rectangle of `base`) in a copy of `base`.
fn paste(base: &Tensor, inner: &Tensor, at: &Rect) -> Result<Tensor> {
    let out = base.f_detach_copy()?;
    window(&out, at)?.f_copy_(inner)?;
    Ok(out)
}

/// `patch` laid over `at` (a rectangle of `base`) in a copy of `base`: pasted, or with `alpha`
/// laid over by that coverage as [`matte::over`] lays premultiplied colour; on the CPU in one
/// pass.
fn pasted_over(base: &Tensor, patch: &Tensor, alpha: Option<&Tensor>, at: &Rect) -> Result<Tensor> {
    if let Some(pasted) = cpu::laid_over(base, patch, alpha, at.x as usize, at.y as usize)? {
        return Ok(pasted);
    }
    match alpha {
        Some(a) => paste(base, &matte::over(&window(base, at)?, patch, a)?, at),
        None => paste(base, patch, at),
    }
}

/// `m`, the region's mask over window `win`, times its patch's `alpha` (over the visible
/// rectangle) where the patch mattes itself: the region's final matte there.
fn matted(m: Tensor, region: &Region, alpha: Option<&Tensor>, win: &Rect) -> Result<Tensor> {
    match alpha {
        Some(a) => {
            let zeros = Tensor::f_zeros(shaped_like(a, 1, win.h, win.w), (Kind::Float, a.device()))?;
            m.f_mul(&paste(&zeros, a, &region.visible.within(win))?)
        }
        None => Ok(m),
    }
}

impl Compositor {
    /// The finished canvas and the patches' alphas. With every patch [N, C, S, S], N canvases
    /// of the plan at once: canvas [N, 3, H, W], alphas [N, 1, h, w], each step one pass over
    /// all of them (on a GPU, one launch where N requests would make N). The CPU's filters
    /// take one canvas at a time; a batch there runs in tensor ops.
    pub fn composite(&self, plan: &RoutePlan, patches: &Patches) -> Result<Composited> {
        let _guard = tch::no_grad_guard();
        let (h, w) = (plan.height, plan.width);
        let given = patches.background.iter().chain(patches.regions.iter().flatten());
        let ranks: Vec<usize> = given.clone().map(|p| p.dim()).collect();
        if ranks.iter().any(|&r| r != ranks[0]) || ranks.iter().any(|&r| r != 3 && r != 4) {
            return Err(TchError::Shape(format!("patches of ranks {ranks:?}: all [C, S, S] or all [N, C, S, S]")));
        }
        let batch = given.map(|p| p.size()[0]).next().filter(|_| ranks[0] == 4);
        let canvas = self.background(plan, patches.background.as_ref())?;
        let canvas = match batch {
            Some(n) if canvas.dim() == 3 => canvas.f_expand([n, 3, h, w], false)?.f_contiguous()?,
            _ => canvas,
        };
        let bounds = Rect { x: 0, y: 0, w, h };
        let mut alphas = Vec::with_capacity(plan.regions.len());
        for (region, patch) in plan.regions.iter().zip(&patches.regions) {
            let alpha = match patch {
                Some(p) => self.paint(&canvas, region, &p.f_to_device(self.device)?, &bounds)?,
                None => None,
            };
            alphas.push(alpha);
        }
        Ok(Composited { canvas, alphas })
    }

    /// The canvas with the background alone: its colour, picture or generated `patch`.
    pub fn background(&self, plan: &RoutePlan, patch: Option<&Tensor>) -> Result<Tensor> {
        let (h, w) = (plan.height, plan.width);
        Ok(match (&plan.background, patch) {
            (Background::Generated { fit, .. }, Some(p)) => {
                let (img, cov) = Fitting { fit: *fit, w, h }.fit(&p.f_to_device(self.device)?, false)?;
                match cov {
                    Some(c) => blend::mix(&Tensor::f_zeros([3, h, w], (Kind::Float, self.device))?, &img, &c)?,
                    None => img.f_contiguous()?,
                }
            }
            (Background::Color(c), _) => self.solid(*c, h, w)?,
            (Background::Image(rgb), _) => self.picture(rgb, h, w)?,
            (Background::Generated { .. }, None) => self.solid([128, 128, 128], h, w)?,
        })
    }

    fn solid(&self, c: [u8; 3], h: i64, w: i64) -> Result<Tensor> {
        let v: Vec<f32> = c.iter().map(|&x| color_units(x) as f32).collect();
        upload(&Tensor::from_slice(&v), self.device)?.f_view([3, 1, 1])?.f_expand([3, h, w], false)?.f_contiguous()
    }

    /// A client's picture (interleaved RGB bytes) in generator units: `color_units` per
    /// channel, so pixels no region touches come back as they were sent.
    pub fn picture(&self, rgb: &[u8], h: i64, w: i64) -> Result<Tensor> {
        let bytes = upload(&Tensor::from_slice(rgb), self.device)?;
        bytes
            .f_view([h, w, 3])?
            .f_permute([2, 0, 1])?
            .f_to_kind(Kind::Float)?
            .f_add_scalar(UNIT_OFFSET)?
            .f_div_scalar(UNIT_SCALE)?
            .f_contiguous()
    }

    /// The region's mask placed in window `win` (zeros elsewhere), [1, win.h, win.w]. The
    /// router has already limited it to where a `contain` patch lands.
    fn mask_in(&self, region: &Region, win: &Rect) -> Result<Tensor> {
        self.placed(region, None, win)
    }

    /// The region's final matte placed in window `win`: its mask, times its patch's `alpha`
    /// (over the visible rectangle) where the patch mattes itself.
    pub fn matte_in(&self, region: &Region, alpha: Option<&Tensor>, win: &Rect) -> Result<Tensor> {
        let Some(a) = alpha else { return self.mask_in(region, win) };
        let (v, in_place) = (&region.visible, cpu::Rows::of(a));
        match in_place.filter(|_| self.device == Device::Cpu && a.size() == [1, v.h, v.w]) {
            Some(rows) => self.placed(region, Some(rows), win),
            None => matted(self.mask_in(region, win)?, region, alpha, win),
        }
    }

    /// The mask placed in `win`, times `alpha`'s rows where given (the same products
    /// [`matted`] makes, in the same pass).
    fn placed(&self, region: &Region, alpha: Option<cpu::Rows>, win: &Rect) -> Result<Tensor> {
        let v = &region.visible;
        if v.x < win.x || v.y < win.y || v.x + v.w > win.x + win.w || v.y + v.h > win.y + win.h {
            return Err(TchError::Shape(format!("the mask's rectangle {v:?} is not inside the window {win:?}")));
        }
        if win.w <= 0 || win.h <= 0 {
            return Tensor::f_zeros([1, win.h.max(0), win.w.max(0)], (Kind::Float, self.device));
        }
        // Laid out on the host in one pass and sent at once: on a GPU one copy instead of four
        // launches.
        let (dx, dy, vw) = ((v.x - win.x) as usize, (v.y - win.y) as usize, v.w as usize);
        let mut rows = region.mask.chunks(vw.max(1)).take(v.h as usize).enumerate();
        let placed = cpu::fresh(1, win.h as usize, win.w as usize, |out| {
            for (y, dst) in out.chunks_exact_mut(win.w as usize).enumerate() {
                // Rows above the mask's take none of its rows.
                match if y >= dy { rows.next() } else { None } {
                    Some((k, src)) => {
                        dst[..dx].fill(0.0);
                        let inside = &mut dst[dx..dx + src.len()];
                        match &alpha {
                            Some(a) => {
                                inside.iter_mut().zip(src.iter().zip(a.at(0, k))).for_each(|(o, (m, a))| *o = m * a)
                            }
                            None => inside.copy_from_slice(src),
                        }
                        dst[dx + src.len()..].fill(0.0);
                    }
                    None => dst.fill(0.0),
                }
            }
        })?;
        upload(&placed, self.device)
    }

    /// Paints `region`'s patch into `canvas`; returns the patch's alpha over the visible
    /// rectangle when it mattes the patch.
    fn paint(&self, canvas: &Tensor, region: &Region, patch: &Tensor, bounds: &Rect) -> Result<Option<Tensor>> {
        let (r, v) = (&region.rect, &region.visible);
        let (full, cov) = Fitting::region(region).fit(patch, region.patch_matte)?;
        let in_rect = v.within(r);
        let mut p = window(&full, &in_rect)?;
        let alpha = match (region.patch_matte, cov) {
            (true, Some(c)) => Some(window(&c, &in_rect)?),
            _ => None,
        };
        if region.color_match {
            let reach = (region.feather.ceil() as i64).max(6);
            let win = v.expand(reach, bounds);
            let m = self.matte_in(region, alpha.as_ref(), &win)?;
            let inner = window(&m, &v.within(&win))?;
            let ring = blend::ring(&m, reach)?;
            p = match &alpha {
                Some(a) => {
                    let straight = matte::unpremultiplied(&p, a)?;
                    blend::match_colors(&straight, &inner, &window(canvas, &win)?, &ring)?.f_mul(a)?
                }
                None => blend::match_colors(&p, &inner, &window(canvas, &win)?, &ring)?,
            };
        }
        // Over what is already there: where the subject is absent the canvas shows through.
        // The Laplacian blend lays it in its first level and the Poisson blend as it pastes;
        // the other two modes lay it first.
        let laid = |p: &Tensor| match &alpha {
            Some(a) => matte::over(&window(canvas, v)?, p, a),
            None => Ok(p.shallow_clone()),
        };
        let margin = match region.blend {
            BlendMode::None => 0,
            BlendMode::Alpha => region.feather.ceil() as i64 + 1,
            BlendMode::Laplacian => 2 << blend::levels_for(v.w.min(v.h)),
            BlendMode::Poisson => 2,
        };
        let win = v.expand(margin, bounds);
        let base = window(canvas, &win)?;
        // With a matte a Poisson clone takes the subject alone: its backdrop stays the canvas's.
        let m = match region.blend {
            BlendMode::Poisson => self.matte_in(region, alpha.as_ref(), &win)?,
            _ => self.mask_in(region, &win)?,
        };
        let at = v.within(&win);
        // Each mode changes the canvas's window in place, and only where it changes.
        match region.blend {
            BlendMode::None => {
                let mut inside = window(&base, &at)?;
                inside.f_copy_(&laid(&p)?.f_where_self(&window(&m, &at)?.f_gt(0.5)?, &inside)?)?;
            }
            BlendMode::Alpha => {
                let soft = blend::feathered(&m, region.feather)?;
                blend::mix_into(&window(&base, &at)?, &laid(&p)?, &window(&soft, &at)?)?;
            }
            BlendMode::Laplacian => {
                let soft = blend::feathered(&m, region.feather / 2.0)?;
                let levels = blend::levels_for(v.w.min(v.h));
                let change = blend::laplacian(&base, &p, alpha.as_ref(), &at, &soft, levels)?;
                let _ = base.shallow_clone().f_add_(&change)?;
            }
            BlendMode::Poisson => {
                let solved = poisson::clone(&base, &pasted_over(&base, &p, alpha.as_ref(), &at)?, &m)?;
                blend::mix_into(&base, &solved, &blend::clone_reach(&m)?)?;
            }
        }
        Ok(alpha)
    }

    /// What a `res` x `res` patch fitted to `region` would have to show to reproduce
    /// `canvas` there, and where that matters: the inverse of the region's fit. Returns the
    /// target [3, res, res] and its weight [1, res, res] (the region's mask, zero where the
    /// patch is cropped off or off the canvas).
    pub fn projection_target(&self, canvas: &Tensor, region: &Region, res: i64) -> Result<(Tensor, Tensor)> {
        let v = &region.visible;
        let m = upload(&Tensor::from_slice(&region.mask), self.device)?.f_view([1, v.h, v.w])?;
        self.target_under(canvas, region, res, &m)
    }

    /// `projection_target` with another weight over the region's visible rectangle.
    pub fn target_under(
        &self,
        canvas: &Tensor,
        region: &Region,
        res: i64,
        weight: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (r, v) = (&region.rect, &region.visible);
        // Picture and weight as one [4, h, w] tensor, so the fit is undone once for both.
        let both = Tensor::f_zeros([4, r.h, r.w], (Kind::Float, self.device))?;
        let inner = window(&both, &v.within(r))?;
        inner.f_narrow(0, 0, 3)?.f_copy_(&window(canvas, v)?)?;
        inner.f_narrow(0, 3, 1)?.f_copy_(weight)?;
        let both = match region.fit {
            Fit::Stretch => both,
            Fit::Cover => {
                let (rh, rw, at) = covered(res as f64, res as f64, r.w, r.h);
                let big = Tensor::f_zeros([4, rh, rw], (Kind::Float, self.device))?;
                window(&big, &at)?.f_copy_(&both)?;
                big
            }
            Fit::Contain => window(&both, &contained(res, res, r.w, r.h))?.f_contiguous()?,
        };
        let fitted = resize(&both, res, res)?;
        Ok((fitted.f_narrow(0, 0, 3)?, fitted.f_narrow(0, 3, 1)?))
    }

    /// The band just inside `region`'s edge where its patch meets what lies around it,
    /// [1, v.h, v.w] over the visible rectangle: mask pixels (over one half) within `band`
    /// pixels of one outside it. The canvas's own edges are no seam.
    pub fn border_ring(&self, region: &Region, bounds: &Rect, band: i64) -> Result<Tensor> {
        let v = &region.visible;
        let win = v.expand(band, bounds);
        let hard = self.mask_in(region, &win)?.f_gt(0.5)?.f_to_kind(Kind::Float)?;
        let near_outside = blend::dilate(&hard.f_neg()?.f_add_scalar(1.0)?, band)?;
        window(&hard.f_mul(&near_outside)?, &v.within(&win))
    }

    /// The seam score of `region` in a finished `canvas` (see [`seam::seam_score`]).
    pub fn seam_score(&self, canvas: &Tensor, region: &Region, plan: &RoutePlan) -> Result<f64> {
        let bounds = Rect { x: 0, y: 0, w: plan.width, h: plan.height };
        let win = region.visible.expand(4, &bounds);
        let m = self.mask_in(region, &win)?;
        seam::seam_score(&window(canvas, &win)?, &m, 3)
    }
}

/// A picture of which region owns each pixel (the topmost whose final matte, its mask times
/// its patch's alpha where the patch mattes itself, is over one half), for debugging layouts:
/// each region its own colour, the background black.
pub fn ownership_map(plan: &RoutePlan, alphas: &[Option<Tensor>]) -> Result<image::RgbImage> {
    const COLORS: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ];
    let mut img = image::RgbImage::new(plan.width as u32, plan.height as u32);
    for (i, r) in plan.regions.iter().enumerate() {
        let v = &r.visible;
        let alpha = match alphas.get(i) {
            Some(Some(a)) => Some(Vec::<f32>::try_from(a.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?),
            _ => None,
        };
        for y in 0..v.h {
            for x in 0..v.w {
                let k = (y * v.w + x) as usize;
                let matte = r.mask[k] * alpha.as_ref().map_or(1.0, |a| a[k]);
                if matte > 0.5 {
                    img.put_pixel((v.x + x) as u32, (v.y + y) as u32, image::Rgb(COLORS[i % COLORS.len()]));
                }
            }
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patch resized first (as the generators' device does for a CPU canvas) fits to the
    /// same pixels as the whole patch, for every fit, square and oblong patches, and
    /// rectangles that shrink one side or both or enlarge it; a patch already at its fitted
    /// size, or one that would pass the bound, is left whole.
    #[test]
    fn a_patch_resized_first_fits_to_the_same_pixels() {
        tch::manual_seed(5);
        let (mut shrunk, mut enlarged) = (0, 0);
        for (ph, pw) in [(64, 64), (48, 64)] {
            let patch = Tensor::rand([3, ph, pw], (Kind::Float, Device::Cpu));
            for (w, h) in [(40, 30), (20, 50), (63, 10), (64, 64), (100, 80), (30, 90), (1, 1), (300, 200)] {
                for fit in [Fit::Stretch, Fit::Cover, Fit::Contain] {
                    let fitting = Fitting { fit, w, h };
                    let whole = fit_patch(&patch, w, h, fit, false).unwrap();
                    let Some(first) = fitting.resize_first(&patch).unwrap() else {
                        let (rh, rw) = fitting.resized(ph, pw);
                        assert!((rh, rw) == (ph, pw) || fitting.resized(rh, rw) != (rh, rw), "{fit:?} {w}x{h}");
                        continue;
                    };
                    if first.size()[1] * first.size()[2] < ph * pw {
                        shrunk += 1;
                    } else {
                        enlarged += 1;
                    }
                    assert_eq!((first.size()[1], first.size()[2]), fitting.resized(ph, pw), "{fit:?} {w}x{h}");
                    let from_first = fit_patch(&first, w, h, fit, false).unwrap();
                    assert!(whole.0.equal(&from_first.0), "{fit:?} {w}x{h} from {ph}x{pw}");
                    assert_eq!(whole.1.is_some(), from_first.1.is_some());
                    if let (Some(a), Some(b)) = (&whole.1, &from_first.1) {
                        assert!(a.equal(b), "coverage, {fit:?} {w}x{h}");
                    }
                }
            }
            let beyond = Fitting { fit: Fit::Stretch, w: 2048, h: 1024 };
            assert!(beyond.resize_first(&patch).unwrap().is_none(), "past the bound");
            let already = Fitting { fit: Fit::Stretch, w: pw, h: ph };
            assert!(already.resize_first(&patch).unwrap().is_none(), "nothing to resize");
        }
        assert!(enlarged >= 10, "only {enlarged} cases enlarged");
        assert!(shrunk >= 20, "only {shrunk} cases shrank");
    }
}
