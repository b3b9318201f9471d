//! The layout a client sends: a canvas, an optional background and regions (or a label map),
//! as JSON. This module only parses into typed structs (unknown keys are errors); what the
//! values mean and whether they make sense is the router's business.

use serde::Deserialize;

use crate::error::LayoutError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    /// Seeds regions that name none.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub format: ImageFormat,
    /// JPEG quality, 1 to 100 (default 90).
    pub quality: Option<f64>,
    pub background: Option<BackgroundSpec>,
    #[serde(default)]
    pub regions: Vec<RegionSpec>,
    pub label_map: Option<LabelMapSpec>,
    /// Regions found by detectors in the background picture.
    #[serde(default)]
    pub detect: Vec<DetectSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scale to cover the region, centre crop.
    #[default]
    Cover,
    /// Scale to fit inside the region; the rest stays transparent.
    Contain,
    /// Scale each axis to the region.
    Stretch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlendMode {
    #[default]
    Laplacian,
    Poisson,
    Alpha,
    None,
}

/// Which coverage a region's patch is blended under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matte {
    /// The patch's own alpha where its model draws one, else the region's shape.
    #[default]
    Auto,
    /// The region's shape times the patch's alpha (the model must draw alpha).
    Patch,
    /// The region's shape alone: the patch's backdrop shows inside it.
    Region,
}

/// Generation parameters, the same as `mixgan generate`'s options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    pub seed: Option<u64>,
    pub trunc: Option<f64>,
    pub trunc_cutoff: Option<u64>,
    pub class_index: Option<u64>,
    pub noise_mode: Option<crate::model::NoiseMode>,
    pub mix_seed: Option<u64>,
    pub mix_from: Option<u64>,
}

// The generation fields are repeated in `BackgroundSpec` and `RegionSpec` rather than
// flattened from `GenerationSpec`: serde cannot combine `flatten` with
// `deny_unknown_fields`, and unknown keys must stay errors.

/// A generator over the whole canvas, a solid colour, or an existing picture to repair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundSpec {
    pub color: Option<String>,
    /// Base64 PNG or JPEG; scaled (bilinear) to the canvas when its size differs.
    pub image: Option<String>,
    pub class: Option<String>,
    pub model: Option<String>,
    pub fit: Option<Fit>,
    pub seed: Option<u64>,
    pub trunc: Option<f64>,
    pub trunc_cutoff: Option<u64>,
    pub class_index: Option<u64>,
    pub noise_mode: Option<crate::model::NoiseMode>,
    pub mix_seed: Option<u64>,
    pub mix_from: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub class: Option<String>,
    pub model: Option<String>,
    #[serde(rename = "box")]
    pub rect: Option<Vec<f64>>,
    pub ellipse: Option<Vec<f64>>,
    pub polygon: Option<Vec<Vec<f64>>>,
    /// Base64 PNG, grey or alpha, placed on `box`.
    pub mask: Option<String>,
    pub z: Option<f64>,
    pub fit: Option<Fit>,
    pub blend: Option<BlendMode>,
    pub feather: Option<f64>,
    #[serde(default)]
    pub color_match: bool,
    pub matte: Option<Matte>,
    /// Regenerate from the likeness of what the background picture shows here.
    #[serde(default)]
    pub project: bool,
    pub project_steps: Option<f64>,
    /// Nudge the seed's w so the patch's border agrees with the background around it.
    #[serde(default)]
    pub harmonize: bool,
    pub harmonize_steps: Option<f64>,
    pub seed: Option<u64>,
    pub trunc: Option<f64>,
    pub trunc_cutoff: Option<u64>,
    pub class_index: Option<u64>,
    pub noise_mode: Option<crate::model::NoiseMode>,
    pub mix_seed: Option<u64>,
    pub mix_from: Option<u64>,
}

/// A segmentation map: each palette colour's connected areas become regions of that class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMapSpec {
    /// Base64 PNG; scaled (nearest) to the canvas when its size differs.
    pub png: String,
    /// Class name to `#rrggbb`.
    pub palette: std::collections::BTreeMap<String, String>,
    /// Components smaller than this many canvas pixels are dropped (default 64).
    pub min_area: Option<f64>,
    pub blend: Option<BlendMode>,
    pub feather: Option<f64>,
    #[serde(default)]
    pub color_match: bool,
    pub matte: Option<Matte>,
}

impl BackgroundSpec {
    pub fn generation(&self) -> GenerationSpec {
        GenerationSpec {
            seed: self.seed,
            trunc: self.trunc,
            trunc_cutoff: self.trunc_cutoff,
            class_index: self.class_index,
            noise_mode: self.noise_mode,
            mix_seed: self.mix_seed,
            mix_from: self.mix_from,
        }
    }
}

impl RegionSpec {
    pub fn generation(&self) -> GenerationSpec {
        GenerationSpec {
            seed: self.seed,
            trunc: self.trunc,
            trunc_cutoff: self.trunc_cutoff,
            class_index: self.class_index,
            noise_mode: self.noise_mode,
            mix_seed: self.mix_seed,
            mix_from: self.mix_from,
        }
    }
}

impl Layout {
    /// Parses a layout; syntax errors come back with their position, wrong values and
    /// unknown keys with the JSON path of the field (`regions[2].blend`).
    pub fn parse(bytes: &[u8]) -> Result<Self, LayoutError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    LayoutError::NotJson { reason: format!("invalid JSON: {inner}") }
                }
                _ if path == "." => LayoutError::new("layout", inner.to_string()),
                _ => LayoutError::new(path, inner.to_string()),
            }
        })
    }
}

/// Find things of `class` in the background picture and make each a region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSpec {
    pub class: String,
    /// A detector by name; else the one finding `class`.
    pub detector: Option<String>,
    /// Detections scoring less are ignored (default 0.5).
    pub min_score: Option<f64>,
    /// Bounds on a detection's longer side, in canvas pixels.
    pub min_size: Option<f64>,
    pub max_size: Option<f64>,
    /// Keep the first `top_k` in `order`.
    pub top_k: Option<f64>,
    #[serde(default)]
    pub order: DetectOrder,
    #[serde(default)]
    pub shape: DetectShape,
    /// Grow each box by this fraction of its size (default 0.2), then by `padding` pixels.
    pub dilate: Option<f64>,
    pub padding: Option<f64>,
    /// Region settings for every detection (any region field but the shape ones).
    #[serde(default)]
    pub region: serde_json::Map<String, serde_json::Value>,
    /// Settings over `region`'s for single detections, by their index in `order`.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectOrder {
    /// Best score first.
    #[default]
    Score,
    /// Largest box first.
    Largest,
    LeftToRight,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectShape {
    /// The ellipse inscribed in the grown box.
    #[default]
    Ellipse,
    Box,
}
