//! Generators served as TorchScript (StyleGAN3 and anything custom), by contract:
//! `mapping.pt` takes (z [N, z_dim], c [N, c_dim]) to ws [N, num_ws, w_dim] without
//! truncation, and `synthesis.pt` takes ws to images [N, C, H, W] in [-1, 1]. mixgan does
//! truncation and style mixing in w space itself, with the model's `mapping.w_avg`.
//! Modules traced at one fixed batch size (`[torchscript] batch`) run in chunks of it.

use std::path::Path;

use tch::{CModule, Device, TchError, Tensor};

use super::ModelError;

pub struct ScriptGenerator {
    mapping: CModule,
    synthesis: CModule,
    pub w_avg: Tensor,
    num_ws: i64,
    batch: Option<i64>,
    device: Device,
}

/// A TorchScript module in eval mode, or why it cannot be loaded.
pub(crate) fn load(path: &Path, device: Device) -> Result<CModule, ModelError> {
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
        batch: Option<i64>,
        device: Device,
    ) -> Result<Self, ModelError> {
        Ok(Self { mapping: load(mapping, device)?, synthesis: load(synthesis, device)?, w_avg, num_ws, batch, device })
    }

    /// `module` on `inputs` (batched along dim 0), in chunks of the fixed batch size if the
    /// model has one; a short last chunk is padded with copies of its last row.
    fn run(&self, module: &CModule, inputs: &[&Tensor]) -> Result<Tensor, TchError> {
        let _guard = tch::no_grad_guard();
        let n = inputs[0].size()[0];
        let b = match self.batch {
            Some(b) if b != n => b,
            _ => return module.forward_ts(inputs),
        };
        let mut outputs = Vec::new();
        for start in (0..n).step_by(b as usize) {
            let len = b.min(n - start);
            let chunk = inputs
                .iter()
                .map(|t| {
                    let part = t.f_narrow(0, start, len)?;
                    if len == b {
                        return Ok(part);
                    }
                    let mut pad = part.size();
                    pad[0] = b - len;
                    let last = part.f_narrow(0, len - 1, 1)?.f_expand(pad.as_slice(), false)?;
                    Tensor::f_cat(&[&part, &last], 0)
                })
                .collect::<Result<Vec<_>, TchError>>()?;
            let refs: Vec<&Tensor> = chunk.iter().collect();
            outputs.push(module.forward_ts(&refs)?.f_narrow(0, 0, len)?);
        }
        Tensor::f_cat(&outputs, 0)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn num_ws(&self) -> i64 {
        self.num_ws
    }

    pub fn mapping(&self, z: &Tensor, c: &Tensor) -> Result<Tensor, TchError> {
        let ws = self.run(&self.mapping, &[z, c])?;
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
        self.run(&self.synthesis, &[ws])
    }
}
