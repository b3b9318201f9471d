//! The service configuration: one struct, filled from defaults, then a TOML file, then
//! `MIXGAN_*` environment variables, then command-line flags (each overriding the last).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::router::RouterLimits;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("`{s}` is not a log format (text, json)")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; loopback unless you mean otherwise.
    pub addr: String,
    /// Folder of model directories.
    pub models: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
    /// Bearer token required on /v1/*; none = open.
    pub api_key: Option<String>,
    /// Origins allowed by CORS (`*` for any); empty = CORS off.
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    /// Largest request body.
    pub max_body_bytes: usize,
    pub max_width: u32,
    pub max_height: u32,
    pub max_regions: usize,
    /// Base64 length of one mask or label map.
    pub max_picture_base64: usize,
    /// Decoded width and height of one mask or label map.
    pub max_picture_side: u32,
    /// A request that takes longer is answered 504.
    pub request_timeout_ms: u64,
    /// Patches waiting per model before new requests get 503.
    pub queue_capacity: usize,
    /// Compose requests served at once; more get 503 at once.
    pub max_in_flight: usize,
    /// Default largest batch per model (a model.toml `[batching]` table overrides).
    pub max_batch: usize,
    /// Default longest wait for a batch to fill, in milliseconds.
    pub max_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub grace_period_s: u64,
    /// Generations per model before the server reports ready.
    pub warmup_iterations: usize,
    /// libtorch intra-op threads per task (0: 1, since tasks run side by side instead).
    pub torch_threads: usize,
    /// CPU-heavy tasks (generator batches, routing, compositing) at once (0: one per core).
    pub cpu_slots: usize,
    /// Where canvases are composited: device (the generators') or cpu.
    pub composite_on: String,
}

impl Default for Config {
    fn default() -> Self {
        let limits = RouterLimits::default();
        Self {
            addr: "127.0.0.1:8080".into(),
            models: "models".into(),
            device: "auto".into(),
            api_key: None,
            cors_origins: vec![],
            log_format: LogFormat::Text,
            max_body_bytes: 32 << 20,
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_regions: limits.max_regions,
            max_picture_base64: limits.max_picture_base64,
            max_picture_side: limits.max_picture_side,
            request_timeout_ms: 30_000,
            queue_capacity: 64,
            max_in_flight: 32,
            max_batch: 8,
            max_wait_ms: 20,
            grace_period_s: 30,
            warmup_iterations: 2,
            torch_threads: 0,
            cpu_slots: 0,
            composite_on: "device".into(),
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

impl Config {
    /// Defaults, then `file`, then the `MIXGAN_<KEY>` variables among `env` whose key is a
    /// setting (other `MIXGAN_*` variables belong to other tools and are left alone).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid { origin: path.display().to_string(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        let known = toml::Table::try_from(Config::default()).expect("the defaults serialise");
        let mut from_env = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("MIXGAN_").map(str::to_lowercase) else { continue };
            if !known.contains_key(&key) && key != "api_key" {
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
                _ => toml::Value::String(value),
            };
            table.insert(key, parsed);
            from_env.push(name);
        }
        let origin = match (file, from_env.is_empty()) {
            (Some(p), true) => p.display().to_string(),
            (Some(p), false) => format!("{} or {}", p.display(), from_env.join(", ")),
            (None, _) => from_env.join(", "),
        };
        let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            ConfigError::Invalid { origin: origin.clone(), message: e.message().to_string() }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_width", u64::from(self.max_width)),
            ("max_height", u64::from(self.max_height)),
            ("max_regions", self.max_regions as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("queue_capacity", self.queue_capacity as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_batch", self.max_batch as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` must be above 0"));
            }
        }
        self.composite_on.parse::<crate::render::CompositeOn>().map_err(|e| format!("`composite_on`: {e}"))?;
        if self.api_key.as_deref() == Some("") {
            return Err("`api_key` is empty; leave it out to serve without auth".into());
        }
        Ok(())
    }

    pub fn router_limits(&self) -> RouterLimits {
        RouterLimits {
            max_width: self.max_width,
            max_height: self.max_height,
            max_regions: self.max_regions,
            max_picture_base64: self.max_picture_base64,
            max_picture_side: self.max_picture_side,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixgan.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:9000\"\nmax_batch = 4\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("MIXGAN_MAX_BATCH", "16"), ("MIXGAN_PYTHON", "/x"), ("MIXGAN_CORS_ORIGINS", "a, b")]),
        )
        .unwrap();
        assert_eq!(c.addr, "127.0.0.1:9000");
        assert_eq!(c.max_batch, 16);
        assert_eq!(c.cors_origins, vec!["a", "b"]);
        assert_eq!(c.max_wait_ms, 20);
    }

    #[test]
    fn bad_settings_name_where_they_came_from() {
        let err = Config::load(None, env(&[("MIXGAN_MAX_BATCH", "many")])).unwrap_err().to_string();
        assert!(err.contains("MIXGAN_MAX_BATCH"), "{err}");
        let err = Config::load(None, env(&[("MIXGAN_MAX_BATCH", "0")])).unwrap_err().to_string();
        assert!(err.contains("max_batch"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_batches = 3\n").unwrap();
        let err = Config::load(Some(&path), vec![]).unwrap_err().to_string();
        assert!(err.contains("max_batches") && err.contains("c.toml"), "{err}");
        let err = Config::load(None, env(&[("MIXGAN_COMPOSITE_ON", "gpu")])).unwrap_err().to_string();
        assert!(err.contains("composite_on") && err.contains("device, cpu"), "{err}");
        let c = Config::load(None, env(&[("MIXGAN_COMPOSITE_ON", "cpu")])).unwrap();
        assert_eq!(c.composite_on, "cpu");
    }
}
