//! A detector model directory: `model.toml` with `kind = "detector"`, the classes it finds,
//! and its `[detector]` file. Today's format is `haar` (an OpenCV Haar cascade XML).

use std::path::Path;

use serde::Deserialize;

use super::haar::{self, Cascade, HaarSettings};
use super::Detection;
use crate::model::ModelError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    pub name: String,
    /// Always `detector`.
    pub kind: String,
    /// What it finds, one class per detector output class (a Haar cascade finds one).
    pub classes: Vec<String>,
    pub detector: DetectorSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    pub format: DetectorFormat,
    /// Relative to the model directory.
    pub file: String,
    /// Haar: the factor between pyramid levels (default 1.1).
    #[serde(default)]
    pub scale_factor: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorFormat {
    Haar,
}

pub struct Detector {
    pub spec: DetectorSpec,
    engine: Engine,
}

enum Engine {
    Haar(Cascade, HaarSettings),
}

/// Whether the directory's `model.toml` says `kind = "detector"`.
pub fn is_detector_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.get("kind").and_then(|k| k.as_str()) == Some("detector"))
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidSettings { field: field.into(), reason: reason.to_string() }
}

impl Detector {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let spec: DetectorSpec =
            toml::from_str(&text).map_err(|e| ModelError::Toml { path: path.clone(), message: e.to_string() })?;
        if spec.kind != "detector" {
            return Err(invalid("kind", format!("`{}` is not a detector", spec.kind)));
        }
        if spec.classes.is_empty() {
            return Err(invalid("classes", "a detector finds at least one class"));
        }
        let file = crate::model::spec::inside_dir("detector.file", &spec.detector.file, dir)?;
        let engine = match spec.detector.format {
            DetectorFormat::Haar => {
                if spec.classes.len() != 1 {
                    return Err(invalid("classes", "a Haar cascade finds exactly one class"));
                }
                let cascade = Cascade::load(&file).map_err(|e| invalid("detector.file", e))?;
                let scale_factor = spec.detector.scale_factor.unwrap_or(1.1);
                if !(1.01..=2.0).contains(&scale_factor) {
                    return Err(invalid("detector.scale_factor", "must be between 1.01 and 2"));
                }
                // Every group is reported with its score; callers choose by score.
                Engine::Haar(cascade, HaarSettings { scale_factor, min_neighbors: 0, min_size: 0 })
            }
        };
        Ok(Self { spec, engine })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What it finds in `rgb` (`w` x `h`, interleaved 8-bit), with each detection's class
    /// index into `spec.classes`, best first.
    pub fn detect(&self, rgb: &[u8], w: usize, h: usize) -> Vec<(Detection, usize)> {
        let mut found: Vec<(Detection, usize)> = match &self.engine {
            Engine::Haar(cascade, settings) => {
                cascade.detect(&haar::grey(rgb), w, h, settings).into_iter().map(|(d, _)| (d, 0)).collect()
            }
        };
        found.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
        found
    }
}
