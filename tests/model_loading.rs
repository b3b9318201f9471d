//! Loading a model directory: every mismatch between settings and weights is reported
//! precisely, and a missing or corrupt file is an error naming it, never a panic.

mod common;

use std::path::Path;

use common::*;
use mixgan::model::{Model, ModelError};
use tch::Device;

const SETTINGS: &str = r#"{"z_dim":8,"c_dim":0,"w_dim":8,"img_resolution":16,"img_channels":3,
    "mapping_kwargs":{"num_layers":3},"synthesis_kwargs":{"channel_base":128,"channel_max":8}}"#;

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path(), SETTINGS, 1);
    dir
}

/// A loaded test model (with the directory that holds it), the parameters of seeds
/// 0..`n`, and their batch as generated.
fn model_and_batch(n: u32) -> (tempfile::TempDir, Model, Vec<mixgan::model::GenerationParams>, tch::Tensor) {
    let dir = model_dir();
    let model = Model::load(dir.path(), Device::Cpu).unwrap();
    let params: Vec<_> = (0..n).map(|s| model.default_params(s)).collect();
    let batch = model.generate(&params).unwrap();
    (dir, model, params, batch)
}

fn edit_toml(dir: &Path, from: &str, to: &str) {
    let path = dir.join("model.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "model.toml lacks `{from}`:\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, Device::Cpu) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_bundled_models_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["face", "hand", "background"] {
        let m = Model::load(&root.join(name), Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.name(), name);
        assert_eq!(m.spec.classes, vec![name.to_string()]);
    }
}

#[test]
fn missing_tensors_are_listed() {
    let dir = model_dir();
    edit_toml(dir.path(), "num_layers = 3", "num_layers = 4");
    let err = load_err(dir.path());
    assert!(err.contains("missing tensor `mapping.fc3.weight`"), "{err}");
    assert!(err.contains("missing tensor `mapping.fc3.bias`"), "{err}");
    assert!(err.contains("weights.safetensors"), "{err}");
}

#[test]
fn extra_tensors_are_listed() {
    let dir = model_dir();
    edit_toml(dir.path(), "num_layers = 3", "num_layers = 2");
    let err = load_err(dir.path());
    assert!(err.contains("unexpected tensor `mapping.fc2.weight`"), "{err}");
}

#[test]
fn misshaped_tensors_are_listed_with_both_shapes() {
    let dir = model_dir();
    edit_toml(dir.path(), "w_dim = 8", "w_dim = 9");
    let err = load_err(dir.path());
    assert!(err.contains("tensor `mapping.w_avg` has shape [8], the settings need [9]"), "{err}");
}

#[test]
fn corrupt_and_missing_files_name_the_file() {
    let dir = model_dir();
    let weights = dir.path().join("weights.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("weights.safetensors") && err.contains("safetensors"), "{err}");

    std::fs::write(&weights, b"not a safetensors file at all").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("weights.safetensors"), "{err}");

    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(Model::load(dir.path(), Device::Cpu), Err(ModelError::Io { .. })));

    std::fs::remove_file(dir.path().join("model.toml")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.toml"), "{err}");
}

#[test]
fn unknown_and_invalid_settings_name_the_key() {
    let dir = model_dir();
    edit_toml(dir.path(), "num_layers = 3", "num_layers = 3\nmapping_depth = 2");
    let err = load_err(dir.path());
    assert!(err.contains("mapping_depth"), "{err}");

    let dir = model_dir();
    edit_toml(dir.path(), "img_resolution = 16", "img_resolution = 24");
    let err = load_err(dir.path());
    assert!(err.contains("img_resolution"), "{err}");
}

#[test]
fn bad_generation_parameters_are_refused_by_name() {
    use mixgan::model::{GenerationParams, NoiseMode, StyleMix};
    let dir = model_dir();
    let model = Model::load(dir.path(), Device::Cpu).unwrap();
    let ok = GenerationParams {
        seed: 1,
        trunc: 1.0,
        trunc_cutoff: None,
        class_index: None,
        noise_mode: NoiseMode::Const,
        mix: None,
        projected: None,
    };
    let cases = [
        (GenerationParams { trunc: f64::NAN, ..ok.clone() }, "trunc"),
        (GenerationParams { class_index: Some(0), ..ok.clone() }, "class_index"),
        (GenerationParams { mix: Some(StyleMix { seed: 2, from: 99 }), ..ok.clone() }, "mix_from"),
    ];
    for (p, field) in cases {
        let err = model.generate(&[p]).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

/// Orders that say where their patch will be fitted get it resized first (on the CPU too, when
/// an order asks; the pipeline asks only on a GPU), each host patch at its own size from the
/// batch's one copy; the others as they came.
#[test]
fn host_patches_with_a_fitting_come_resized_and_the_rest_as_made() {
    use mixgan::batcher::BatchModel;
    use mixgan::compositor::Fitting;
    use mixgan::layout::Fit;
    use mixgan::pipeline::PatchOrder;
    let (_dir, model, params, batch) = model_and_batch(5);
    let res = batch.size()[2];
    let cover = Fitting { fit: Fit::Cover, w: res / 2, h: res / 3 };
    let small = Some(cover);
    let stretched = Some(Fitting { fit: Fit::Stretch, w: res - 1, h: res / 4 });
    let larger = Some(Fitting { fit: Fit::Contain, w: 2 * res, h: 2 * res });
    let plan = [(true, small), (false, small), (true, None), (true, stretched), (true, larger)];
    let orders: Vec<_> = params
        .iter()
        .zip(plan)
        .map(|(p, (to_host, fitting))| PatchOrder { params: p.clone(), to_host, fitting })
        .collect();
    let patches = model.run(&orders).unwrap();
    assert_eq!(patches.len(), 5);
    let sizes: Vec<_> = patches.iter().map(|p| p.size()).collect();
    let (h, w) = cover.resized(res, res);
    assert_eq!(sizes[0][1..], [h, w]);
    assert!(h < res && w < res);
    assert_eq!(sizes[3][1..], [res / 4, res - 1]);
    assert_eq!(sizes[4][1..], [2 * res, 2 * res], "enlarged first");
    for i in [1, 2] {
        assert_eq!(sizes[i][1..], [res, res], "patch {i} was not to be resized");
    }
    for (i, (patch, order)) in patches.iter().zip(&orders).enumerate() {
        let row = batch.get(i as i64);
        let expected = match (order.to_host, order.fitting) {
            (true, Some(f)) => f.resize_first(&row).unwrap().unwrap_or(row),
            _ => row,
        };
        assert!(patch.equal(&expected), "patch {i}");
    }
}

#[test]
fn a_batch_of_orders_gives_each_patch_in_order_where_it_is_wanted() {
    use mixgan::batcher::BatchModel;
    use mixgan::pipeline::PatchOrder;
    let (_dir, model, params, batch) = model_and_batch(4);
    for to_host in [[false; 4], [true; 4], [true, false, false, true]] {
        let orders: Vec<_> = params
            .iter()
            .zip(to_host)
            .map(|(p, to_host)| PatchOrder { params: p.clone(), to_host, fitting: None })
            .collect();
        let patches = model.run(&orders).unwrap();
        assert_eq!(patches.len(), 4);
        for (i, patch) in patches.iter().enumerate() {
            assert_eq!(patch.device(), Device::Cpu);
            assert!(patch.equal(&batch.get(i as i64)), "{to_host:?}: patch {i} is not the batch's row {i}");
        }
    }
}
