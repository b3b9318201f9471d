//! The weights file: a safetensors file under the tensor names of NVIDIA's
//! `G_ema.state_dict()`, checked name by name and shape by shape against the settings before
//! anything is built from it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::spec::{Architecture, GeneratorSettings};
use super::ModelError;

/// Every tensor a StyleGAN2 generator with these settings has, with its shape.
pub fn expected_tensors(g: &GeneratorSettings) -> BTreeMap<String, Vec<i64>> {
    let mut t = BTreeMap::new();
    let m = &g.mapping_kwargs;
    let s = &g.synthesis_kwargs;
    let embed = if g.c_dim > 0 { m.embed_features.unwrap_or(g.w_dim) } else { 0 };
    let feats = m.layer_features.unwrap_or(g.w_dim);
    if g.c_dim > 0 {
        t.insert("mapping.embed.weight".into(), vec![embed, g.c_dim]);
        t.insert("mapping.embed.bias".into(), vec![embed]);
    }
    for i in 0..m.num_layers {
        let fin = if i == 0 { g.z_dim + embed } else { feats };
        let fout = if i == m.num_layers - 1 { g.w_dim } else { feats };
        t.insert(format!("mapping.fc{i}.weight"), vec![fout, fin]);
        t.insert(format!("mapping.fc{i}.bias"), vec![fout]);
    }
    t.insert("mapping.w_avg".into(), vec![g.w_dim]);

    let taps = s.resample_filter.len() as i64;
    let filter = if taps >= 8 { vec![taps] } else { vec![taps, taps] };
    let k = s.kernel_size;
    let mut layer = |p: &str, cin: i64, cout: i64, res: i64, kernel: i64, styled: bool| {
        t.insert(format!("{p}.affine.weight"), vec![cin, g.w_dim]);
        t.insert(format!("{p}.affine.bias"), vec![cin]);
        t.insert(format!("{p}.weight"), vec![cout, cin, kernel, kernel]);
        t.insert(format!("{p}.bias"), vec![cout]);
        if styled {
            t.insert(format!("{p}.resample_filter"), filter.clone());
            if s.use_noise {
                t.insert(format!("{p}.noise_const"), vec![res, res]);
                t.insert(format!("{p}.noise_strength"), vec![]);
            }
        }
    };
    for res in g.block_resolutions() {
        let b = format!("synthesis.b{res}");
        let cout = g.channels(res);
        if res == 4 {
            layer(&format!("{b}.conv1"), cout, cout, res, k, true);
        } else {
            let cin = g.channels(res / 2);
            layer(&format!("{b}.conv0"), cin, cout, res, k, true);
            layer(&format!("{b}.conv1"), cout, cout, res, k, true);
        }
        if g.has_torgb(res) {
            layer(&format!("{b}.torgb"), cout, g.img_channels, res, 1, false);
        }
    }
    for res in g.block_resolutions() {
        let b = format!("synthesis.b{res}");
        let cout = g.channels(res);
        t.insert(format!("{b}.resample_filter"), filter.clone());
        if res == 4 {
            t.insert(format!("{b}.const"), vec![cout, 4, 4]);
        } else if s.architecture == Architecture::Resnet {
            t.insert(format!("{b}.skip.weight"), vec![cout, g.channels(res / 2), 1, 1]);
            t.insert(format!("{b}.skip.resample_filter"), filter.clone());
        }
    }
    t
}

/// Reads the weights file and checks it against the settings; the tensors come back as fp32
/// on `device`. Every problem is listed, not only the first.
pub fn load(path: &Path, g: &GeneratorSettings, device: Device) -> Result<HashMap<String, Tensor>, ModelError> {
    load_expected(path, &expected_tensors(g), device)
}

/// Reads exactly the `names` (with their shapes) from a weights file.
pub fn load_named(
    path: &Path,
    names: &[(&str, Vec<i64>)],
    device: Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let expected: BTreeMap<String, Vec<i64>> = names.iter().map(|(n, s)| (n.to_string(), s.clone())).collect();
    load_expected(path, &expected, device)
}

fn load_expected(
    path: &Path,
    expected: &BTreeMap<String, Vec<i64>>,
    device: Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        problems: vec![format!("not a readable safetensors file: {e}")],
    })?;
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match file.tensor(name) {
            Err(_) => problems.push(format!("missing tensor `{name}` (shape {shape:?})")),
            Ok(view) => {
                let got: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if &got != shape {
                    problems.push(format!("tensor `{name}` has shape {got:?}, the settings need {shape:?}"));
                }
                if kind_of(view.dtype()).is_none() {
                    problems.push(format!("tensor `{name}` has dtype {:?}; use F32, F16, BF16 or F64", view.dtype()));
                }
            }
        }
    }
    let mut extra: Vec<String> =
        file.names().into_iter().filter(|n| !expected.contains_key(*n)).map(|n| n.to_string()).collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|n| format!("unexpected tensor `{n}`: the settings have no such layer")));
    if !problems.is_empty() {
        return Err(ModelError::Weights { path: path.to_path_buf(), problems });
    }
    let mut out = HashMap::new();
    for name in expected.keys() {
        let view = file.tensor(name).expect("checked above");
        let kind = kind_of(view.dtype()).expect("checked above");
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_to_device(device))
            .map_err(ModelError::Torch)?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

fn kind_of(d: Dtype) -> Option<Kind> {
    match d {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}
