//! `mixgan import`: NVIDIA persistent-object pickles and rosinality checkpoints (written by
//! tools/checkpoint_fixtures.py from our own models) become model directories that generate
//! the same pictures, and hostile or malformed files are refused, each with its own message.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mixgan::model::{GenerationParams, Model, NoiseMode};
use tch::Device;

fn fixture(kind: &str, model: Option<&Path>, out: &Path, marker: Option<&Path>) {
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/checkpoint_fixtures.py")).arg(kind).arg("--out").arg(out);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    if let Some(m) = marker {
        cmd.arg("--marker").arg(m);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "fixture {kind}: {}", String::from_utf8_lossy(&o.stderr));
}

/// `mixgan import` as a user runs it: without `--python`, and, when `make setup`'s environment
/// is in the cache, without `MIXGAN_PYTHON` either, so the binary finds PyTorch by itself.
fn import(src: &Path, out: &Path) -> std::process::Output {
    let mut cmd = Command::new(bin());
    if mixgan::cli::python::cached_environment().is_some() {
        cmd.env_remove("MIXGAN_PYTHON");
    } else {
        cmd.env("MIXGAN_PYTHON", python());
    }
    cmd.args([
        "import",
        src.to_str().unwrap(),
        "--name",
        "imported",
        "--classes",
        "face,portrait",
        "-o",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap()
}

fn params(c_dim: i64) -> Vec<GenerationParams> {
    [0u32, 7, 42]
        .iter()
        .map(|&seed| GenerationParams {
            seed,
            trunc: 0.7,
            trunc_cutoff: None,
            class_index: (c_dim > 0).then_some(1),
            noise_mode: NoiseMode::Const,
            mix: None,
            projected: None,
        })
        .collect()
}

fn same_pictures(original: &Path, imported: &Path) {
    let a = Model::load(original, Device::Cpu).unwrap();
    let b = Model::load(imported, Device::Cpu).unwrap();
    let ps = params(a.spec.generator.c_dim);
    let diff = max_abs_diff(&a.generate(&ps).unwrap(), &b.generate(&ps).unwrap());
    assert!(diff <= 1e-5, "imported model differs by {diff:e}");
}

#[test]
fn an_nvidia_snapshot_imports_without_nvidias_code() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    make_model(
        &model,
        r#"{"z_dim":16,"c_dim":3,"w_dim":16,"img_resolution":32,"img_channels":3,"mapping_kwargs":{"num_layers":3},
            "synthesis_kwargs":{"channel_base":512,"channel_max":32,"architecture":"resnet","conv_clamp":256}}"#,
        2,
    );
    let pkl = dir.path().join("network-snapshot-000100.pkl");
    fixture("nvidia-pkl", Some(&model), &pkl, None);
    let out = dir.path().join("imported");
    let o = import(&pkl, &out);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("32x32") && stdout.contains("c_dim 3") && stdout.contains("Resnet"), "{stdout}");
    assert!(out.join("sample.png").is_file());
    let spec = std::fs::read_to_string(out.join("model.toml")).unwrap();
    assert!(
        spec.contains("classes = [\"face\", \"portrait\"]") && spec.contains("architecture = \"resnet\""),
        "{spec}"
    );
    same_pictures(&model, &out);
    // A second import into the same place is refused rather than overwriting.
    assert!(!import(&pkl, &out).status.success());
}

#[test]
fn a_python_without_pytorch_gets_a_message_that_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("bare");
    let made = Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv).status().unwrap();
    assert!(made.success());
    let o = Command::new(bin())
        .env("MIXGAN_PYTHON", venv.join("bin/python"))
        .args(["import", "x.pkl", "--name", "x", "--classes", "face", "-o"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot import torch") && err.contains("make setup") && err.contains("MIXGAN_PYTHON"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists(), "nothing is written");
}

#[test]
fn a_rosinality_checkpoint_imports_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    make_model(
        &model,
        r#"{"z_dim":32,"c_dim":0,"w_dim":32,"img_resolution":32,"img_channels":3,"mapping_kwargs":{"num_layers":4},
            "synthesis_kwargs":{"channel_base":512,"channel_max":32}}"#,
        3,
    );
    let pt = dir.path().join("550000.pt");
    fixture("rosinality", Some(&model), &pt, None);
    let models = dir.path().join("models");
    let out = models.join("imported");
    let o = import(&pt, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_pictures(&model, &out);

    let s = common::server::Server::start(&[], &["--models", models.to_str().unwrap()], true);
    let r = s.compose(r##"{"width": 64, "height": 64, "background": {"color": "#000000"}, "regions": [{"class": "portrait", "box": [0, 0, 64, 64]}]}"##);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn hostile_and_malformed_files_are_refused_each_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face");
    let marker = dir.path().join("PWNED");
    let cases: &[(&str, &str)] = &[
        ("shell", "`posix.system`"),
        ("unknown-module", "`somebody_elses.package.Unknown`"),
        ("deep", "no `G_ema`"),
        ("truncated", "truncated"),
        ("not-generator", "is a `Discriminator`"),
        ("stylegan3", "--nvlabs-src"),
    ];
    for (kind, reason) in cases {
        let file = dir.path().join(format!("{kind}.pkl"));
        fixture(kind, Some(&model), &file, Some(&marker));
        let o = import(&file, &dir.path().join(format!("out-{kind}")));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{kind} was accepted");
        assert!(err.contains(reason), "{kind}: `{reason}` not in {err}");
        assert!(!err.contains("Traceback"), "{kind}: {err}");
        assert!(!dir.path().join(format!("out-{kind}/model.toml")).exists());
    }
    assert!(!marker.exists(), "the hostile pickle ran its command");
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let o = import(&junk, &dir.path().join("out-junk"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither a pickle"));
}
