//! Generators served as TorchScript (StyleGAN3 and anything custom), by contract:
//! `mapping.pt` takes (z [N, z_dim], c [N, c_dim]) to ws [N, num_ws, w_dim] without
//! truncation, and `synthesis.pt` takes ws to images [N, C, H, W] in [-1, 1]. mixgan does
//! truncation and style mixing in w space itself, with the model's `mapping.w_avg`.

use std::path::Path;

use tch::{CModule, Device, TchError, Tensor};

use super::ModelError;

pub struct ScriptGenerator {
    mapping: CModule,
    synthesis: CModule,
    pub w_avg: Tensor,
    num_ws: i64,
    device: Device,
}

fn load(path: &Path, device: Device) -> Result<CModule, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Io {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut m = CModule::load_on_device(path, device).map_err(|e| ModelError::Weights {
        path: path.into(),
        problems: vec![format!("not a loadable TorchScript module: {e}")],
    })?;
    m.set_eval();
    Ok(m)
}

// SAFETY: as for `StyleGan2`: `w_avg` is private, written once when loaded and only read
// afterwards; libtorch allows concurrent reads.
unsafe impl Sync for ScriptGenerator {}

impl ScriptGenerator {
    pub fn load(
        mapping: &Path,
        synthesis: &Path,
        w_avg: Tensor,
        num_ws: i64,
        device: Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            mapping: load(mapping, device)?,
            synthesis: load(synthesis, device)?,
            w_avg,
            num_ws,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn num_ws(&self) -> i64 {
        self.num_ws
    }

    pub fn mapping(&self, z: &Tensor, c: &Tensor) -> Result<Tensor, TchError> {
        let _guard = tch::no_grad_guard();
        let ws = self.mapping.forward_ts(&[z, c])?;
        let size = ws.size();
        if size.len() != 3 || size[1] != self.num_ws {
            return Err(TchError::Shape(format!(
                "mapping.pt returned {size:?}; the contract is [N, {}, w_dim]",
                self.num_ws
            )));
        }
        Ok(ws)
    }

    pub fn synthesis(&self, ws: &Tensor) -> Result<Tensor, TchError> {
        let _guard = tch::no_grad_guard();
        self.synthesis.forward_ts(&[ws])
    }
}
