//! Projection on the bundled face model: finding the w of a picture the model made itself.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use mixgan::model::{GenerationParams, Model};
use tch::{Device, Kind, Tensor};

fn mse(a: &Tensor, b: &Tensor) -> f64 {
    a.f_sub(b).unwrap().square().mean(Kind::Float).double_value(&[])
}

#[test]
fn projection_finds_a_w_that_reproduces_the_target() {
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face"), Device::Cpu).unwrap();
    let target = model.generate(&[GenerationParams { trunc: 1.0, ..model.default_params(7) }]).unwrap().get(0);
    let weight = Tensor::ones([1, 64, 64], (Kind::Float, Device::Cpu));
    let start = model.generate(&[GenerationParams { trunc: 0.0, ..model.default_params(0) }]).unwrap().get(0);
    let started = std::time::Instant::now();
    let ws = model
        .project(&target.unsqueeze(0), &weight.unsqueeze(0), 100, mixgan::model::Watch::new(&AtomicBool::new(false)))
        .unwrap();
    let elapsed = started.elapsed();
    let w: Vec<f32> = Vec::try_from(ws.flatten(0, -1)).unwrap();
    let p = GenerationParams { projected: Some(std::sync::Arc::new(w)), ..model.default_params(0) };
    let found = model.generate(&[p]).unwrap().get(0);
    let (before, after) = (mse(&start, &target), mse(&found, &target));
    eprintln!("mse from w_avg {before:.4}, after projection {after:.4}, {elapsed:?}");
    assert!(after < before * 0.5, "projection did not approach the target: {before} -> {after}");
}

/// Several targets searched as one batch land where each lands alone: each one's loss depends
/// on its own w, and Adam works value by value.
#[test]
fn a_batch_of_targets_projects_as_each_would_alone() {
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face"), Device::Cpu).unwrap();
    let targets = model
        .generate(&[
            GenerationParams { trunc: 1.0, ..model.default_params(3) },
            GenerationParams { trunc: 1.0, ..model.default_params(4) },
        ])
        .unwrap();
    // The second target matters only on its left half.
    let weights = Tensor::ones([2, 1, 64, 64], (Kind::Float, Device::Cpu));
    let _ = weights.get(1).narrow(2, 32, 32).fill_(0.0);
    let together = model.project(&targets, &weights, 30, mixgan::model::Watch::new(&AtomicBool::new(false))).unwrap();
    for i in 0..2 {
        let alone = model
            .project(
                &targets.narrow(0, i, 1),
                &weights.narrow(0, i, 1),
                30,
                mixgan::model::Watch::new(&AtomicBool::new(false)),
            )
            .unwrap();
        let diff = (together.get(i) - alone.get(0)).abs().max().double_value(&[]);
        let spread = alone.abs().max().double_value(&[]);
        eprintln!("target {i}: |together - alone| {diff:.2e} of |w| up to {spread:.2}");
        assert!(diff <= 1e-3 * spread.max(1.0), "target {i}: {diff}");
    }
}

/// The server's warm-up search (on CUDA) runs on a blank target and leaves the model as it
/// was: the same pictures after it as before.
#[test]
fn a_warm_up_search_runs_and_changes_nothing() {
    for name in ["face", "hand"] {
        let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name), Device::Cpu).unwrap();
        assert!(model.can_project(), "{name}");
        let params = [model.default_params(5)];
        let before = model.generate(&params).unwrap();
        model.warm_search().unwrap();
        assert!(model.generate(&params).unwrap().equal(&before), "{name}: the warm-up search changed the model");
    }
}
