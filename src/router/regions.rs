//! The router's checks of one region at a time: class or model, generation parameters,
//! geometry and masks, feather, projection; and the regions a label map makes. Each error
//! names the field's JSON path.

use std::sync::Arc;

use super::geometry::{self, polygon_area, Rect, Shape};
use super::picture::{self, PictureLimits};
use super::{
    derived_seed, err, finite, label_map, Region, Router, DEFAULT_HARMONIZE_STEPS, DEFAULT_PROJECT_STEPS,
    MAX_PROJECT_STEPS,
};
use crate::error::LayoutError;
use crate::layout::{BlendMode, Fit, GenerationSpec, Layout, Matte, RegionSpec};
use crate::model::{GenerationParams, Model, ModelError, StyleMix};

impl Router<'_> {
    pub(super) fn picture_limits(&self) -> PictureLimits {
        PictureLimits { max_base64_len: self.limits.max_picture_base64, max_side: self.limits.max_picture_side }
    }

    pub(super) fn resolve(
        &self,
        field: &str,
        class: &Option<String>,
        model: &Option<String>,
    ) -> Result<Arc<Model>, LayoutError> {
        match (class, model) {
            (Some(_), Some(_)) => Err(err(field, "give `class` or `model`, not both")),
            (None, None) => Err(err(field, "needs a `class` or a `model`")),
            (Some(c), None) => self.registry.for_class(c).cloned().ok_or_else(|| {
                err(
                    format!("{field}.class"),
                    format!("unknown class `{c}`; the loaded models serve: {}", self.registry.classes().join(", ")),
                )
            }),
            (None, Some(m)) => self.registry.get(m).cloned().ok_or_else(|| {
                err(
                    format!("{field}.model"),
                    format!("unknown model `{m}`; loaded: {}", self.registry.names().join(", ")),
                )
            }),
        }
    }

    pub(super) fn params(
        &self,
        field: &str,
        model: &Model,
        g: &GenerationSpec,
        seed: u32,
    ) -> Result<GenerationParams, LayoutError> {
        let d = &model.spec.defaults;
        let small = |name: &str, v: Option<u64>| -> Result<Option<u32>, LayoutError> {
            v.map(|v| u32::try_from(v).map_err(|_| err(format!("{field}.{name}"), format!("{v} is above 4294967295"))))
                .transpose()
        };
        let seed = small("seed", g.seed)?.unwrap_or(seed);
        let trunc = match g.trunc {
            Some(t) if !t.is_finite() || t.abs() > 100.0 => {
                return Err(err(format!("{field}.trunc"), format!("{t} is not a truncation psi within ±100")))
            }
            Some(t) => t,
            None => d.trunc,
        };
        let mix = match (small("mix_seed", g.mix_seed)?, small("mix_from", g.mix_from)?) {
            (Some(seed), Some(from)) => Some(StyleMix { seed, from: from as usize }),
            (None, None) => None,
            _ => return Err(err(field, "`mix_seed` and `mix_from` go together")),
        };
        let class_index = match (g.class_index, model.spec.generator.c_dim) {
            (Some(k), _) => Some(small("class_index", Some(k))?.unwrap_or(0) as usize),
            (None, _) => model.default_params(seed).class_index,
        };
        let p = GenerationParams {
            seed,
            trunc,
            trunc_cutoff: small("trunc_cutoff", g.trunc_cutoff)?.map(|v| v as usize).or(d.trunc_cutoff),
            class_index,
            noise_mode: g.noise_mode.unwrap_or(d.noise_mode),
            mix,
            projected: None,
        };
        model.check(&p).map_err(|e| match e {
            ModelError::InvalidParam { field: f, reason } => err(format!("{field}.{f}"), reason),
            other => err(field, other.to_string()),
        })?;
        Ok(p)
    }

    fn shape(&self, field: &str, r: &RegionSpec) -> Result<Shape, LayoutError> {
        let given = [r.rect.is_some(), r.ellipse.is_some(), r.polygon.is_some()].iter().filter(|&&b| b).count();
        if given != 1 {
            return Err(err(field, "needs exactly one of `box`, `ellipse`, `polygon`"));
        }
        if r.mask.is_some() && r.rect.is_none() {
            return Err(err(format!("{field}.mask"), "is placed on a `box`: give one"));
        }
        let four = |name: &str, v: &Vec<f64>| -> Result<[f64; 4], LayoutError> {
            let f = format!("{field}.{name}");
            if v.len() != 4 {
                return Err(err(&f, format!("needs 4 numbers, got {}", v.len())));
            }
            Ok([finite(&f, v[0])?, finite(&f, v[1])?, finite(&f, v[2])?, finite(&f, v[3])?])
        };
        if let Some(b) = &r.rect {
            let [x, y, w, h] = four("box", b)?;
            if w < 1.0 || h < 1.0 {
                return Err(err(format!("{field}.box"), format!("width and height must be at least 1, got {w} x {h}")));
            }
            return Ok(Shape::Box { x, y, w, h });
        }
        if let Some(e) = &r.ellipse {
            let [cx, cy, rx, ry] = four("ellipse", e)?;
            if rx < 0.5 || ry < 0.5 {
                return Err(err(format!("{field}.ellipse"), format!("radii must be at least 0.5, got {rx} and {ry}")));
            }
            return Ok(Shape::Ellipse { cx, cy, rx, ry });
        }
        let poly = r.polygon.as_ref().expect("one geometry");
        let f = format!("{field}.polygon");
        if poly.len() < 3 || poly.len() > 4096 {
            return Err(err(&f, format!("needs 3 to 4096 points, got {}", poly.len())));
        }
        let mut pts = Vec::with_capacity(poly.len());
        for (i, p) in poly.iter().enumerate() {
            let pf = format!("{f}[{i}]");
            if p.len() != 2 {
                return Err(err(&pf, "a point is [x, y]"));
            }
            pts.push((finite(&pf, p[0])?, finite(&pf, p[1])?));
        }
        if polygon_area(&pts).abs() < 0.5 {
            return Err(err(&f, "is degenerate: it encloses no area"));
        }
        Ok(Shape::Polygon(pts))
    }

    /// The edge softness: as given, else for `alpha` 4 % of the shorter side (1 to 16 px);
    /// the other blends soften the edge their own way and default to none.
    fn feather(field: &str, v: Option<f64>, rect: &Rect, blend: BlendMode) -> Result<f64, LayoutError> {
        match v {
            Some(f) if !(f.is_finite() && (0.0..=256.0).contains(&f)) => {
                Err(err(format!("{field}.feather"), format!("{f} is not between 0 and 256 pixels")))
            }
            Some(f) => Ok(f),
            None if blend == BlendMode::Alpha => Ok((0.04 * rect.w.min(rect.h) as f64).clamp(1.0, 16.0)),
            None => Ok(0.0),
        }
    }

    /// Whether `model`'s alpha mattes the patch under `matte`.
    fn patch_matte(field: &str, matte: Option<Matte>, model: &Model) -> Result<bool, LayoutError> {
        match matte.unwrap_or_default() {
            Matte::Auto => Ok(model.spec.alpha),
            Matte::Region => Ok(false),
            Matte::Patch if model.spec.alpha => Ok(true),
            Matte::Patch => Err(err(
                format!("{field}.matte"),
                format!("model `{}` draws no alpha; use \"auto\" or \"region\"", model.name()),
            )),
        }
    }

    /// The region `r`, named `field` in errors; `seed_index` derives its seed when it names none.
    pub(super) fn region(
        &self,
        field: String,
        seed_index: u64,
        r: &RegionSpec,
        canvas: &Rect,
        layout_seed: u64,
        has_picture: bool,
    ) -> Result<Region, LayoutError> {
        let model = self.resolve(&field, &r.class, &r.model)?;
        let shape = self.shape(&field, r)?;
        let rect = shape.bounds();
        let visible = rect.intersect(canvas);
        if visible.is_empty() {
            return Err(err(&field, format!("lies entirely off the {}x{} canvas", canvas.w, canvas.h)));
        }
        if rect.w > 2 * canvas.w.max(canvas.h) || rect.h > 2 * canvas.w.max(canvas.h) {
            return Err(err(&field, format!("is {}x{}, more than twice the canvas", rect.w, rect.h)));
        }
        let mut mask = shape.coverage(&visible);
        if let Some(m) = &r.mask {
            let img = picture::decode_png(&format!("{field}.mask"), m, self.picture_limits())?;
            let values = picture::mask_values(&img, rect.w as u32, rect.h as u32);
            for y in 0..visible.h {
                for x in 0..visible.w {
                    let src = ((y + visible.y - rect.y) * rect.w + (x + visible.x - rect.x)) as usize;
                    mask[(y * visible.w + x) as usize] *= values[src];
                }
            }
        }
        if r.fit == Some(Fit::Contain) {
            let g = &model.spec.generator;
            let at = geometry::contained(g.img_resolution, g.img_resolution, rect.w, rect.h);
            let (ax, ay) = (rect.x + at.x, rect.y + at.y);
            for y in 0..visible.h {
                for x in 0..visible.w {
                    let (cx, cy) = (visible.x + x, visible.y + y);
                    if cx < ax || cx >= ax + at.w || cy < ay || cy >= ay + at.h {
                        mask[(y * visible.w + x) as usize] = 0.0;
                    }
                }
            }
        }
        let z = finite(&format!("{field}.z"), r.z.unwrap_or(0.0))?;
        let params = self.params(&field, &model, &r.generation(), derived_seed(layout_seed, seed_index))?;
        let project_steps = self.project_steps(&field, r, &model, has_picture)?;
        let patch_matte = Self::patch_matte(&field, r.matte, &model)?;
        let harmonize_steps = self.harmonize_steps(&field, r, &model)?;
        Ok(Region {
            source: field.clone(),
            class: r.class.clone(),
            model,
            rect,
            visible,
            mask,
            z,
            fit: r.fit.unwrap_or_default(),
            blend: r.blend.unwrap_or_default(),
            feather: Self::feather(&field, r.feather, &rect, r.blend.unwrap_or_default())?,
            color_match: r.color_match,
            patch_matte,
            project_steps,
            harmonize_steps,
            harmony: None,
            params,
        })
    }

    fn project_steps(
        &self,
        field: &str,
        r: &RegionSpec,
        model: &Model,
        has_picture: bool,
    ) -> Result<Option<usize>, LayoutError> {
        if !r.project {
            return match r.project_steps {
                Some(_) => Err(err(format!("{field}.project_steps"), "needs `project: true`")),
                None => Ok(None),
            };
        }
        if !has_picture {
            return Err(err(format!("{field}.project"), "needs a background `image` to project from"));
        }
        model.check_project().map_err(|e| match e {
            ModelError::InvalidParam { reason, .. } => err(format!("{field}.project"), reason),
            other => err(format!("{field}.project"), other.to_string()),
        })?;
        steps_in(field, "project_steps", r.project_steps, DEFAULT_PROJECT_STEPS).map(Some)
    }

    fn harmonize_steps(&self, field: &str, r: &RegionSpec, model: &Model) -> Result<Option<usize>, LayoutError> {
        if !r.harmonize {
            return match r.harmonize_steps {
                Some(_) => Err(err(format!("{field}.harmonize_steps"), "needs `harmonize: true`")),
                None => Ok(None),
            };
        }
        if r.project {
            return Err(err(
                format!("{field}.harmonize"),
                "a projected region already follows the picture; give `project` or `harmonize`, not both",
            ));
        }
        model.check_project().map_err(|e| err(format!("{field}.harmonize"), e.to_string()))?;
        steps_in(field, "harmonize_steps", r.harmonize_steps, DEFAULT_HARMONIZE_STEPS).map(Some)
    }

    pub(super) fn label_map_regions(
        &self,
        layout: &Layout,
        canvas: &Rect,
        first_index: usize,
    ) -> Result<Vec<Region>, LayoutError> {
        let Some(lm) = &layout.label_map else { return Ok(vec![]) };
        let mut palette = Vec::new();
        for (class, color) in &lm.palette {
            let field = format!("label_map.palette.{class}");
            let rgb = label_map::parse_color(&field, color)?;
            if self.registry.for_class(class).is_none() {
                return Err(err(
                    field,
                    format!("unknown class `{class}`; the loaded models serve: {}", self.registry.classes().join(", ")),
                ));
            }
            palette.push((class.clone(), rgb));
        }
        if palette.is_empty() {
            return Err(err("label_map.palette", "names no class"));
        }
        let min_area = match lm.min_area {
            Some(a) if !(a.is_finite() && a >= 0.0) => {
                return Err(err("label_map.min_area", format!("{a} is not a pixel count")))
            }
            Some(a) => a as i64,
            None => 64,
        };
        let img = picture::decode_png("label_map.png", &lm.png, self.picture_limits())?;
        let comps = label_map::components(&img, &palette, canvas.w, canvas.h, min_area);
        if comps.len() > self.limits.max_regions {
            return Err(err(
                "label_map",
                format!(
                    "has {} components; the limit is {} regions (raise min_area or merge specks)",
                    comps.len(),
                    self.limits.max_regions
                ),
            ));
        }
        comps
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let field = format!("label_map.{}[{k}]", c.class);
                let model = self.registry.for_class(&c.class).cloned().expect("checked above");
                let params = self.params(
                    &field,
                    &model,
                    &GenerationSpec::default(),
                    derived_seed(layout.seed, (first_index + k) as u64),
                )?;
                let patch_matte = Self::patch_matte("label_map", lm.matte, &model)?;
                Ok(Region {
                    patch_matte,
                    source: field.clone(),
                    class: Some(c.class),
                    model,
                    rect: c.rect,
                    visible: c.rect,
                    mask: c.mask,
                    z: 0.0,
                    fit: Fit::Cover,
                    blend: lm.blend.unwrap_or_default(),
                    feather: Self::feather(&field, lm.feather, &c.rect, lm.blend.unwrap_or_default())?,
                    color_match: lm.color_match,
                    project_steps: None,
                    harmonize_steps: None,
                    harmony: None,
                    params,
                })
            })
            .collect()
    }
}

/// A step count as given (a whole number from 1 to the layout's limit), else `default`.
fn steps_in(field: &str, name: &str, given: Option<f64>, default: usize) -> Result<usize, LayoutError> {
    let steps = given.unwrap_or(default as f64);
    if !(steps.is_finite() && steps.fract() == 0.0 && (1.0..=MAX_PROJECT_STEPS as f64).contains(&steps)) {
        return Err(err(
            format!("{field}.{name}"),
            format!("{steps} is not a whole number from 1 to {MAX_PROJECT_STEPS}"),
        ));
    }
    Ok(steps as usize)
}
