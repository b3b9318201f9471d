//! Helpers shared by the integration tests: the Python reference (tools/sg2_reference.py,
//! run with the PyTorch environment that `make test` sets up) and small models made on the fly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn python() -> PathBuf {
    std::env::var_os("MIXGAN_PYTHON")
        .map(PathBuf::from)
        .expect("MIXGAN_PYTHON is not set: run the tests through `make test` (scripts/with-torch)")
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
