//! The StyleGAN2 generator (mapping + synthesis) on libtorch, built from a checked weights
//! map. Owns the network's structure and how a pass runs (precision, convolution path, the
//! filter's folding, recorded CUDA graphs); its layers are in `layers.rs`. It does not read
//! files, pick seeds or encode images.

mod layers;

use std::collections::HashMap;

use tch::{Device, TchError, Tensor};

use crate::error::UnknownChoice;
use crate::model::graphs::{self, Graphs};
use crate::model::kernels::{self, Kernels};
use crate::model::precision::Precision;
use crate::model::spec::{GeneratorSettings, NoiseMode};
use crate::model::tuning::{FoldChoice, FoldChoices, FoldKey};
use layers::{Block, BlockPlan, Features, Mapping};

type Result<T> = std::result::Result<T, TchError>;

/// Per-layer noise for a batch: each sample's mode, and the seed of its "random" noise
/// (random noise is a fixed function of that seed and the layer, so pictures repeat).
#[derive(Clone, Copy)]
pub struct NoisePlan<'a> {
    pub modes: &'a [NoiseMode],
    pub seeds: &'a [u64],
}

impl NoisePlan<'_> {
    pub fn uniform(&self) -> Option<NoiseMode> {
        let first = *self.modes.first()?;
        self.modes.iter().all(|&m| m == first).then_some(first)
    }
}

/// How one synthesis pass runs.
#[derive(Clone, Copy)]
struct Pass<'a> {
    noise: NoisePlan<'a>,
    fused: bool,
    /// On CUDA pictures (and resnet skips) upsample bilinearly: the same numbers as the
    /// filter, without a depthwise convolution.
    cuda: bool,
    /// Fold the upsampling filter into the convolutions.
    fold: bool,
    /// The generator's own kernels (CUDA's, or the CPU's passes), where they load and no
    /// gradient is recorded.
    kernels: Option<&'static Kernels>,
}

/// How the modulated convolutions run for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPath {
    /// Grouped convolution with per-sample weights (NVIDIA's inference path).
    Fused,
    /// One shared convolution between activation scalings.
    Unfused,
    /// Unfused: measured faster on the CPU, and on CUDA it lets the upsampling filter fold
    /// into the shared weights (a 1024 px config-F generator on one H200, batch 1: see
    /// docs/performance.md).
    Auto,
}

impl std::str::FromStr for ConvPath {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownChoice> {
        match s {
            "auto" => Ok(Self::Auto),
            "fused" => Ok(Self::Fused),
            "unfused" => Ok(Self::Unfused),
            _ => Err(UnknownChoice { given: s.into(), choices: "auto, fused, unfused" }),
        }
    }
}

pub struct StyleGan2 {
    pub settings: GeneratorSettings,
    mapping: Mapping,
    blocks: Vec<Block>,
    num_ws: i64,
    device: Device,
    conv_path: ConvPath,
    precision: Precision,
    /// Whether upsampling layers fold the FIR filter into their weights (one convolution with
    /// four times the multiply-adds) or run the strided convolution and then the filter.
    /// `None` (the default): where the generator's CUDA kernels run, which filter inside the
    /// layer's epilogue, each upsampling block times both ways once per batch size and keeps
    /// the faster; elsewhere folded on CUDA (libtorch's depthwise filtering is slow there)
    /// and not on the CPU (where the extra multiply-adds cost more than they save).
    fold_filters: Option<bool>,
    /// The measured choices so far.
    folds: FoldChoices,
    /// Passes recorded as CUDA graphs (`cuda_graphs`), by batch size and noise; recorded with
    /// the settings above, so the setters below forget them.
    graphs: Graphs<GraphKey>,
}

/// What a recorded pass is specific to besides the generator's settings: the batch size, and
/// the noise every sample uses (constant or none; random noise is made on the host per seed,
/// so such passes are not recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GraphKey {
    batch: i64,
    noise: NoiseMode,
}

// SAFETY: `tch::Tensor` is not `Sync` because its methods could mutate shared storage. A
// `StyleGan2`'s tensors are private, written only while it is built, and only read by the
// forward pass afterwards; libtorch allows concurrent reads of a tensor from many threads.
unsafe impl Sync for StyleGan2 {}

impl StyleGan2 {
    /// Builds the network from a weights map that `weights::load` has checked.
    pub fn new(settings: GeneratorSettings, mut weights: HashMap<String, Tensor>, device: Device) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let mapping = Mapping::new(&settings, &mut weights)?;
        let blocks = settings
            .block_resolutions()
            .into_iter()
            .map(|res| Block::new(&settings, &mut weights, res))
            .collect::<Result<_>>()?;
        let num_ws = settings.num_ws();
        Ok(Self {
            settings,
            mapping,
            blocks,
            num_ws,
            device,
            conv_path: ConvPath::Auto,
            precision: Precision::Auto,
            fold_filters: None,
            folds: FoldChoices::default(),
            graphs: Graphs::default(),
        })
    }

    pub fn num_ws(&self) -> i64 {
        self.num_ws
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// z [N, z_dim] (and one-hot c [N, c_dim] for conditional models) to ws [N, num_ws, w_dim].
    pub fn mapping(&self, z: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let w = self.mapping.forward(z, c)?;
        w.f_unsqueeze(1)?.f_repeat([1, self.num_ws, 1])
    }

    pub fn w_avg(&self) -> &Tensor {
        &self.mapping.w_avg
    }

    /// Truncation toward `w_avg` (see [`truncate`]).
    pub fn truncate(&self, ws: &Tensor, psi: &[f64], cutoff: &[Option<usize>]) -> Result<Tensor> {
        truncate(ws, &self.mapping.w_avg, self.num_ws, psi, cutoff)
    }

    /// ws [N, num_ws, w_dim] to images [N, img_channels, res, res] in about [-1, 1], float32,
    /// computed in the generator's `precision`.
    pub fn synthesis(&self, ws: &Tensor, noise: NoisePlan) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let uniform = noise.uniform().filter(|&m| m != NoiseMode::Random);
        if let (Some(device), Some(mode)) = (graphs::wanted(self.device), uniform) {
            let key = GraphKey { batch: ws.size()[0], noise: mode };
            return self.graphs.run(key, device, ws, |ws| self.run(ws, noise, self.precision, false));
        }
        self.run(ws, noise, self.precision, false)
    }

    /// Passes recorded as CUDA graphs so far, and why one could not be (see [`Graphs::summary`]).
    pub fn graphs_summary(&self) -> (usize, Option<String>) {
        self.graphs.summary()
    }

    /// The arithmetic synthesis runs in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    // Settings change only through these, which forget the passes recorded with the old ones.

    pub fn set_conv_path(&mut self, path: ConvPath) {
        self.conv_path = path;
        self.forget_graphs();
    }

    pub fn set_fold_filters(&mut self, fold: Option<bool>) {
        self.fold_filters = fold;
        self.forget_graphs();
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.forget_graphs();
    }

    /// Drops the recorded passes (after a change to the settings they were recorded with),
    /// once the device has finished any replay still queued: their memory goes back to the
    /// allocator.
    fn forget_graphs(&self) {
        crate::model::device::synchronize(self.device);
        self.graphs.clear();
    }

    /// `synthesis` in float32, recording the autograd graph (for projection).
    pub fn synthesis_graph(&self, ws: &Tensor, noise: NoisePlan) -> Result<Tensor> {
        self.run(ws, noise, Precision::Fp32, true)
    }

    /// Milliseconds each block of one `synthesis` takes, waiting for the device after each
    /// (so the figures add up to more than an unprofiled pass): where the time goes.
    pub fn profile_blocks(&self, ws: &Tensor, noise: NoisePlan) -> Result<Vec<(i64, f64)>> {
        let _guard = tch::no_grad_guard();
        let mut times = Vec::new();
        let sync = || crate::model::device::synchronize(self.device);
        sync();
        let mut t0 = std::time::Instant::now();
        let _img = self.run_observed(ws, noise, self.precision, false, &mut |res| {
            sync();
            times.push((res, t0.elapsed().as_secs_f64() * 1e3));
            t0 = std::time::Instant::now();
        })?;
        Ok(times)
    }

    fn run(&self, ws: &Tensor, noise: NoisePlan, precision: Precision, graph: bool) -> Result<Tensor> {
        self.run_observed(ws, noise, precision, graph, &mut |_| {})
    }

    /// The synthesis; `after_block(res)` is called as each block has been queued.
    fn run_observed(
        &self,
        ws: &Tensor,
        noise: NoisePlan,
        precision: Precision,
        graph: bool,
        after_block: &mut dyn FnMut(i64),
    ) -> Result<Tensor> {
        let fused = self.conv_path == ConvPath::Fused;
        // Autograd cannot see through the kernels: the recorded pass keeps tensor ops.
        let kernels = if graph { None } else { kernels::for_device(self.device) };
        let measure = self.fold_filters.is_none() && kernels.is_some_and(Kernels::filter) && !fused;
        let fold = self.fold_filters.unwrap_or(self.device.is_cuda());
        let pass = Pass { noise, fused, cuda: self.device.is_cuda(), fold, kernels };
        let batch = ws.size()[0];
        let (mut x, mut img): (Option<Features>, Option<Tensor>) = (None, None);
        let mut idx = 0;
        let resolutions = self.settings.block_resolutions();
        for (i, (block, &res)) in self.blocks.iter().zip(&resolutions).enumerate() {
            let (count, used) = block.ws();
            let bws = ws.f_narrow(1, idx, count)?;
            idx += used;
            let kind = precision.block_kind(res, &self.settings, self.device);
            let channels_last = precision.channels_last(res, &self.settings, self.device) && !fused;
            // Unfused, each block scales its output for the next block's first convolution
            // (the kernels as they write it): the same operations as the next layer scaling
            // its own input, one pass fewer with the kernels.
            let next = match (self.blocks.get(i + 1), resolutions.get(i + 1)) {
                (Some(nb), Some(&nres)) if !fused && block.can_scale_for(nb) => {
                    Some((nb, precision.block_kind(nres, &self.settings, self.device)))
                }
                _ => None,
            };
            let plan = BlockPlan { kind, channels_last, next, last: i + 1 == self.blocks.len() };
            let run = |fold: bool| {
                let picture = img.as_ref().map(Tensor::shallow_clone);
                block.forward(x.as_ref().map(Features::again), picture, &bws, Pass { fold, ..pass }, plan)
            };
            let (nx, nimg) = if measure && block.upsamples() {
                let key = FoldKey { res, batch, kind, channels_last };
                match self.folds.get(key) {
                    Some(folded) => run(folded)?,
                    None => self.folds.measure(key, self.device, &run)?,
                }
            } else {
                run(fold)?
            };
            x = Some(nx);
            img = nimg;
            after_block(res);
        }
        Ok(img.expect("the last block has a toRGB layer"))
    }
}

impl StyleGan2 {
    /// The upsampling blocks' measured choices so far (`fold_filters = None`).
    pub fn fold_choices(&self) -> Vec<FoldChoice> {
        self.folds.all()
    }
}

/// Truncation toward `w_avg`: sample i's first `cutoff[i]` ws (all when `None`) move by
/// `psi[i]`. The arithmetic is `torch.lerp`'s, branch for branch.
pub fn truncate(ws: &Tensor, w_avg: &Tensor, num_ws: i64, psi: &[f64], cutoff: &[Option<usize>]) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let n = num_ws as usize;
    if psi.iter().all(|&p| p == 1.0) {
        return Ok(ws.shallow_clone());
    }
    let mut weight = Vec::with_capacity(psi.len() * n);
    for (&p, &c) in psi.iter().zip(cutoff) {
        let upto = c.unwrap_or(n).min(n);
        weight.extend((0..n).map(|l| if l < upto { p as f32 } else { 1.0 }));
    }
    let weight = Tensor::from_slice(&weight).f_view([psi.len() as i64, num_ws, 1])?;
    let weight = crate::model::device::upload(&weight, ws.device())?;
    let diff = ws.f_sub(w_avg)?;
    let low = w_avg.f_add(&diff.f_mul(&weight)?)?;
    let high = ws.f_sub(&diff.f_mul(&weight.f_neg()?.f_add_scalar(1.0)?)?)?;
    low.f_where_self(&weight.f_abs()?.f_lt(0.5)?, &high)
}
