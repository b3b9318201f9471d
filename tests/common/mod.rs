//! Helpers shared by the integration tests: the Python reference (tools/sg2_reference.py,
//! run with the PyTorch environment that `make test` sets up) and small models made on the fly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Python with PyTorch the helper tools run on, found as `mixgan` finds it
/// (`$MIXGAN_PYTHON`, else the environment `make setup` installs), checked once.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let python = mixgan::cli::python::python(None);
            if let Err(e) = mixgan::cli::python::check(&python, &["torch", "numpy"]) {
                panic!(
                    "run the tests with `make test`, which installs what they need ({})",
                    e.to_string().replace('\n', " ")
                );
            }
            python
        })
        .clone()
}

/// The test tools' folder (hadolint, checkov, a Python with grpcio-tools): `$MIXGAN_TOOLS`,
/// else where `scripts/setup-test-tools` installs them.
pub fn tools_dir() -> PathBuf {
    let cached = || {
        let cache = std::env::var_os("MIXGAN_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mixgan")))?;
        Some(cache.join("venv-tools/bin")).filter(|d| d.join("python").is_file())
    };
    std::env::var_os("MIXGAN_TOOLS")
        .map(PathBuf::from)
        .or_else(cached)
        .expect("the test tools are not installed: run the tests with `make test`, which installs them")
}

/// Where `scripts/setup-test-tools` installs playwright-core (`node_modules/` inside): beside
/// the tools' Python environment in the cache.
pub fn node_tools() -> PathBuf {
    let dir = tools_dir().join("../../node-tools");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "playwright-core is not installed: run `make test`");
    dir
}

/// A picture `scripts/setup-test-tools` keeps in the cache's `test-data/` (`astronaut.png`).
pub fn test_picture(name: &str) -> PathBuf {
    let path = tools_dir().join("../../test-data").join(name);
    assert!(path.is_file(), "{} is missing: run `make test`, which fetches it", path.display());
    path
}

/// Generates the Python gRPC client of `proto/mixgan.proto` into `dir` with grpcio-tools;
/// returns the test tools' Python, which runs it.
pub fn python_grpc_client(dir: &Path) -> PathBuf {
    let python = tools_dir().join("python");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let gen = Command::new(&python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(proto.join("mixgan.proto"))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    python
}

pub fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/sg2_reference.py")
}

/// Runs the reference with `args`; panics with its stderr when it fails.
pub fn reference(args: &[&str]) {
    let out = Command::new(python()).arg(reference_script()).args(args).output().expect("run python");
    assert!(out.status.success(), "reference {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a seeded random NVIDIA-format model (settings as JSON) into `dir`.
pub fn make_model(dir: &Path, settings: &str, seed: u32) {
    reference(&[
        "make",
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "test",
        "--classes",
        "thing",
        "--config",
        settings,
        "--seed",
        &seed.to_string(),
    ]);
}

/// The reference's images for `args` (generate options), as a float tensor.
pub fn reference_images(model: &Path, out: &Path, args: &[&str]) -> tch::Tensor {
    let mut all = vec!["generate", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    reference(&all);
    let mut t = tch::Tensor::read_safetensors(out).expect("read reference output");
    t.remove(0).1
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mixgan")
}
pub mod server;
