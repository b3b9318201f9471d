//! Half precision on the CPU: float16 and bfloat16 synthesis against float32 on the same
//! weights and seeds, in 8-bit levels of the pictures, on the bundled models and on random
//! models of both architectures with NVIDIA's clamp; `auto` stays float32 on the CPU; the
//! setting reaches the server.
//!
//! The tolerances: float16 keeps 11 significant bits, so each operation rounds by at most
//! 2^-11 of its value (a tenth of an 8-bit level at full scale); through twenty-odd layers
//! that grows to a level or two at the worst pixel and stays far below one on average.
//! bfloat16 keeps 8 bits (about one level per operation at full scale): expect an average
//! under a level and single pixels some ten levels off. Both bounds below leave room for
//! other CPUs' kernels.

mod common;

use std::path::Path;

use common::*;
use mixgan::model::{ConvPath, GenerationParams, Model, NoiseMode, Precision};
use tch::{Device, Kind, Tensor};

/// Pictures as NVIDIA converts them, [N, H, W, C] uint8.
fn pictures(model: &Model, params: &[GenerationParams]) -> Tensor {
    mixgan::model::to_pixels(&model.generate(params).unwrap()).unwrap()
}

/// Largest and mean difference in 8-bit levels.
fn levels(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let d = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs();
    (d.max().double_value(&[]), d.mean(Kind::Float).double_value(&[]))
}

fn params(model: &Model, seeds: std::ops::Range<u32>, trunc: f64) -> Vec<GenerationParams> {
    seeds.map(|s| GenerationParams { trunc, noise_mode: NoiseMode::Const, ..model.default_params(s) }).collect()
}

/// (precision, largest, mean) bounds in levels.
const BOUNDS: [(Precision, f64, f64); 2] = [(Precision::Fp16, 4.0, 0.25), (Precision::Bf16, 40.0, 1.5)];

fn check(dir: &Path, trunc: f64, what: &str) {
    let mut model = Model::load(dir, Device::Cpu).unwrap();
    let ps = params(&model, 0..4, trunc);
    model.set_precision(Precision::Fp32);
    let full = pictures(&model, &ps);
    model.set_precision(Precision::Auto);
    assert!(pictures(&model, &ps).equal(&full), "{what}: auto is float32 on the CPU, bit for bit");
    for (precision, max_bound, mean_bound) in BOUNDS {
        model.set_precision(precision);
        // The last is one of CUDA's two ways: the upsampling filter folded into the weights.
        for (path, fold) in [(ConvPath::Unfused, false), (ConvPath::Fused, false), (ConvPath::Unfused, true)] {
            model.set_conv_path(path);
            model.set_fold_filters(Some(fold));
            let (max, mean) = levels(&pictures(&model, &ps), &full);
            eprintln!("{what} {precision} {path:?} fold {fold}: largest {max}, mean {mean:.3} levels");
            assert!(
                max <= max_bound && mean <= mean_bound,
                "{what} {precision} {path:?} fold {fold}: {max} / {mean:.3} levels"
            );
        }
        model.set_conv_path(ConvPath::Auto);
        model.set_fold_filters(Some(false));
    }
}

#[test]
fn half_precision_stays_within_a_few_levels_on_the_bundled_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["face", "hand", "background"] {
        check(&root.join(name), 0.7, name);
    }
}

#[test]
fn half_precision_follows_nvidias_math_on_random_models_and_extreme_styles() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in [("skip", "skip"), ("resnet", "resnet")] {
        let model = dir.path().join(name);
        make_model(
            &model,
            &format!(
                r#"{{"z_dim":32,"c_dim":0,"w_dim":32,"img_resolution":32,"img_channels":3,
                "mapping_kwargs":{{"num_layers":2}},
                "synthesis_kwargs":{{"channel_base":1024,"channel_max":64,"architecture":"{arch}","conv_clamp":256,"num_fp16_res":2}}}}"#
            ),
            3,
        );
        check(&model, 1.0, name);
        // Truncation at psi 1000 makes styles a thousand times their usual size. Without
        // NVIDIA's normalisation of weights and styles before a half-precision convolution the
        // sums overflow float16 (checked: the pictures turn to inf and NaN); with it they stay
        // finite and, but for a few saturated pixels, close.
        let mut m = Model::load(&model, Device::Cpu).unwrap();
        let ps = params(&m, 0..4, 1000.0);
        m.set_precision(Precision::Fp32);
        let full = m.generate(&ps).unwrap();
        m.set_precision(Precision::Fp16);
        let half = m.generate(&ps).unwrap();
        assert_eq!(half.kind(), Kind::Float, "pictures come back in float32");
        assert!(bool::try_from(half.isfinite().all()).unwrap(), "{name}: float16 overflowed");
        let (max, mean) = levels(&mixgan::model::to_pixels(&half).unwrap(), &mixgan::model::to_pixels(&full).unwrap());
        eprintln!("{name} at psi 1000: largest {max}, mean {mean:.3} levels");
        assert!(mean <= 0.5, "{name} at psi 1000: {max} / {mean:.3} levels");
    }
}

#[test]
fn the_server_and_the_commands_take_a_precision() {
    let s = common::server::Server::start(&[], &["--precision", "bf16"], true);
    let models = s.get("/v1/models").json();
    for m in models["models"].as_array().unwrap() {
        assert_eq!(m["precision"], "bf16", "{m}");
    }
    let r = s.compose(include_str!("../examples/portrait.json"));
    assert_eq!(r.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face");
    let out = std::process::Command::new(bin())
        .args(["generate", "--seeds", "1", "--precision", "fp16", "--model"])
        .arg(&face)
        .arg("--outdir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = std::process::Command::new(bin())
        .args(["generate", "--seeds", "1", "--precision", "half", "--model"])
        .arg(&face)
        .arg("--outdir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fp16, bf16"));
}
