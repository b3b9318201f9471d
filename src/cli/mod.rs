//! The `mixgan` command line: one sub-command per file, each parsing its flags and handing the
//! work to the library (the pipeline, the server, the models). Also what only the command
//! line needs: seed lists, the Python helper lookup, and the two benchmarks (`bench` for the
//! generators, `loadtest` for the service, an HTTP client). None of it is on a request's path.

pub mod bench;
mod detect;
pub mod flood;
mod generate;
mod import;
pub mod loadtest;
mod probe;
pub mod python;
mod render;
pub mod seeds;
mod serve;
mod stages;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mixgan", version, about = "A mixture of StyleGANs: expert generators composed into one picture")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from one model for a list of seeds (like NVIDIA's gen_images.py).
    Generate(generate::GenerateArgs),
    /// Time each model's generator against the Python reference on the same weights.
    Bench(bench::BenchArgs),
    /// Render a layout (JSON) into one picture, offline, through the server's pipeline.
    Render(render::RenderArgs),
    /// Serve the HTTP and gRPC API (every option also from --config and MIXGAN_* variables).
    Serve(serve::ServeArgs),
    /// Load-test the service (starting one unless --url is given) against the bare generators.
    Loadtest(loadtest::LoadArgs),
    /// Turn an NVIDIA .pkl or rosinality .pt checkpoint into a model directory.
    Import(import::ImportArgs),
    /// Find faces (or what a Haar cascade finds) in a picture.
    Detect(detect::DetectArgs),
    /// Ask a server's /healthz (or any URL): exit 0 on 200, 1 otherwise. For health checks.
    Probe(probe::ProbeArgs),
}

/// Parses the arguments, runs the sub-command, and prints its error (with its causes).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::model::heap::keep_large_blocks();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run_command(a),
        Command::Render(a) => render::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Loadtest(a) => loadtest::run_command(a),
        Command::Import(a) => import::run(a),
        Command::Detect(a) => detect::run(a),
        Command::Probe(a) => probe::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line. The library's errors already include their cause in
/// their own message, so a cause whose text was said already is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text += ": ";
        }
        text += &message;
    }
    text
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        let inner = std::io::Error::other("disk full");
        let wrapped = anyhow::Error::new(crate::config::ConfigError::Io { path: "c.toml".into(), source: inner });
        assert_eq!(report(&wrapped), "cannot read c.toml: disk full");
        let with_context = anyhow::anyhow!("`cuda:1` is not available").context("--device");
        assert_eq!(report(&with_context), "--device: `cuda:1` is not available");
    }
}
