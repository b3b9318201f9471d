//! The service configuration: one struct, filled from defaults, then a TOML file, then
//! `MIXGAN_*` environment variables, then command-line flags (each overriding the last, in
//! one merge). Every value is parsed and checked when it loads, so a bad setting stops the
//! server before it listens, with the setting's name and where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::UnknownChoice;
use crate::model::{DeviceChoice, Precision};
use crate::pipeline::CompositeOn;
use crate::router::RouterLimits;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(UnknownChoice { given: s.into(), choices: "text, json" }),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on; loopback unless you mean otherwise.
    pub addr: String,
    /// Folder of model directories.
    pub models: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    pub device: DeviceChoice,
    /// auto, fp32, fp16 or bf16 for every native model; unset, each model's own setting.
    pub precision: Option<Precision>,
    /// Bearer token required on /v1/*; none = open.
    pub api_key: Option<String>,
    /// Origins allowed by CORS (`*` for any); empty = CORS off.
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// What a layout may ask for (`max_width`, `max_height`, `max_regions`,
    /// `max_picture_base64`, `max_picture_side`), as top-level settings.
    #[serde(flatten)]
    pub limits: RouterLimits,
    /// A request that takes longer is answered 504.
    pub request_timeout_ms: u64,
    /// Patches waiting per model before new requests get 503.
    pub queue_capacity: usize,
    /// Compose requests served at once; more get 503 at once.
    pub max_in_flight: usize,
    /// Latent-search work admitted at once: projection and harmonisation steps, each weighted
    /// by its model's size ((resolution / 64)²). A request that would pass it gets 503 with
    /// Retry-After; requests without searches never wait for it. 0: 1000 for every two CPU
    /// slots. Whatever the budget, searching requests take at most half the CPU slots.
    pub max_search_in_flight: usize,
    /// Default largest batch per model (a model.toml `[batching]` table overrides).
    pub max_batch: usize,
    /// Default longest wait for a batch to fill, in milliseconds. 0: a worker takes what is
    /// queued and goes; under load the patches queued while a batch runs make the next one,
    /// and a lone request does not wait for company (measured: docs/performance.md).
    pub max_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub grace_period_s: u64,
    /// Generations per model before the server reports ready.
    pub warmup_iterations: usize,
    /// libtorch intra-op threads per task (0: 1, since tasks run side by side instead).
    pub torch_threads: usize,
    /// CPU-heavy tasks (generator batches, routing, compositing) at once (0: one per core).
    pub cpu_slots: usize,
    /// Where canvases are composited: auto (the CPU for canvases up to 1024 x 1024, the
    /// generators' device above), device, cpu, or batched (the generators' device, one worker
    /// painting the ready canvases of one layout geometry together).
    pub composite_on: CompositeOn,
    /// With `composite_on = batched`, the most canvases painted in one batch (their wait is
    /// `max_wait_ms`).
    pub canvas_batch: usize,
    /// Let cuDNN time its convolution algorithms once per shape and keep the fastest (CUDA only).
    pub cudnn_benchmark: bool,
    /// The generator's own CPU passes for a layer's epilogue, style scaling and toRGB (off,
    /// libtorch's tensor operations do them).
    pub cpu_kernels: bool,
    /// The generator's own CUDA kernels for its bytes-bound passes (CUDA only; off, libtorch's
    /// tensor operations do them).
    pub cuda_kernels: bool,
    /// Record each generator's pass per batch size as a CUDA graph and replay it (CUDA only).
    pub cuda_graphs: bool,
    /// Host threads waiting on the GPU sleep instead of spinning on a core (CUDA only).
    pub cuda_blocking_sync: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            models: "models".into(),
            device: DeviceChoice::Auto,
            precision: None,
            api_key: None,
            cors_origins: vec![],
            log_format: LogFormat::Text,
            max_body_bytes: 32 << 20,
            limits: RouterLimits::default(),
            request_timeout_ms: 30_000,
            queue_capacity: 64,
            max_in_flight: 32,
            max_search_in_flight: 0,
            max_batch: 8,
            max_wait_ms: 0,
            grace_period_s: 30,
            warmup_iterations: 2,
            torch_threads: 0,
            cpu_slots: 0,
            composite_on: CompositeOn::Auto,
            canvas_batch: 16,
            cudnn_benchmark: true,
            cpu_kernels: true,
            cuda_kernels: true,
            cuda_graphs: true,
            cuda_blocking_sync: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Settings that are unset by default (so the serialised defaults leave them out).
const UNSET_BY_DEFAULT: [&str; 2] = ["api_key", "precision"];

/// Settings given as a table, with where each came from (a file, a variable, a flag).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    table: toml::Table,
    origins: BTreeMap<String, String>,
}

impl Overrides {
    /// `value` for setting `key`, given by `origin`.
    pub fn set(&mut self, key: &str, value: toml::Value, origin: impl Into<String>) {
        self.table.insert(key.into(), value);
        self.origins.insert(key.into(), origin.into());
    }

    /// Every key of `table`, given by `origin` (a serialised set of command-line flags, say).
    pub fn set_all(&mut self, table: toml::Table, origin: impl Fn(&str) -> String) {
        for (key, value) in table {
            let from = origin(&key);
            self.set(&key, value, from);
        }
    }

    fn merge(&mut self, other: Overrides) {
        self.table.extend(other.table);
        self.origins.extend(other.origins);
    }
}

impl Config {
    /// The process-wide generator switches these settings ask for.
    pub fn switches(&self) -> crate::model::device::Switches {
        crate::model::device::Switches {
            cpu_kernels: self.cpu_kernels,
            cudnn_benchmark: self.cudnn_benchmark,
            kernels: self.cuda_kernels,
            graphs: self.cuda_graphs,
            blocking_sync: self.cuda_blocking_sync,
        }
    }

    /// Defaults, then `file`, then the `MIXGAN_<KEY>` variables among `env` whose key is a
    /// setting (other `MIXGAN_*` variables belong to other tools and are left alone), then
    /// `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: Overrides,
    ) -> Result<Self, ConfigError> {
        let known = toml::Table::try_from(Config::default()).expect("the defaults serialise");
        let mut given = Overrides::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
            let table = toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::Invalid { origin: path.display().to_string(), message: e.to_string() })?;
            given.set_all(table, |_| path.display().to_string());
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("MIXGAN_").map(str::to_lowercase) else { continue };
            if !known.contains_key(&key) && !UNSET_BY_DEFAULT.contains(&key.as_str()) {
                continue;
            }
            let parsed = match known.get(&key) {
                Some(toml::Value::Array(_)) => toml::Value::Array(
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.to_string().into()).collect(),
                ),
                Some(toml::Value::Integer(_)) => {
                    value.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| ConfigError::Invalid {
                        origin: name.clone(),
                        message: format!("`{value}` is not a whole number"),
                    })?
                }
                Some(toml::Value::Boolean(_)) => match value.trim().to_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                    "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Invalid {
                            origin: name.clone(),
                            message: format!("`{value}` is not true or false"),
                        })
                    }
                },
                _ => toml::Value::String(value),
            };
            given.set(&key, parsed, name);
        }
        given.merge(flags);
        for (key, origin) in &given.origins {
            if !known.contains_key(key) && !UNSET_BY_DEFAULT.contains(&key.as_str()) {
                return Err(ConfigError::Invalid {
                    origin: origin.clone(),
                    message: format!("unknown setting `{key}`"),
                });
            }
        }
        let config = Self::from_table(given.table.clone()).map_err(|e| {
            // Name the first setting that fails on its own over the defaults.
            let origin = given
                .table
                .iter()
                .find(|(k, v)| Self::from_table(toml::Table::from_iter([((*k).clone(), (*v).clone())])).is_err())
                .and_then(|(k, _)| given.origins.get(k).cloned())
                .unwrap_or_else(|| "settings".into());
            ConfigError::Invalid { origin, message: e.to_string().trim().replace('\n', " ") }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid {
            origin: given.origins.get(key).cloned().unwrap_or_else(|| "default".into()),
            message,
        })?;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Self, toml::de::Error> {
        toml::Value::Table(table).try_into()
    }

    /// The first setting out of range: its key and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_width", u64::from(self.limits.max_width)),
            ("max_height", u64::from(self.limits.max_height)),
            ("max_regions", self.limits.max_regions as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("queue_capacity", self.queue_capacity as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_batch", self.max_batch as u64),
            ("canvas_batch", self.canvas_batch as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err((name, format!("`{name}` must be above 0")));
            }
        }
        if self.api_key.as_deref() == Some("") {
            return Err(("api_key", "`api_key` is empty; leave it out to serve without auth".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(pairs), Overrides::default())
    }

    #[test]
    fn file_then_environment_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixgan.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:9000\"\nmax_batch = 4\nmax_width = 640\n").unwrap();
        let mut flags = Overrides::default();
        flags.set("device", "cpu".into(), "--device");
        let vars = env(&[("MIXGAN_MAX_BATCH", "16"), ("MIXGAN_PYTHON", "/x"), ("MIXGAN_CORS_ORIGINS", "a, b")]);
        let c = Config::load(Some(&path), vars, flags).unwrap();
        assert_eq!(c.addr, "127.0.0.1:9000");
        assert_eq!(c.max_batch, 16);
        assert_eq!(c.cors_origins, vec!["a", "b"]);
        assert_eq!(c.max_wait_ms, 0);
        assert_eq!(c.limits.max_width, 640);
        assert_eq!(c.limits.max_height, RouterLimits::default().max_height);
        assert_eq!(c.device, DeviceChoice::Cpu);
    }

    #[test]
    fn bad_settings_name_themselves_and_where_they_came_from() {
        let err = load_env(&[("MIXGAN_MAX_BATCH", "many")]).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_MAX_BATCH"), "{err}");
        let err = load_env(&[("MIXGAN_MAX_BATCH", "0")]).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_MAX_BATCH") && err.contains("max_batch"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_batches = 3\n").unwrap();
        let err = Config::load(Some(&path), vec![], Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("max_batches") && err.contains("c.toml"), "{err}");
        let err = load_env(&[("MIXGAN_COMPOSITE_ON", "gpu")]).unwrap_err().to_string();
        assert!(
            err.contains("MIXGAN_COMPOSITE_ON") && err.contains("composite_on") && err.contains("device, cpu"),
            "{err}"
        );
        assert_eq!(load_env(&[("MIXGAN_COMPOSITE_ON", "cpu")]).unwrap().composite_on, CompositeOn::Cpu);
        assert_eq!(load_env(&[("MIXGAN_CANVAS_BATCH", "4")]).unwrap().canvas_batch, 4);
        let err = load_env(&[("MIXGAN_CANVAS_BATCH", "0")]).unwrap_err().to_string();
        assert!(err.contains("canvas_batch") && err.contains("above 0"), "{err}");
        // Switches take true/false (and 1/0, yes/no, on/off) from the environment.
        assert!(
            Config::default().cpu_kernels && !load_env(&[("MIXGAN_CPU_KERNELS", "no")]).unwrap().switches().cpu_kernels
        );
        assert!(Config::default().cuda_kernels && !load_env(&[("MIXGAN_CUDA_KERNELS", "false")]).unwrap().cuda_kernels);
        assert!(Config::default().cuda_graphs && !load_env(&[("MIXGAN_CUDA_GRAPHS", "false")]).unwrap().cuda_graphs);
        let blocking = load_env(&[("MIXGAN_CUDA_BLOCKING_SYNC", "on")]).unwrap();
        assert!(!Config::default().cuda_blocking_sync && blocking.switches().blocking_sync);
        assert!(!load_env(&[("MIXGAN_CUDNN_BENCHMARK", "0")]).unwrap().cudnn_benchmark);
        let err = load_env(&[("MIXGAN_CUDNN_BENCHMARK", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_CUDNN_BENCHMARK") && err.contains("true or false"), "{err}");
        let mut flags = Overrides::default();
        flags.set("device", "tpu".into(), "--device");
        let err = Config::load(None, vec![], flags).unwrap_err().to_string();
        assert!(err.starts_with("--device:") && err.contains("`tpu`") && err.contains("cuda:N"), "{err}");
        let err = load_env(&[("MIXGAN_MAX_WIDTH", "-3")]).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_MAX_WIDTH"), "{err}");
        assert_eq!(load_env(&[("MIXGAN_PRECISION", "bf16")]).unwrap().precision, Some(Precision::Bf16));
        assert_eq!(load_env(&[]).unwrap().precision, None);
        let err = load_env(&[("MIXGAN_PRECISION", "half")]).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_PRECISION") && err.contains("fp16, bf16"), "{err}");
    }
}
