//! The native generator against the PyTorch reference on random-initialised models of many
//! settings: largest absolute difference on the [-1, 1] output at most 1e-4.

mod common;

use common::*;
use mixgan::model::{ConvPath, GenerationParams, Model, NoiseMode, StyleMix};
use tch::Device;

const TOLERANCE: f64 = 1e-4;

struct Case {
    name: &'static str,
    settings: &'static str,
    /// (reference options, the same as parameters for mixgan)
    runs: Vec<(Vec<&'static str>, Vec<GenerationParams>)>,
}

fn params(seeds: &[u32], trunc: f64) -> Vec<GenerationParams> {
    seeds
        .iter()
        .map(|&seed| GenerationParams {
            seed,
            trunc,
            trunc_cutoff: None,
            class_index: None,
            noise_mode: NoiseMode::Const,
            mix: None,
            projected: None,
        })
        .collect()
}

fn with(mut ps: Vec<GenerationParams>, f: impl Fn(&mut GenerationParams)) -> Vec<GenerationParams> {
    ps.iter_mut().for_each(f);
    ps
}

fn check(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    make_model(&model_dir, case.settings, 7);
    let mut model = Model::load(&model_dir, Device::Cpu).expect("load model");
    for (i, (args, ps)) in case.runs.iter().enumerate() {
        let expected = reference_images(&model_dir, &dir.path().join(format!("ref{i}.safetensors")), args);
        // Unfused with the filter folded (CUDA chooses it, or not, per block), run here on the CPU.
        for (path, fold) in [(ConvPath::Fused, false), (ConvPath::Unfused, false), (ConvPath::Unfused, true)] {
            model.set_conv_path(path);
            model.set_fold_filters(Some(fold));
            let got = model.generate(ps).expect("generate");
            let diff = max_abs_diff(&got, &expected);
            assert!(diff <= TOLERANCE, "{} run {i} {args:?} ({path:?}, fold {fold}): max |diff| {diff:e}", case.name);
        }
    }
}

#[test]
fn skip_architecture_with_clamp_truncation_and_cutoff() {
    check(Case {
        name: "skip",
        settings: r#"{"z_dim":16,"c_dim":0,"w_dim":24,"img_resolution":32,"img_channels":3,
            "mapping_kwargs":{"num_layers":3},
            "synthesis_kwargs":{"channel_base":512,"channel_max":32,"architecture":"skip","conv_clamp":0.5}}"#,
        runs: vec![
            (vec!["--seeds", "0,42"], params(&[0, 42], 1.0)),
            (vec!["--seeds", "3-5", "--trunc", "0.6"], params(&[3, 4, 5], 0.6)),
            (
                vec!["--seeds", "9", "--trunc", "0.3", "--trunc-cutoff", "3"],
                with(params(&[9], 0.3), |p| p.trunc_cutoff = Some(3)),
            ),
            (
                vec!["--seeds", "1,2", "--noise-mode", "none"],
                with(params(&[1, 2], 1.0), |p| p.noise_mode = NoiseMode::None),
            ),
        ],
    });
}

#[test]
fn resnet_architecture_without_clamp() {
    check(Case {
        name: "resnet",
        settings: r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,
            "mapping_kwargs":{"num_layers":2,"layer_features":12},
            "synthesis_kwargs":{"channel_base":256,"channel_max":16,"architecture":"resnet"}}"#,
        runs: vec![
            (vec!["--seeds", "0-2", "--trunc", "0.8"], params(&[0, 1, 2], 0.8)),
            (vec!["--seeds", "5", "--noise-mode", "none"], with(params(&[5], 1.0), |p| p.noise_mode = NoiseMode::None)),
        ],
    });
}

#[test]
fn orig_architecture_greyscale_at_8px() {
    check(Case {
        name: "orig",
        settings: r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":8,"img_channels":1,
            "mapping_kwargs":{"num_layers":1,"lr_multiplier":1},
            "synthesis_kwargs":{"channel_base":64,"channel_max":8,"architecture":"orig","conv_clamp":256}}"#,
        runs: vec![(vec!["--seeds", "0,1", "--trunc", "0.5"], params(&[0, 1], 0.5))],
    });
}

#[test]
fn conditional_model_with_class_labels() {
    check(Case {
        name: "conditional",
        settings: r#"{"z_dim":8,"c_dim":5,"w_dim":16,"img_resolution":16,"img_channels":3,
            "mapping_kwargs":{"num_layers":2,"embed_features":6},
            "synthesis_kwargs":{"channel_base":256,"channel_max":16}}"#,
        runs: vec![
            (vec!["--seeds", "0,1", "--class", "3"], with(params(&[0, 1], 1.0), |p| p.class_index = Some(3))),
            (
                vec!["--seeds", "2", "--class", "0", "--trunc", "0.7"],
                with(params(&[2], 0.7), |p| p.class_index = Some(0)),
            ),
        ],
    });
}

#[test]
fn style_mixing_truncated_alike() {
    check(Case {
        name: "mixing",
        settings: r#"{"z_dim":12,"c_dim":0,"w_dim":12,"img_resolution":16,"img_channels":3,
            "mapping_kwargs":{"num_layers":2},
            "synthesis_kwargs":{"channel_base":256,"channel_max":16,"conv_clamp":256}}"#,
        runs: vec![
            (
                vec!["--seeds", "0,1", "--trunc", "0.5", "--mix-seed", "77", "--mix-from", "3"],
                with(params(&[0, 1], 0.5), |p| p.mix = Some(StyleMix { seed: 77, from: 3 })),
            ),
            (
                vec!["--seeds", "4", "--mix-seed", "5", "--mix-from", "0", "--noise-mode", "none"],
                with(params(&[4], 1.0), |p| {
                    p.mix = Some(StyleMix { seed: 5, from: 0 });
                    p.noise_mode = NoiseMode::None
                }),
            ),
        ],
    });
}

#[test]
fn other_activation_filter_and_kernel_settings() {
    check(Case {
        name: "variants",
        settings: r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,
            "mapping_kwargs":{"num_layers":2,"activation":"relu"},
            "synthesis_kwargs":{"channel_base":128,"channel_max":8,"resample_filter":[1,2,1],
                                "kernel_size":5,"activation":"swish","use_noise":false}}"#,
        runs: vec![(vec!["--seeds", "0,3", "--trunc", "0.9"], params(&[0, 3], 0.9))],
    });
}

#[test]
fn a_batch_may_mix_parameters_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    make_model(
        &model_dir,
        r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,"synthesis_kwargs":{"channel_base":128,"channel_max":8}}"#,
        3,
    );
    let model = Model::load(&model_dir, Device::Cpu).unwrap();
    let mut ps = params(&[0, 1, 2], 0.7);
    ps[1].trunc = 1.0;
    ps[1].noise_mode = NoiseMode::None;
    ps[2].trunc_cutoff = Some(2);
    let batch = model.generate(&ps).unwrap();
    for (i, p) in ps.iter().enumerate() {
        let alone = model.generate(std::slice::from_ref(p)).unwrap();
        let diff = max_abs_diff(&batch.get(i as i64).unsqueeze(0), &alone);
        assert!(diff <= TOLERANCE, "sample {i} differs in a batch by {diff:e}");
    }
}

#[test]
fn random_noise_repeats_for_a_seed_and_differs_from_const_noise() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    make_model(
        &model_dir,
        r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,"synthesis_kwargs":{"channel_base":128,"channel_max":8}}"#,
        4,
    );
    let model = Model::load(&model_dir, Device::Cpu).unwrap();
    let konst = params(&[5], 1.0);
    let random = with(params(&[5], 1.0), |p| p.noise_mode = NoiseMode::Random);
    let a = model.generate(&konst).unwrap();
    assert_eq!(max_abs_diff(&a, &model.generate(&konst).unwrap()), 0.0);
    let r1 = model.generate(&random).unwrap();
    let r2 = model.generate(&random).unwrap();
    assert_eq!(max_abs_diff(&r1, &r2), 0.0, "random noise is a function of the seed");
    assert!(max_abs_diff(&r1, &a) > 1e-3, "random noise must change the picture");
}
