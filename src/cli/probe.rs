//! `mixgan probe`: asks a server whether it is alive (or ready) and exits 0 only on a 200,
//! so a container's health check needs no curl in the image.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ProbeArgs {
    /// The URL to ask.
    #[arg(default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

pub fn run(a: ProbeArgs) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(a.timeout_ms)))
        .http_status_as_error(false)
        .build()
        .into();
    let status = match agent.get(&a.url).call() {
        Ok(reply) => reply.status().as_u16(),
        Err(e) => bail!("{}: {e}", a.url),
    };
    if status != 200 {
        bail!("{} answered {status}", a.url);
    }
    Ok(())
}
