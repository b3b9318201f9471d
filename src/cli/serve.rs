//! `mixgan serve`: the settings (file, `MIXGAN_*` variables, these flags, in one merge), then
//! the server on a multi-threaded runtime until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::config::{Config, LogFormat, Overrides};
use crate::model::{DeviceChoice, Precision};

#[derive(Args, Serialize)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (and more: see docs/service.md).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Folder of model directories [default: models].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceChoice>,
    /// auto, fp32, fp16 or bf16 for every native model [default: each model's own setting].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,
    /// Bearer token required on /v1/* (also MIXGAN_API_KEY).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    /// text or json [default: text].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let mut flags = Overrides::default();
    flags.set_all(toml::Table::try_from(&a)?, |key| format!("--{}", key.replace('_', "-")));
    let config = Config::load(a.config.as_deref(), std::env::vars(), flags)?;
    // Blocking threads only route, project and composite (each bounded), so few are needed.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(64).build()?;
    Ok(runtime.block_on(crate::server::serve(config))?)
}
