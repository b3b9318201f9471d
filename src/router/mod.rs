//! The router: validates a layout against the loaded models and turns it into a plan —
//! regions with their models, generation parameters and anti-aliased masks in paint order,
//! and one generation job per model so each model's patches run as one batch.
//! Everything is checked before any generation starts. It runs no generator and touches no
//! tensor; the detectors of `detect` entries run here, on the decoded background picture.

mod detect;
pub mod geometry;
pub mod label_map;
pub mod picture;
mod regions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use detect::Detected;
use geometry::Rect;

use crate::error::LayoutError;
use crate::layout::{BlendMode, Fit, ImageFormat, Layout};
use crate::model::{GenerationParams, Model};
use crate::registry::ModelRegistry;

/// What a layout may ask for. Part of the service configuration (top-level settings there).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RouterLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_regions: usize,
    /// Base64 length of one mask or label map.
    pub max_picture_base64: usize,
    /// Decoded width and height of one mask or label map.
    pub max_picture_side: u32,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self { max_width: 4096, max_height: 4096, max_regions: 64, max_picture_base64: 8 << 20, max_picture_side: 4096 }
    }
}

/// Coordinates beyond this are refused as nonsense.
const MAX_COORD: f64 = 1e6;

/// Projection steps of a region that names none, and the most one layout may ask for in all
/// (each is a forward and backward pass of the generator).
pub const DEFAULT_PROJECT_STEPS: usize = 100;
/// Harmonisation steps of a region that names none.
pub const DEFAULT_HARMONIZE_STEPS: usize = 50;
pub const MAX_PROJECT_STEPS: usize = 1000;

#[derive(Debug, Clone)]
pub enum Background {
    /// RGB, 0 to 255.
    Color([u8; 3]),
    /// A client's picture at the canvas size, interleaved RGB, row-major.
    Image(Arc<Vec<u8>>),
    Generated {
        model: Arc<Model>,
        fit: Fit,
        params: GenerationParams,
    },
}

/// One region, ready to composite.
#[derive(Debug, Clone)]
pub struct Region {
    /// Where it came from: `regions[i]` or `label_map` component.
    pub source: String,
    pub class: Option<String>,
    pub model: Arc<Model>,
    /// The patch's rectangle, before clipping to the canvas.
    pub rect: Rect,
    /// `rect` clipped to the canvas.
    pub visible: Rect,
    /// Coverage over `visible`, row-major, in [0, 1].
    pub mask: Vec<f32>,
    pub z: f64,
    pub fit: Fit,
    pub blend: BlendMode,
    pub feather: f64,
    pub color_match: bool,
    /// Whether the patch's own alpha mattes it (the `matte` the layout asked for, resolved
    /// against the model).
    pub patch_matte: bool,
    /// Projection steps when the patch is generated from the likeness of the background
    /// picture under the region (see `Pipeline::project`).
    pub project_steps: Option<usize>,
    /// Harmonisation steps when the seed's w is nudged so the patch's border ring agrees
    /// with the background (see `Pipeline::harmonize`).
    pub harmonize_steps: Option<usize>,
    /// What harmonising did, once it has run.
    pub harmony: Option<Harmony>,
    pub params: GenerationParams,
}

/// The border-ring error of a harmonised region before and after: the mean difference, in
/// 8-bit levels, between the patch and the background over the ring just inside the
/// region's edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Harmony {
    pub ring_error_before: f64,
    pub ring_error_after: f64,
}

impl Region {
    /// What mattes the patch, as the answers name it: `patch` or `region`.
    pub fn matte_name(&self) -> &'static str {
        if self.patch_matte {
            "patch"
        } else {
            "region"
        }
    }
}

/// Where a generated patch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchSlot {
    Background,
    Region(usize),
}

/// All patches one model generates for a layout: where each goes. Their parameters live in
/// the plan, once (see [`RoutePlan::job_params`]).
#[derive(Debug, Clone)]
pub struct GenerationJob {
    pub model: Arc<Model>,
    pub slots: Vec<PatchSlot>,
}

#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub width: i64,
    pub height: i64,
    pub format: ImageFormat,
    pub quality: u8,
    pub background: Background,
    /// In paint order: by `z`, then by order in the layout.
    pub regions: Vec<Region>,
    pub jobs: Vec<GenerationJob>,
    /// What the layout's `detect` entries found, in their order.
    pub detections: Vec<Detected>,
    /// The detectors' share of routing.
    pub detect_time: Duration,
}

impl RoutePlan {
    /// The generation parameters of the patch for `slot`.
    pub fn params(&self, slot: PatchSlot) -> &GenerationParams {
        match (slot, &self.background) {
            (PatchSlot::Region(i), _) => &self.regions[i].params,
            (PatchSlot::Background, Background::Generated { params, .. }) => params,
            (PatchSlot::Background, _) => unreachable!("the router makes a background slot only for a generator"),
        }
    }

    /// The parameters of each of `job`'s patches, in slot order.
    pub fn job_params(&self, job: &GenerationJob) -> Vec<GenerationParams> {
        job.slots.iter().map(|&slot| self.params(slot).clone()).collect()
    }

    /// Whether any region is generated from a projection of the background picture.
    pub fn projects(&self) -> bool {
        self.regions.iter().any(|r| r.project_steps.is_some())
    }

    /// The latent-search work the plan asks for: projection and harmonisation steps, each
    /// weighted by its model's size ((resolution / 64)², at least 1), what admission counts.
    pub fn search_cost(&self) -> usize {
        self.regions
            .iter()
            .map(|r| {
                let res = r.model.spec.generator.img_resolution as usize;
                let weight = (res * res).div_ceil(64 * 64).max(1);
                (r.project_steps.unwrap_or(0) + r.harmonize_steps.unwrap_or(0)) * weight
            })
            .sum()
    }

    /// Whether any region is harmonised with its surroundings.
    pub fn harmonizes(&self) -> bool {
        self.regions.iter().any(|r| r.harmonize_steps.is_some())
    }
}

pub struct Router<'a> {
    pub registry: &'a ModelRegistry,
    pub limits: &'a RouterLimits,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> LayoutError {
    LayoutError::new(field, reason)
}

fn finite(field: &str, v: f64) -> Result<f64, LayoutError> {
    if v.is_finite() && v.abs() <= MAX_COORD {
        Ok(v)
    } else {
        Err(err(field, format!("{v} is not a finite number within ±{MAX_COORD}")))
    }
}

/// A seed for the `index`-th patch derived from the layout's seed (SplitMix64).
/// Detected regions derive their seeds from indices from here on, apart from the layout's.
const DETECTED_SEEDS: u64 = 1 << 32;

pub fn derived_seed(layout_seed: u64, index: u64) -> u32 {
    let mut z = layout_seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) as u32
}

impl Router<'_> {
    /// Validates `layout` and builds its plan.
    pub fn route(&self, layout: &Layout) -> Result<RoutePlan, LayoutError> {
        let (lim_w, lim_h) = (f64::from(self.limits.max_width), f64::from(self.limits.max_height));
        for (field, v, lim) in [("width", layout.width, lim_w), ("height", layout.height, lim_h)] {
            if !(v.is_finite() && v.fract() == 0.0 && v >= 1.0 && v <= lim) {
                return Err(err(field, format!("{v} is not a whole number from 1 to {lim}")));
            }
        }
        let canvas = Rect { x: 0, y: 0, w: layout.width as i64, h: layout.height as i64 };
        let quality = match layout.quality {
            Some(q) if !(q.is_finite() && (1.0..=100.0).contains(&q)) => {
                return Err(err("quality", format!("{q} is not between 1 and 100")))
            }
            Some(q) => q.round() as u8,
            None => 90,
        };
        if layout.regions.len() > self.limits.max_regions {
            return Err(err(
                "regions",
                format!("has {} regions; the limit is {}", layout.regions.len(), self.limits.max_regions),
            ));
        }
        if layout.regions.is_empty() && layout.label_map.is_none() && layout.background.is_none() {
            return Err(err("layout", "has no background, regions or label_map: nothing to draw"));
        }
        let background = match &layout.background {
            None => Background::Color([128, 128, 128]),
            Some(b) => match (&b.color, &b.image, &b.class, &b.model) {
                (Some(c), None, None, None) => Background::Color(label_map::parse_color("background.color", c)?),
                (None, Some(img), None, None) => {
                    let picture = picture::decode_png_or_jpeg("background.image", img, self.picture_limits())?;
                    Background::Image(Arc::new(picture::rgb_at(&picture, canvas.w as u32, canvas.h as u32)))
                }
                (Some(_), _, _, _) | (_, Some(_), _, _) => {
                    return Err(err("background", "is one of a `color`, an `image` or a generator (`class`/`model`)"))
                }
                (None, None, class, model) => {
                    let model = self.resolve("background", class, model)?;
                    let params =
                        self.params("background", &model, &b.generation(), derived_seed(layout.seed, u64::MAX))?;
                    Background::Generated { model, fit: b.fit.unwrap_or_default(), params }
                }
            },
        };
        // Label-map regions paint first, explicit regions over them, detected ones last.
        let mut regions = self.label_map_regions(layout, &canvas, layout.regions.len())?;
        let has_picture = matches!(background, Background::Image(_));
        for (i, r) in layout.regions.iter().enumerate() {
            regions.push(self.region(format!("regions[{i}]"), i as u64, r, &canvas, layout.seed, has_picture)?);
        }
        let picture = match &background {
            Background::Image(rgb) => Some(rgb.as_slice()),
            _ => None,
        };
        let found = self.detect(layout, picture, &canvas)?;
        for (k, (name, r)) in found.regions.into_iter().enumerate() {
            let seed_index = DETECTED_SEEDS + k as u64;
            regions.push(self.region(name, seed_index, &r, &canvas, layout.seed, has_picture)?);
        }
        let steps: usize = regions.iter().map(|r| r.project_steps.unwrap_or(0) + r.harmonize_steps.unwrap_or(0)).sum();
        if steps > MAX_PROJECT_STEPS {
            return Err(err(
                "regions",
                format!("ask for {steps} projection and harmonisation steps in all; the limit is {MAX_PROJECT_STEPS}"),
            ));
        }
        if regions.len() > self.limits.max_regions {
            return Err(err(
                "regions",
                format!("the layout makes {} regions; the limit is {}", regions.len(), self.limits.max_regions),
            ));
        }
        // Stable sort: ties keep layout order.
        regions.sort_by(|a, b| a.z.total_cmp(&b.z));

        let mut by_model: BTreeMap<String, GenerationJob> = BTreeMap::new();
        let mut add = |model: &Arc<Model>, slot: PatchSlot| {
            by_model
                .entry(model.name().to_string())
                .or_insert_with(|| GenerationJob { model: model.clone(), slots: vec![] })
                .slots
                .push(slot);
        };
        if let Background::Generated { model, .. } = &background {
            add(model, PatchSlot::Background);
        }
        for (i, r) in regions.iter().enumerate() {
            add(&r.model, PatchSlot::Region(i));
        }
        Ok(RoutePlan {
            width: canvas.w,
            height: canvas.h,
            format: layout.format,
            quality,
            background,
            regions,
            jobs: by_model.into_values().collect(),
            detections: found.detected,
            detect_time: found.took,
        })
    }
}
