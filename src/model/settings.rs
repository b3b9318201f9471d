//! NVIDIA's generator constructor arguments (`Generator`, `MappingNetwork`,
//! `SynthesisNetwork`), as `model.toml`'s `[generator]` table carries them, with NVIDIA's
//! defaults and the checks a checkpoint's settings must pass. Parsing only: no tensors.

use serde::{Deserialize, Serialize};

use super::ModelError;

pub(super) fn invalid(field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidSettings { field: field.to_string(), reason: reason.into() }
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

    /// Floating-point operations per picture: every convolution counted at its output
    /// resolution (2 per multiply-add), toRGB included, modulation and resampling left out.
    /// About 284 GFLOP for NVIDIA's 1024 px config-F.
    pub fn flops(&self) -> f64 {
        let k2 = (self.synthesis_kwargs.kernel_size * self.synthesis_kwargs.kernel_size) as f64;
        let mut macs = 0.0;
        for res in self.block_resolutions() {
            let (c, px) = (self.channels(res) as f64, (res * res) as f64);
            let cin = if res == 4 { c } else { self.channels(res / 2) as f64 };
            macs += cin * c * k2 * px + if res == 4 { 0.0 } else { c * c * k2 * px };
            if self.has_torgb(res) {
                macs += c * self.img_channels as f64 * px;
            }
        }
        2.0 * macs
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
