//! A detector model directory: `model.toml` with `kind = "detector"`, the classes it finds,
//! and its `[detector]` file: `haar` (an OpenCV Haar cascade XML) or `torchscript` (a module
//! by the contract in docs/models.md: RGB in [0, 1] as [1, 3, H, W] in; boxes [N, 4] as x, y,
//! w, h in input pixels, scores [N] and class indices [N] out).

use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;
use tch::{CModule, IValue, Kind, Tensor};

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
    /// TorchScript: the picture is scaled so its longer side is this many pixels first
    /// (default: as it is); boxes are scaled back.
    #[serde(default)]
    pub input_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorFormat {
    Haar,
    Torchscript,
}

pub struct Detector {
    pub spec: DetectorSpec,
    engine: Engine,
}

enum Engine {
    Haar(Cascade, HaarSettings),
    /// libtorch modules are not `Sync`; one call at a time.
    Script(Mutex<CModule>),
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
            DetectorFormat::Torchscript => {
                if spec.detector.input_size.is_some_and(|s| !(16..=4096).contains(&s)) {
                    return Err(invalid("detector.input_size", "must be between 16 and 4096"));
                }
                Engine::Script(Mutex::new(crate::model::torchscript::load(&file, tch::Device::Cpu)?))
            }
        };
        Ok(Self { spec, engine })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What it finds in `rgb` (`w` x `h`, interleaved 8-bit), with each detection's class
    /// index into `spec.classes`, best first.
    pub fn detect(&self, rgb: &[u8], w: usize, h: usize) -> Result<Vec<(Detection, usize)>, ModelError> {
        let mut found: Vec<(Detection, usize)> = match &self.engine {
            Engine::Haar(cascade, settings) => {
                cascade.detect(&haar::grey(rgb), w, h, settings).into_iter().map(|(d, _)| (d, 0)).collect()
            }
            Engine::Script(module) => {
                let module = module.lock().unwrap_or_else(|e| e.into_inner());
                self.run_script(&module, rgb, w, h)?
            }
        };
        found.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
        Ok(found)
    }

    fn run_script(
        &self,
        module: &CModule,
        rgb: &[u8],
        w: usize,
        h: usize,
    ) -> Result<Vec<(Detection, usize)>, ModelError> {
        let _guard = tch::no_grad_guard();
        let picture = Tensor::from_slice(rgb)
            .f_view([h as i64, w as i64, 3])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?;
        let (input, scale) = match self.spec.detector.input_size {
            Some(size) if size as usize != w.max(h) => {
                let s = f64::from(size) / w.max(h) as f64;
                let (sw, sh) = (((w as f64 * s).round() as i64).max(1), ((h as f64 * s).round() as i64).max(1));
                (picture.f_upsample_bilinear2d([sh, sw], false, None, None)?, s)
            }
            _ => (picture, 1.0),
        };
        let contract = |why: &str| {
            invalid("detector.file", format!("the module broke the detector contract: {why} (see docs/models.md)"))
        };
        let IValue::Tuple(out) = module.forward_is(&[IValue::Tensor(input)])? else {
            return Err(contract("it must return a tuple (boxes, scores, classes)"));
        };
        let [IValue::Tensor(boxes), IValue::Tensor(scores), IValue::Tensor(classes)] = &out[..] else {
            return Err(contract("it must return three tensors (boxes, scores, classes)"));
        };
        let n = scores.size().first().copied().unwrap_or(0);
        if boxes.size() != [n, 4] || classes.size() != [n] || scores.dim() != 1 {
            return Err(contract("boxes must be [N, 4], scores [N] and classes [N]"));
        }
        let boxes = Vec::<f64>::try_from(boxes.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)?;
        let scores = Vec::<f64>::try_from(scores.f_to_kind(Kind::Double)?)?;
        let classes = Vec::<i64>::try_from(classes.f_to_kind(Kind::Int64)?)?;
        let mut found = Vec::new();
        for (k, (&score, &class)) in scores.iter().zip(&classes).enumerate() {
            let b = &boxes[k * 4..k * 4 + 4];
            if class < 0
                || class as usize >= self.spec.classes.len()
                || !score.is_finite()
                || b.iter().any(|v| !v.is_finite())
            {
                return Err(contract("a class index out of range, or a score or box that is not finite"));
            }
            let d = Detection {
                x: b[0] / scale,
                y: b[1] / scale,
                w: b[2] / scale,
                h: b[3] / scale,
                score: score.clamp(0.0, 1.0),
            };
            found.push((d, class as usize));
        }
        Ok(found)
    }
}
