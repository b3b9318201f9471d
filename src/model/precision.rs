//! The arithmetic a native generator's synthesis runs in. `auto` follows the checkpoint the
//! way NVIDIA's code does on a GPU (the blocks at the `num_fp16_res` highest resolutions in
//! float16, channels-last where `fp16_channels_last` asks, every other block in float32) and
//! stays in float32 on the CPU, where half precision is slower; `fp16` and `bf16` put every
//! synthesis block in that type; `fp32` none. The mapping network, truncation and the picture
//! that the toRGB layers add up stay in float32 throughout, as in NVIDIA's code.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use super::spec::GeneratorSettings;
use crate::error::UnknownChoice;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    /// The type the block at `res` computes in on `device`.
    pub fn block_kind(self, res: i64, settings: &GeneratorSettings, device: Device) -> Kind {
        match self {
            Self::Fp32 => Kind::Float,
            Self::Fp16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
            Self::Auto if device.is_cuda() && res >= settings.fp16_resolution() => Kind::Half,
            Self::Auto => Kind::Float,
        }
    }

    /// Whether the block at `res` keeps its features channels-last on `device`: on the CPU
    /// always (oneDNN's fast kernels want it), on CUDA for half-precision blocks when the
    /// checkpoint asks (`fp16_channels_last`, NVIDIA's default true).
    pub fn channels_last(self, res: i64, settings: &GeneratorSettings, device: Device) -> bool {
        match device {
            Device::Cpu => true,
            _ => {
                self.block_kind(res, settings, device) != Kind::Float
                    && settings.synthesis_kwargs.fp16_channels_last.unwrap_or(true)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "auto" => Ok(Self::Auto),
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(UnknownChoice { given: s.into(), choices: "auto, fp32, fp16, bf16" }),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for Precision {
    type Error = UnknownChoice;
    fn try_from(s: String) -> Result<Self, UnknownChoice> {
        s.parse()
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.name().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_f(num_fp16_res: i64) -> GeneratorSettings {
        let text = format!(
            "z_dim = 512\nc_dim = 0\nw_dim = 512\nimg_resolution = 1024\nimg_channels = 3\n\
             [synthesis_kwargs]\nnum_fp16_res = {num_fp16_res}\nconv_clamp = 256.0\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn auto_follows_nvidias_rule_on_cuda_and_stays_fp32_on_the_cpu() {
        let g = config_f(4);
        let gpu = Device::Cuda(0);
        let kinds: Vec<Kind> = g.block_resolutions().iter().map(|&r| Precision::Auto.block_kind(r, &g, gpu)).collect();
        // 4 to 64 px in float32, 128 to 1024 px (the four highest) in float16.
        assert_eq!(kinds[..5], [Kind::Float; 5]);
        assert_eq!(kinds[5..], [Kind::Half; 4]);
        assert!(Precision::Auto.channels_last(1024, &g, gpu) && !Precision::Auto.channels_last(64, &g, gpu));
        for r in g.block_resolutions() {
            assert_eq!(Precision::Auto.block_kind(r, &g, Device::Cpu), Kind::Float);
            assert_eq!(Precision::Auto.block_kind(r, &config_f(0), gpu), Kind::Float);
            assert_eq!(Precision::Bf16.block_kind(r, &g, Device::Cpu), Kind::BFloat16);
            assert_eq!(Precision::Fp16.block_kind(r, &config_f(0), gpu), Kind::Half);
            assert_eq!(Precision::Fp32.block_kind(r, &g, gpu), Kind::Float);
        }
        // NVIDIA's floor: never below 8 px.
        assert_eq!(config_f(9).fp16_resolution(), 8);
    }

    #[test]
    fn config_f_costs_about_284_gflop_a_picture() {
        let gflop = config_f(4).flops() / 1e9;
        assert!((280.0..290.0).contains(&gflop), "{gflop}");
    }

    #[test]
    fn names_parse_and_print_back() {
        for p in [Precision::Auto, Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert!("half".parse::<Precision>().unwrap_err().to_string().contains("fp16, bf16"));
    }
}
