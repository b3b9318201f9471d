//! `model.toml`: what a model directory declares about itself.
//!
//! The generator settings carry the names of NVIDIA's `Generator` constructor arguments, so a
//! checkpoint's `init_kwargs` transcribe directly; keys left out take NVIDIA's defaults. This
//! module parses and validates; it never touches weights or tensors.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

use super::ModelError;
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

/// NVIDIA's `Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
/// synthesis_kwargs)`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSettings {
    pub z_dim: i64,
    pub c_dim: i64,
    pub w_dim: i64,
    pub img_resolution: i64,
    pub img_channels: i64,
    #[serde(default)]
    pub mapping_kwargs: MappingSettings,
    #[serde(default)]
    pub synthesis_kwargs: SynthesisSettings,
}

/// NVIDIA's `MappingNetwork` keyword arguments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingSettings {
    pub num_layers: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_features: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_features: Option<i64>,
    pub activation: String,
    pub lr_multiplier: f64,
    /// Training only: read and ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w_avg_beta: Option<f64>,
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            num_layers: 8,
            embed_features: None,
            layer_features: None,
            activation: "lrelu".into(),
            lr_multiplier: 0.01,
            w_avg_beta: None,
        }
    }
}

/// NVIDIA's `SynthesisNetwork` keyword arguments, including those it hands on to its blocks
/// and layers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisSettings {
    pub channel_base: i64,
    pub channel_max: i64,
    /// Blocks at the N highest resolutions may run in half precision on CUDA.
    pub num_fp16_res: i64,
    pub architecture: Architecture,
    pub resample_filter: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_clamp: Option<f64>,
    /// Training/memory-layout only: read and ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp16_channels_last: Option<bool>,
    pub use_noise: bool,
    pub activation: String,
    pub kernel_size: i64,
}

impl Default for SynthesisSettings {
    fn default() -> Self {
        Self {
            channel_base: 32768,
            channel_max: 512,
            num_fp16_res: 0,
            architecture: Architecture::Skip,
            resample_filter: vec![1.0, 3.0, 3.0, 1.0],
            conv_clamp: None,
            fp16_channels_last: None,
            use_noise: true,
            activation: "lrelu".into(),
            kernel_size: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Orig,
    Skip,
    Resnet,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// Activation functions of NVIDIA's `bias_act`, with their default gains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Linear,
    Relu,
    Lrelu,
    Tanh,
    Sigmoid,
    Elu,
    Selu,
    Softplus,
    Swish,
}

impl Activation {
    pub fn parse(name: &str, field: &str) -> Result<Self, ModelError> {
        Ok(match name {
            "linear" => Self::Linear,
            "relu" => Self::Relu,
            "lrelu" => Self::Lrelu,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "elu" => Self::Elu,
            "selu" => Self::Selu,
            "softplus" => Self::Softplus,
            "swish" => Self::Swish,
            _ => {
                return Err(invalid(
                    field,
                    format!(
                    "`{name}` is not an activation (linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish)"
                ),
                ))
            }
        })
    }

    pub fn default_gain(self) -> f64 {
        match self {
            Self::Relu | Self::Lrelu | Self::Swish => std::f64::consts::SQRT_2,
            _ => 1.0,
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidSettings { field: field.to_string(), reason: reason.into() }
}

impl GeneratorSettings {
    pub fn log2_resolution(&self) -> i64 {
        63 - i64::from((self.img_resolution as u64).leading_zeros())
    }

    /// Block resolutions, 4 up to `img_resolution`.
    pub fn block_resolutions(&self) -> Vec<i64> {
        (2..=self.log2_resolution()).map(|l| 1i64 << l).collect()
    }

    pub fn channels(&self, res: i64) -> i64 {
        let s = &self.synthesis_kwargs;
        (s.channel_base / res).min(s.channel_max)
    }

    /// Whether the block at `res` has a toRGB layer.
    pub fn has_torgb(&self, res: i64) -> bool {
        res == self.img_resolution || self.synthesis_kwargs.architecture == Architecture::Skip
    }

    pub fn num_ws(&self) -> i64 {
        let convs: i64 = self.block_resolutions().iter().map(|&r| if r == 4 { 1 } else { 2 }).sum();
        convs + 1
    }

    /// Lowest resolution whose block may run in fp16 (NVIDIA's rule).
    pub fn fp16_resolution(&self) -> i64 {
        let n = self.synthesis_kwargs.num_fp16_res;
        if n <= 0 {
            return i64::MAX;
        }
        (1i64 << (self.log2_resolution() + 1 - n).max(0)).max(8)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let res = self.img_resolution;
        if !(4..=8192).contains(&res) || res & (res - 1) != 0 {
            return Err(invalid("generator.img_resolution", format!("{res} is not a power of two from 4 to 8192")));
        }
        if !(1..=4).contains(&self.img_channels) || self.img_channels == 2 {
            return Err(invalid("generator.img_channels", format!("{} is not 1, 3 or 4", self.img_channels)));
        }
        for (field, v) in [("generator.z_dim", self.z_dim), ("generator.w_dim", self.w_dim)] {
            if !(1..=65536).contains(&v) {
                return Err(invalid(field, format!("{v} is not between 1 and 65536")));
            }
        }
        if !(0..=65536).contains(&self.c_dim) {
            return Err(invalid("generator.c_dim", format!("{} is not between 0 and 65536", self.c_dim)));
        }
        let m = &self.mapping_kwargs;
        if !(1..=64).contains(&m.num_layers) {
            return Err(invalid(
                "generator.mapping_kwargs.num_layers",
                format!("{} is not between 1 and 64", m.num_layers),
            ));
        }
        for (field, v) in [
            ("generator.mapping_kwargs.embed_features", m.embed_features),
            ("generator.mapping_kwargs.layer_features", m.layer_features),
        ] {
            if let Some(v) = v {
                if !(1..=65536).contains(&v) {
                    return Err(invalid(field, format!("{v} is not between 1 and 65536")));
                }
            }
        }
        if !(m.lr_multiplier.is_finite() && m.lr_multiplier > 0.0) {
            return Err(invalid("generator.mapping_kwargs.lr_multiplier", "must be a positive number"));
        }
        Activation::parse(&m.activation, "generator.mapping_kwargs.activation")?;
        let s = &self.synthesis_kwargs;
        Activation::parse(&s.activation, "generator.synthesis_kwargs.activation")?;
        if s.channel_max < 1 || s.channel_base < res {
            return Err(invalid(
                "generator.synthesis_kwargs.channel_base",
                format!(
                    "channel_base {} and channel_max {} leave a block without channels",
                    s.channel_base, s.channel_max
                ),
            ));
        }
        if s.kernel_size < 1 || s.kernel_size % 2 == 0 || s.kernel_size > 15 {
            return Err(invalid(
                "generator.synthesis_kwargs.kernel_size",
                format!("{} is not an odd size up to 15", s.kernel_size),
            ));
        }
        let taps = s.resample_filter.len();
        let sum: f64 = s.resample_filter.iter().sum();
        if !(2..=32).contains(&taps) || !sum.is_finite() || sum == 0.0 {
            return Err(invalid(
                "generator.synthesis_kwargs.resample_filter",
                "needs 2 to 32 finite taps with a non-zero sum",
            ));
        }
        if let Some(c) = s.conv_clamp {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid("generator.synthesis_kwargs.conv_clamp", "must be a positive number"));
            }
        }
        Ok(())
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
    fn fp16_resolution_follows_nvidia() {
        let mut spec = parse(BASE).unwrap();
        spec.generator.img_resolution = 256;
        spec.generator.synthesis_kwargs.num_fp16_res = 4;
        assert_eq!(spec.generator.fp16_resolution(), 32);
    }
}
