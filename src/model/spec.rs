//! `model.toml`: what a model directory declares about itself.
//!
//! The generator settings carry the names of NVIDIA's `Generator` constructor arguments, so a
//! checkpoint's `init_kwargs` transcribe directly; keys left out take NVIDIA's defaults. This
//! module parses and validates; it never touches weights or tensors.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

use super::settings::invalid;
pub use super::settings::{Activation, Architecture, GeneratorSettings, MappingSettings, SynthesisSettings};
use super::{ModelError, Precision};
use crate::error::UnknownChoice;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    /// The image components this model serves (`face`, `hand`, ...).
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub kind: ModelKind,
    /// Weights file, relative to the model directory.
    #[serde(default = "default_weights")]
    pub weights: String,
    pub generator: GeneratorSettings,
    #[serde(default)]
    pub defaults: GenerationDefaults,
    /// Dynamic batching for this model; unset keys take the server's defaults.
    #[serde(default)]
    pub batching: BatchingOverride,
    /// For `kind = "torchscript"`.
    pub torchscript: Option<TorchScriptFiles>,
    /// The arithmetic of a native generator's synthesis (see `model::precision`).
    #[serde(default)]
    pub precision: Precision,
    /// The fourth output channel is the subject's coverage (alpha, in generator units like
    /// the colour): the compositor then mattes the patch by it (see `compositor::matte`).
    #[serde(default)]
    pub alpha: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingOverride {
    pub max_batch: Option<usize>,
    pub max_wait_ms: Option<u64>,
}

fn default_weights() -> String {
    "weights.safetensors".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Stylegan2,
    /// `mapping.pt` + `synthesis.pt` by the TorchScript contract (see `model::torchscript`).
    Torchscript,
}

/// The files and sizes of a TorchScript model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptFiles {
    #[serde(default = "default_mapping")]
    pub mapping: String,
    #[serde(default = "default_synthesis")]
    pub synthesis: String,
    /// ws the mapping produces (NVIDIA's `G.num_ws`).
    pub num_ws: i64,
    /// The one batch size the modules accept, for modules traced at a fixed size (NVIDIA's
    /// StyleGAN3 bakes its batch size into a trace); mixgan then runs them in chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
}

fn default_mapping() -> String {
    "mapping.pt".into()
}

fn default_synthesis() -> String {
    "synthesis.pt".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMode {
    #[default]
    Const,
    Random,
    None,
}

impl std::str::FromStr for NoiseMode {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "const" => Ok(Self::Const),
            "random" => Ok(Self::Random),
            "none" => Ok(Self::None),
            _ => Err(UnknownChoice { given: s.into(), choices: "const, random, none (noise modes)" }),
        }
    }
}

/// Generation parameters a model uses when a request leaves them out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationDefaults {
    pub trunc: f64,
    pub trunc_cutoff: Option<usize>,
    pub noise_mode: NoiseMode,
    pub class_index: Option<usize>,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        Self { trunc: 1.0, trunc_cutoff: None, noise_mode: NoiseMode::Const, class_index: None }
    }
}

impl ModelSpec {
    /// Reads and validates `dir/model.toml`.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        Self::parse(&text, &path)
    }

    /// The settings in `text`, read from `path` (which errors name), checked.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let spec: ModelSpec = toml::from_str(text)
            .map_err(|e| ModelError::Toml { path: path.into(), message: e.message().to_string() })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        self.generator.validate()?;
        let d = &self.defaults;
        if !d.trunc.is_finite() {
            return Err(invalid("defaults.trunc", "must be a finite number"));
        }
        if self.batching.max_batch == Some(0) {
            return Err(invalid("batching.max_batch", "must be above 0"));
        }
        if let Some(k) = d.class_index {
            if k as i64 >= self.generator.c_dim {
                return Err(invalid(
                    "defaults.class_index",
                    format!("{k} is not below c_dim {}", self.generator.c_dim),
                ));
            }
        }
        self.weights_path(Path::new(""))?;
        match (self.kind, &self.torchscript) {
            (ModelKind::Torchscript, None) => {
                return Err(invalid("torchscript", "kind = \"torchscript\" needs a [torchscript] table"))
            }
            (ModelKind::Torchscript, Some(t)) => {
                inside_dir("torchscript.mapping", &t.mapping, Path::new(""))?;
                inside_dir("torchscript.synthesis", &t.synthesis, Path::new(""))?;
                if !(1..=64).contains(&t.num_ws) {
                    return Err(invalid("torchscript.num_ws", format!("{} is not between 1 and 64", t.num_ws)));
                }
                if let Some(b) = t.batch.filter(|b| !(1..=256).contains(b)) {
                    return Err(invalid("torchscript.batch", format!("{b} is not between 1 and 256")));
                }
            }
            (ModelKind::Stylegan2, Some(_)) => {
                return Err(invalid("torchscript", "is only for kind = \"torchscript\""))
            }
            (ModelKind::Stylegan2, None) => {}
        }
        if self.alpha && self.generator.img_channels != 4 {
            return Err(invalid(
                "alpha",
                format!("needs generator.img_channels = 4 (colour and alpha), not {}", self.generator.img_channels),
            ));
        }
        if self.kind == ModelKind::Torchscript && self.precision != Precision::Auto {
            return Err(invalid("precision", "is for native generators; a TorchScript model runs as it was exported"));
        }
        Ok(())
    }

    /// The weights file inside `dir`; a path that leaves the directory is refused.
    pub fn weights_path(&self, dir: &Path) -> Result<PathBuf, ModelError> {
        inside_dir("weights", &self.weights, dir)
    }

    /// ws per sample.
    pub fn num_ws(&self) -> i64 {
        match &self.torchscript {
            Some(t) => t.num_ws,
            None => self.generator.num_ws(),
        }
    }
}

/// `name` joined to `dir`, refused when it would leave the directory.
pub fn inside_dir(field: &str, name: &str, dir: &Path) -> Result<PathBuf, ModelError> {
    let rel = Path::new(name);
    let inside = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(invalid(field, format!("`{name}` must be a file name inside the model directory")));
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelSpec, ModelError> {
        ModelSpec::parse(text, Path::new("model.toml"))
    }

    const BASE: &str =
        "name = \"face\"\n[generator]\nz_dim = 8\nc_dim = 0\nw_dim = 8\nimg_resolution = 16\nimg_channels = 3\n";

    #[test]
    fn nvidia_defaults_fill_missing_keys() {
        let spec = parse(BASE).unwrap();
        assert_eq!(spec.generator.mapping_kwargs.num_layers, 8);
        assert_eq!(spec.generator.synthesis_kwargs.channel_base, 32768);
        assert_eq!(spec.generator.synthesis_kwargs.architecture, Architecture::Skip);
        assert_eq!(spec.generator.num_ws(), 6); // b4: 1 conv, b8 and b16: 2 each, plus the last toRGB
        assert_eq!(spec.weights, "weights.safetensors");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&format!("{BASE}[generator.synthesis_kwargs]\nchanel_base = 4\n")).unwrap_err().to_string();
        assert!(err.contains("chanel_base"), "{err}");
    }

    #[test]
    fn training_only_keys_are_accepted() {
        parse(&format!("{BASE}[generator.mapping_kwargs]\nw_avg_beta = 0.995\n[generator.synthesis_kwargs]\nfp16_channels_last = false\nnum_fp16_res = 2\n")).unwrap();
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = parse(&BASE.replace("img_resolution = 16", "img_resolution = 48")).unwrap_err().to_string();
        assert!(err.contains("img_resolution"), "{err}");
        let err =
            parse(&format!("{BASE}[generator.synthesis_kwargs]\narchitecture = \"wide\"\n")).unwrap_err().to_string();
        assert!(err.contains("architecture") || err.contains("wide"), "{err}");
    }

    #[test]
    fn weights_may_not_leave_the_directory() {
        for bad in ["../x.safetensors", "/etc/passwd", ""] {
            let err = parse(&format!("weights = \"{bad}\"\n{BASE}")).unwrap_err().to_string();
            assert!(err.contains("weights"), "{err}");
        }
    }

    #[test]
    fn alpha_needs_a_fourth_channel() {
        let err = parse(&format!("alpha = true\n{BASE}")).unwrap_err().to_string();
        assert!(err.contains("alpha") && err.contains("img_channels"), "{err}");
        let spec = parse(&format!("alpha = true\n{}", BASE.replace("img_channels = 3", "img_channels = 4"))).unwrap();
        assert!(spec.alpha);
        assert!(!parse(BASE).unwrap().alpha);
    }

    #[test]
    fn fp16_resolution_follows_nvidia() {
        let mut spec = parse(BASE).unwrap();
        spec.generator.img_resolution = 256;
        spec.generator.synthesis_kwargs.num_fp16_res = 4;
        assert_eq!(spec.generator.fp16_resolution(), 32);
    }
}
