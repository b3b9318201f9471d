//! TorchScript models by contract (mapping.pt + synthesis.pt + w_avg): exported from the
//! project's reference math by tools/export_torchscript.py, they load, generate the native
//! generator's pictures with truncation, style mixing and classes done by mixgan, and serve.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mixgan::model::{GenerationParams, Model, NoiseMode, StyleMix};
use tch::Device;

fn export(model: &Path, out: &Path) {
    export_with(model, out, &[]);
}

fn export_with(model: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/export_torchscript.py"))
        .args(["--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--classes", "scripted"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_torchscript_pair_generates_what_the_native_generator_does() {
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("native");
    make_model(
        &native,
        r#"{"z_dim":16,"c_dim":2,"w_dim":16,"img_resolution":32,"img_channels":3,"mapping_kwargs":{"num_layers":2},
            "synthesis_kwargs":{"channel_base":512,"channel_max":16,"architecture":"resnet","conv_clamp":256}}"#,
        9,
    );
    let scripted = dir.path().join("scripted");
    export(&native, &scripted);
    let a = Model::load(&native, Device::Cpu).unwrap();
    let b = Model::load(&scripted, Device::Cpu).unwrap();
    assert_eq!(b.generator.num_ws(), a.generator.num_ws());
    let ps: Vec<GenerationParams> =
        [(0u32, 1.0, None, None), (5, 0.6, Some(3), None), (9, 0.7, None, Some(StyleMix { seed: 4, from: 5 }))]
            .iter()
            .map(|&(seed, trunc, trunc_cutoff, mix)| GenerationParams {
                seed,
                trunc,
                trunc_cutoff,
                class_index: Some(1),
                noise_mode: NoiseMode::Const,
                mix,
                projected: None,
            })
            .collect();
    let diff = max_abs_diff(&a.generate(&ps).unwrap(), &b.generate(&ps).unwrap());
    assert!(diff <= 1e-4, "TorchScript differs from native by {diff:e}");

    let random = GenerationParams { noise_mode: NoiseMode::Random, ..ps[0].clone() };
    let err = b.generate(&[random]).unwrap_err().to_string();
    assert!(err.contains("noise_mode") && err.contains("TorchScript"), "{err}");
}

#[test]
fn torchscript_files_stay_inside_the_model_directory_and_must_load() {
    let dir = tempfile::tempdir().unwrap();
    let scripted = dir.path().join("scripted");
    export(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/hand"), &scripted);
    let toml = scripted.join("model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("mapping = \"mapping.pt\"", "mapping = \"../../mapping.pt\"")).unwrap();
    let err = Model::load(&scripted, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("torchscript.mapping") && err.contains("inside the model directory"), "{err}");
    std::fs::write(&toml, &text).unwrap();
    std::fs::write(scripted.join("synthesis.pt"), b"not torchscript").unwrap();
    let err = Model::load(&scripted, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("synthesis.pt") && err.contains("TorchScript"), "{err}");
}

#[test]
fn a_torchscript_model_serves() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    export(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face"), &models.join("scripted"));
    let s = common::server::Server::start(&[], &["--models", models.to_str().unwrap()], true);
    let m = s.get("/v1/models").json();
    assert_eq!(m["models"][0]["kind"], "torchscript");
    let r = s.compose(r##"{"width": 96, "height": 96, "background": {"color": "#000000"}, "regions": [{"class": "scripted", "ellipse": [48, 48, 40, 40], "trunc": 0.5}]}"##);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Modules traced at one batch size (as NVIDIA's StyleGAN3 traces are) run in chunks of it,
/// the last one padded: five pictures through a batch-2 trace equal the native generator's.
#[test]
fn a_fixed_batch_trace_runs_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("native");
    make_model(
        &native,
        r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,"mapping_kwargs":{"num_layers":2},
            "synthesis_kwargs":{"channel_base":128,"channel_max":8,"conv_clamp":256}}"#,
        4,
    );
    let scripted = dir.path().join("scripted");
    export_with(&native, &scripted, &["--fixed-batch", "2"]);
    let toml = std::fs::read_to_string(scripted.join("model.toml")).unwrap();
    assert!(toml.contains("batch = 2"), "{toml}");
    let a = Model::load(&native, Device::Cpu).unwrap();
    let b = Model::load(&scripted, Device::Cpu).unwrap();
    for n in [1u32, 2, 5] {
        let ps: Vec<GenerationParams> = (0..n)
            .map(|seed| GenerationParams {
                seed,
                trunc: 0.7,
                trunc_cutoff: None,
                class_index: None,
                noise_mode: NoiseMode::Const,
                mix: (seed == 3).then_some(StyleMix { seed: 9, from: 2 }),
                projected: None,
            })
            .collect();
        let (x, y) = (a.generate(&ps).unwrap(), b.generate(&ps).unwrap());
        assert_eq!(y.size()[0], n as i64);
        let diff = max_abs_diff(&x, &y);
        assert!(diff <= 1e-4, "batch {n}: TorchScript differs from native by {diff:e}");
    }
}
