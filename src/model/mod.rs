//! Model loading and the generators: reads a model directory (`model.toml` + weights), builds
//! its generator on a device, and turns generation parameters (seed, truncation, class, noise,
//! style mixing) into image tensors. It knows nothing of layouts, compositing or HTTP.

pub mod device;
pub mod graphs;
pub mod heap;
pub mod kernels;
pub mod modconv;
pub mod ops;
pub mod precision;
pub mod project;
pub mod settings;
pub mod spec;
pub mod stylegan2;
pub mod torchscript;
pub mod tuning;
pub mod weights;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use thiserror::Error;

use crate::latent;
pub use device::{DeviceChoice, DeviceError};
pub use precision::Precision;
pub use project::Watch;
pub use spec::{GenerationDefaults, GeneratorSettings, ModelKind, ModelSpec, NoiseMode};
pub use stylegan2::{ConvPath, NoisePlan, StyleGan2};
pub use torchscript::ScriptGenerator;

/// A model's generator: native StyleGAN2 or TorchScript by contract.
pub enum Generator {
    Native(Box<StyleGan2>),
    Script(ScriptGenerator),
}

impl Generator {
    pub fn device(&self) -> Device {
        match self {
            Self::Native(g) => g.device(),
            Self::Script(g) => g.device(),
        }
    }

    pub fn num_ws(&self) -> i64 {
        match self {
            Self::Native(g) => g.num_ws(),
            Self::Script(g) => g.num_ws(),
        }
    }

    fn mapping(&self, z: &Tensor, c: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
        match self {
            Self::Native(g) => g.mapping(z, c),
            Self::Script(g) => {
                let empty;
                let c = match c {
                    Some(c) => c,
                    None => {
                        empty = Tensor::f_zeros([z.size()[0], 0], (Kind::Float, g.device()))?;
                        &empty
                    }
                };
                g.mapping(z, c)
            }
        }
    }

    fn truncate(&self, ws: &Tensor, psi: &[f64], cutoff: &[Option<usize>]) -> Result<Tensor, tch::TchError> {
        match self {
            Self::Native(g) => g.truncate(ws, psi, cutoff),
            Self::Script(g) => stylegan2::truncate(ws, &g.w_avg, g.num_ws(), psi, cutoff),
        }
    }
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("model setting `{field}`: {reason}")]
    InvalidSettings { field: String, reason: String },
    #[error("{path} does not fit the model settings:\n  - {}", problems.join("\n  - "))]
    Weights { path: PathBuf, problems: Vec<String> },
    #[error("generation parameter `{field}`: {reason}")]
    InvalidParam { field: String, reason: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A search was told to stop (its request was cancelled) before it finished.
    #[error("stopped: the request was cancelled")]
    Stopped,
}

/// One image to generate: NVIDIA `gen_images.py`'s options, per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub seed: u32,
    /// Truncation psi (1 = none).
    pub trunc: f64,
    /// Truncate only the first N ws.
    pub trunc_cutoff: Option<usize>,
    /// One-hot class label of a conditional model.
    pub class_index: Option<usize>,
    /// `random` noise is seeded by `seed` too, so it repeats for the same parameters.
    pub noise_mode: NoiseMode,
    pub mix: Option<StyleMix>,
    /// ws [num_ws * w_dim] found by projection; they replace the seed's (untruncated),
    /// and `mix` still applies over them.
    pub projected: Option<std::sync::Arc<Vec<f32>>>,
}

/// Style mixing: ws from `from` onwards come from `seed`'s latent, truncated alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StyleMix {
    pub seed: u32,
    pub from: usize,
}

/// A loaded model: its declaration and its generator on a device.
pub struct Model {
    pub spec: ModelSpec,
    pub dir: PathBuf,
    pub generator: Generator,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({})", self.name())
    }
}

fn bad(field: &str, reason: String) -> ModelError {
    ModelError::InvalidParam { field: field.into(), reason }
}

impl Model {
    /// Reads, checks and builds the model in `dir` on `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, ModelError> {
        let spec = ModelSpec::read(dir)?;
        let path = spec.weights_path(dir)?;
        let generator = match &spec.torchscript {
            None => {
                let tensors = weights::load(&path, &spec.generator, device)?;
                let mut g = StyleGan2::new(spec.generator.clone(), tensors, device)?;
                g.set_precision(spec.precision);
                Generator::Native(Box::new(g))
            }
            Some(ts) => {
                let mut tensors = weights::load_named(&path, &[("mapping.w_avg", vec![spec.generator.w_dim])], device)?;
                let w_avg = tensors.remove("mapping.w_avg").expect("checked by load_named");
                let mapping = spec::inside_dir("torchscript.mapping", &ts.mapping, dir)?;
                let synthesis = spec::inside_dir("torchscript.synthesis", &ts.synthesis, dir)?;
                Generator::Script(ScriptGenerator::load(&mapping, &synthesis, w_avg, ts.num_ws, ts.batch, device)?)
            }
        };
        Ok(Self { spec, dir: dir.to_path_buf(), generator })
    }

    /// How the native generator runs its modulated convolutions (TorchScript: no effect).
    pub fn set_conv_path(&mut self, path: ConvPath) {
        if let Generator::Native(g) = &mut self.generator {
            g.set_conv_path(path);
        }
    }

    /// Whether the native generator folds its upsampling filter into its weights (`None`, the
    /// default: by measurement where its CUDA kernels run; see `StyleGan2::fold_filters`).
    /// TorchScript: no effect.
    pub fn set_fold_filters(&mut self, fold: Option<bool>) {
        if let Generator::Native(g) = &mut self.generator {
            g.set_fold_filters(fold);
        }
    }

    /// The upsampling blocks' measured filter choices so far (native generators on CUDA).
    pub fn fold_choices(&self) -> Vec<tuning::FoldChoice> {
        match &self.generator {
            Generator::Native(g) => g.fold_choices(),
            _ => Vec::new(),
        }
    }

    /// Batch sizes the native generator has recorded as CUDA graphs, and why one could not be.
    pub fn graphs_summary(&self) -> (usize, Option<String>) {
        match &self.generator {
            Generator::Native(g) => g.graphs_summary(),
            _ => (0, None),
        }
    }

    /// The arithmetic the native generator's synthesis runs in (TorchScript: no effect).
    pub fn set_precision(&mut self, precision: Precision) {
        if let Generator::Native(g) = &mut self.generator {
            g.set_precision(precision);
        }
    }

    /// The native generator's precision; TorchScript models run as exported.
    pub fn precision(&self) -> Option<Precision> {
        match &self.generator {
            Generator::Native(g) => Some(g.precision()),
            Generator::Script(_) => None,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The parameters for `seed` with this model's defaults; a conditional model without a
    /// default class gets class 0.
    pub fn default_params(&self, seed: u32) -> GenerationParams {
        let d = &self.spec.defaults;
        GenerationParams {
            seed,
            trunc: d.trunc,
            trunc_cutoff: d.trunc_cutoff,
            class_index: if self.spec.generator.c_dim > 0 { Some(d.class_index.unwrap_or(0)) } else { None },
            noise_mode: d.noise_mode,
            mix: None,
            projected: None,
        }
    }

    /// The native generator, if [`Model::project`] works on this model; else why not.
    fn projector(&self) -> Result<&StyleGan2, ModelError> {
        match &self.generator {
            Generator::Native(g) if self.spec.generator.c_dim == 0 => Ok(g),
            _ => Err(bad(
                "project",
                format!("model `{}` cannot project: only unconditional native StyleGAN2 models can", self.name()),
            )),
        }
    }

    pub fn can_project(&self) -> bool {
        self.projector().is_ok()
    }

    /// Checks that the model can project, for validating requests before any work.
    pub fn check_project(&self) -> Result<(), ModelError> {
        self.projector().map(|_| ())
    }

    /// ws [N, num_ws, w_dim] whose pictures match `targets` [N, 3, R, R] where `weights`
    /// [N, 1, R, R] say, searched as one batch (see [`project::project`]).
    /// Stops, with [`ModelError::Stopped`], within one step of `watch.stop` being set.
    pub fn project(
        &self,
        targets: &Tensor,
        weights: &Tensor,
        steps: usize,
        watch: Watch,
    ) -> Result<Tensor, ModelError> {
        project::project(self.projector()?, targets, weights, steps, watch)
    }

    /// A short search for one blank target, for a server's warm-up: a process's first search
    /// tunes cuDNN's kernels for the backward pass and, with `cuda_graphs`, records its step
    /// for the first time (a 100-step repair of the 64 px face took 1.34-1.45 s in a fresh
    /// process on one H200, 0.15 s once warm), which no request should pay.
    pub fn warm_search(&self) -> Result<(), ModelError> {
        const STEPS: usize = 3; // as usual, recorded, replayed
        let res = self.spec.generator.img_resolution;
        let device = self.generator.device();
        let targets = Tensor::f_zeros([1, 3, res, res], (Kind::Float, device))?;
        let weights = Tensor::f_ones([1, 1, res, res], (Kind::Float, device))?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        self.project(&targets, &weights, STEPS, Watch::new(&stop)).map(|_| ())
    }

    /// ws near each of `params`' own whose pictures match `targets` [N, 3, R, R] where
    /// `weights` [N, 1, R, R] say, held near the seeds' by `hold` (see [`project::harmonize`]).
    pub fn harmonize(
        &self,
        params: &[GenerationParams],
        targets: &Tensor,
        weights: &Tensor,
        steps: usize,
        hold: f64,
        watch: Watch,
    ) -> Result<Tensor, ModelError> {
        let g = self.projector()?;
        let start = tch::no_grad(|| self.ws(params))?;
        let modes: Vec<NoiseMode> = params.iter().map(|p| p.noise_mode).collect();
        let seeds: Vec<u64> = params.iter().map(|p| u64::from(p.seed)).collect();
        let noise = stylegan2::NoisePlan { modes: &modes, seeds: &seeds };
        project::harmonize(g, &start, (targets, weights), steps, hold, noise, watch)
    }

    /// Checks one sample's parameters against this model.
    pub fn check(&self, p: &GenerationParams) -> Result<(), ModelError> {
        let g = &self.spec.generator;
        if !p.trunc.is_finite() || p.trunc.abs() > 1e3 {
            return Err(bad("trunc", format!("{} is not a finite psi", p.trunc)));
        }
        match (p.class_index, g.c_dim) {
            (Some(k), 0) => {
                return Err(bad("class_index", format!("{k} given, but model `{}` is unconditional", self.name())))
            }
            (Some(k), c) if k as i64 >= c => {
                return Err(bad("class_index", format!("{k} is not below the model's {c} classes")))
            }
            (None, c) if c > 0 => {
                return Err(bad(
                    "class_index",
                    format!("model `{}` is conditional: give a class index below {c}", self.name()),
                ))
            }
            _ => {}
        }
        if matches!(self.generator, Generator::Script(_)) && p.noise_mode != NoiseMode::Const {
            return Err(bad(
                "noise_mode",
                format!("model `{}` is TorchScript and uses the noise it was exported with: give const", self.name()),
            ));
        }
        if let Some(m) = p.mix {
            if m.from as i64 > self.generator.num_ws() {
                return Err(bad("mix_from", format!("{} is past the model's {} ws", m.from, self.generator.num_ws())));
            }
        }
        Ok(())
    }

    fn latents(
        &self,
        seeds: impl Iterator<Item = u32>,
        classes: &[Option<usize>],
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let g = &self.spec.generator;
        let z: Vec<f32> = seeds.flat_map(|s| latent::randn(s, g.z_dim as usize)).map(|v| v as f32).collect();
        let n = classes.len() as i64;
        let device = self.generator.device();
        let z = device::upload(&Tensor::from_slice(&z).f_view([n, g.z_dim])?, device)?;
        let c = if g.c_dim > 0 {
            let mut onehot = vec![0f32; (n * g.c_dim) as usize];
            for (i, k) in classes.iter().enumerate() {
                onehot[i * g.c_dim as usize + k.unwrap_or(0)] = 1.0;
            }
            Some(device::upload(&Tensor::from_slice(&onehot).f_view([n, g.c_dim])?, device)?)
        } else {
            None
        };
        Ok((z, c))
    }

    /// ws for a batch, truncated and style-mixed per sample: [N, num_ws, w_dim].
    pub fn ws(&self, params: &[GenerationParams]) -> Result<Tensor, ModelError> {
        for p in params {
            self.check(p)?;
        }
        let gen = &self.generator;
        let classes: Vec<Option<usize>> = params.iter().map(|p| p.class_index).collect();
        let psi: Vec<f64> = params.iter().map(|p| p.trunc).collect();
        let cutoff: Vec<Option<usize>> = params.iter().map(|p| p.trunc_cutoff).collect();
        let (z, c) = self.latents(params.iter().map(|p| p.seed), &classes)?;
        let mut ws = gen.truncate(&gen.mapping(&z, c.as_ref())?, &psi, &cutoff)?;
        if params.iter().any(|p| p.projected.is_some()) {
            ws = ws.f_contiguous()?.f_detach_copy()?;
            let shape = [gen.num_ws(), self.spec.generator.w_dim];
            for (i, p) in params.iter().enumerate() {
                if let Some(w) = &p.projected {
                    let w = device::upload(&Tensor::f_from_slice(w)?.f_view(shape)?, gen.device())?;
                    ws.f_select(0, i as i64)?.f_copy_(&w)?;
                }
            }
        }
        let mixed: Vec<(usize, StyleMix)> =
            params.iter().enumerate().filter_map(|(i, p)| p.mix.map(|m| (i, m))).collect();
        if mixed.is_empty() {
            return Ok(ws);
        }
        let mix_classes: Vec<Option<usize>> = mixed.iter().map(|(i, _)| classes[*i]).collect();
        let (zm, cm) = self.latents(mixed.iter().map(|(_, m)| m.seed), &mix_classes)?;
        let mix_psi: Vec<f64> = mixed.iter().map(|(i, _)| psi[*i]).collect();
        let mix_cut: Vec<Option<usize>> = mixed.iter().map(|(i, _)| cutoff[*i]).collect();
        let wm = gen.truncate(&gen.mapping(&zm, cm.as_ref())?, &mix_psi, &mix_cut)?;
        let ws = ws.f_contiguous()?.f_detach_copy()?;
        for (row, (i, m)) in mixed.iter().enumerate() {
            let len = gen.num_ws() - m.from as i64;
            if len > 0 {
                let src = wm.f_select(0, row as i64)?.f_narrow(0, m.from as i64, len)?;
                ws.f_select(0, *i as i64)?.f_narrow(0, m.from as i64, len)?.f_copy_(&src)?;
            }
        }
        Ok(ws)
    }

    /// Milliseconds per synthesis block for one batch (native generators only).
    pub fn profile_blocks(&self, params: &[GenerationParams]) -> Result<Option<Vec<(i64, f64)>>, ModelError> {
        let Generator::Native(g) = &self.generator else { return Ok(None) };
        let _guard = tch::no_grad_guard();
        let ws = self.ws(params)?;
        let modes: Vec<NoiseMode> = params.iter().map(|p| p.noise_mode).collect();
        let seeds: Vec<u64> = params.iter().map(|p| u64::from(p.seed)).collect();
        Ok(Some(g.profile_blocks(&ws, NoisePlan { modes: &modes, seeds: &seeds })?))
    }

    /// Generates a batch: images [N, img_channels, res, res] as floats, NVIDIA's range.
    pub fn generate(&self, params: &[GenerationParams]) -> Result<Tensor, ModelError> {
        if params.is_empty() {
            return Err(bad("seeds", "no images requested".into()));
        }
        let _guard = tch::no_grad_guard();
        let ws = self.ws(params)?;
        let modes: Vec<NoiseMode> = params.iter().map(|p| p.noise_mode).collect();
        let seeds: Vec<u64> = params.iter().map(|p| u64::from(p.seed)).collect();
        Ok(match &self.generator {
            Generator::Native(g) => g.synthesis(&ws, NoisePlan { modes: &modes, seeds: &seeds })?,
            Generator::Script(g) => {
                // A module traced by someone else must draw what model.toml declares (alpha
                // needs its fourth channel).
                let img = g.synthesis(&ws)?;
                let (size, g) = (img.size(), &self.spec.generator);
                if size.len() != 4 || size[1] != g.img_channels || size[2] != g.img_resolution {
                    return Err(ModelError::Torch(tch::TchError::Shape(format!(
                        "synthesis.pt returned {size:?}; model.toml declares [N, {}, {res}, {res}]",
                        g.img_channels,
                        res = g.img_resolution
                    ))));
                }
                img
            }
        })
    }
}

/// NVIDIA's conversion to pixels: `(x * 127.5 + 128).clamp(0, 255)` to uint8, channels last,
/// on the host.
pub fn to_pixels(images: &Tensor) -> Result<Tensor, tch::TchError> {
    let pixels = images
        .f_permute([0, 2, 3, 1])?
        .f_mul_scalar(127.5)?
        .f_add_scalar(128.0)?
        .f_clamp(0.0, 255.0)?
        .f_to_kind(Kind::Uint8)?
        // Interleave on the device: a strided copy to the host, or a transpose on it, is slow.
        .f_contiguous()?;
    device::download(&pixels)
}

/// libtorch's threads per operation; 0 means 1. One thread is the default everywhere the
/// pipeline runs: tasks run side by side instead, and a picture's bytes then do not depend
/// on the machine's core count (more threads may round reductions differently).
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads.max(1) as i32);
}

/// The model directories under `root`: each folder holding a `model.toml`, sorted by name.
pub fn model_dirs(root: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let entries = std::fs::read_dir(root).map_err(|source| ModelError::Io { path: root.to_path_buf(), source })?;
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("model.toml").is_file()).collect();
    dirs.sort();
    Ok(dirs)
}
