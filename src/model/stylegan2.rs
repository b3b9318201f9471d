//! The StyleGAN2 generator (mapping + synthesis) on libtorch, built from a checked weights
//! map. Owns the network's structure and forward pass; it does not read files, pick seeds
//! or encode images.

use std::collections::HashMap;

use tch::{Device, Kind, TchError, Tensor};

use super::graphs::Graphs;
use super::kernels::{self, Kernels, Picture};
use super::modconv::{input_styles, modulated_1x1, modulated_1x1_weights, Epilogue, Route, StyleConv};
use super::ops::{bias_act, is_half, normalize_2nd_moment, Dense, Filter};
use super::precision::Precision;
use super::spec::{Activation, Architecture, GeneratorSettings, NoiseMode};
use super::tuning::{FoldChoice, FoldChoices, FoldKey};
use crate::error::UnknownChoice;

type Result<T> = std::result::Result<T, TchError>;

fn take(w: &mut HashMap<String, Tensor>, name: &str) -> Tensor {
    w.remove(name).unwrap_or_else(|| panic!("weights were checked, yet `{name}` is missing"))
}

struct Mapping {
    embed: Option<Dense>,
    layers: Vec<Dense>,
    w_avg: Tensor,
}

impl Mapping {
    fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>) -> Result<Self> {
        let m = &g.mapping_kwargs;
        let act = Activation::parse(&m.activation, "").expect("validated");
        let embed = if g.c_dim > 0 {
            let (wt, b) = (take(w, "mapping.embed.weight"), take(w, "mapping.embed.bias"));
            Some(Dense::new(&wt, Some(&b), 1.0, Activation::Linear)?)
        } else {
            None
        };
        let layers = (0..m.num_layers)
            .map(|i| {
                let wt = take(w, &format!("mapping.fc{i}.weight"));
                let b = take(w, &format!("mapping.fc{i}.bias"));
                Dense::new(&wt, Some(&b), m.lr_multiplier, act)
            })
            .collect::<Result<_>>()?;
        Ok(Self { embed, layers, w_avg: take(w, "mapping.w_avg") })
    }

    /// z [N, z_dim] and one-hot c [N, c_dim] to w [N, w_dim].
    fn forward(&self, z: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
        let mut x = normalize_2nd_moment(z)?;
        if let (Some(embed), Some(c)) = (&self.embed, c) {
            let y = normalize_2nd_moment(&embed.forward(c)?)?;
            x = Tensor::f_cat(&[x, y], 1)?;
        }
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

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

struct StyledLayer {
    affine: Dense,
    conv: StyleConv,
    bias: Tensor,
    noise: Option<(Tensor, Tensor)>, // (noise_const [res, res], noise_strength [])
    /// This layer's place in the network: the stream of its random noise.
    index: u64,
    up: Option<Filter>,
    padding: i64,
    act: Activation,
    clamp: Option<f64>,
}

impl StyledLayer {
    fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>, p: &str, up: bool, index: u64) -> Result<Self> {
        let s = &g.synthesis_kwargs;
        let affine_w = take(w, &format!("{p}.affine.weight"));
        let affine_b = take(w, &format!("{p}.affine.bias"));
        let filter = take(w, &format!("{p}.resample_filter"));
        let noise = if s.use_noise {
            Some((take(w, &format!("{p}.noise_const")), take(w, &format!("{p}.noise_strength"))))
        } else {
            None
        };
        Ok(Self {
            affine: Dense::new(&affine_w, Some(&affine_b), 1.0, Activation::Linear)?,
            conv: StyleConv::new(take(w, &format!("{p}.weight")))?,
            bias: take(w, &format!("{p}.bias")),
            noise,
            index,
            up: if up { Some(Filter::from_buffer(&filter)?) } else { None },
            padding: s.kernel_size / 2,
            act: Activation::parse(&s.activation, "").expect("validated"),
            clamp: s.conv_clamp,
        })
    }

    /// The constant noise and its strength, when every sample uses it (it is then part of the
    /// layer's cached constants); otherwise per-sample noise [N, 1, res, res], or none.
    #[allow(clippy::type_complexity)]
    fn noise(&self, plan: NoisePlan, res: i64, device: Device) -> Result<(Option<(&Tensor, &Tensor)>, Option<Tensor>)> {
        let Some((konst, strength)) = &self.noise else { return Ok((None, None)) };
        let random = |seed: u64| -> Result<Tensor> {
            let values = crate::latent::noise(seed, self.index, (res * res) as usize);
            super::device::upload(&Tensor::from_slice(&values).f_view([1, 1, res, res])?, device)
        };
        match plan.uniform() {
            Some(NoiseMode::None) => return Ok((None, None)),
            Some(NoiseMode::Const) => return Ok((Some((konst, strength)), None)),
            _ => {}
        }
        let per: Vec<Tensor> = plan
            .modes
            .iter()
            .zip(plan.seeds)
            .map(|(m, &seed)| match m {
                NoiseMode::Const => konst.f_view([1, 1, res, res]),
                NoiseMode::Random => random(seed),
                NoiseMode::None => konst.f_zeros_like()?.f_view([1, 1, res, res]),
            })
            .collect::<Result<_>>()?;
        Ok((None, Some(Tensor::f_cat(&per, 0)?.f_mul(strength)?)))
    }

    /// The layer's styles [N, in] from its ws [N, w_dim].
    fn styles(&self, w: &Tensor) -> Result<Tensor> {
        self.affine.forward(w)
    }

    /// `then_scale` and `prescaled` as in [`Epilogue::then_scale`] and [`Route::prescaled`].
    fn forward(
        &self,
        x: &Tensor,
        styles: &Tensor,
        pass: Pass,
        gain: f64,
        then_scale: Option<&Tensor>,
        prescaled: Option<&Tensor>,
    ) -> Result<Tensor> {
        let size = x.size();
        let res = if self.up.is_some() { size[2] * 2 } else { size[2] };
        let (const_noise, noise) = self.noise(pass.noise, res, x.device())?;
        let epilogue = Epilogue {
            bias: &self.bias,
            const_noise,
            noise: noise.as_ref(),
            act: self.act,
            gain: self.act.default_gain() * gain,
            clamp: self.clamp.map(|c| c * gain),
            then_scale,
        };
        let route = Route { fused: pass.fused, fold: pass.fold, kernels: pass.kernels, prescaled };
        self.conv.forward(x, styles, self.up.as_ref(), self.padding, route, &epilogue)
    }
}

struct ToRgb {
    affine: Dense,
    weight: Tensor,
    bias: Tensor,
    weight_gain: f64,
    clamp: Option<f64>,
}

impl ToRgb {
    fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>, p: &str) -> Result<Self> {
        let affine_w = take(w, &format!("{p}.affine.weight"));
        let affine_b = take(w, &format!("{p}.affine.bias"));
        let weight = take(w, &format!("{p}.weight"));
        let weight_gain = 1.0 / (weight.size()[1] as f64).sqrt();
        Ok(Self {
            affine: Dense::new(&affine_w, Some(&affine_b), 1.0, Activation::Linear)?,
            weight,
            bias: take(w, &format!("{p}.bias")),
            weight_gain,
            clamp: g.synthesis_kwargs.conv_clamp,
        })
    }

    /// The picture so far (`prev`, at half this block's size, upsampled with `filter`,
    /// bilinearly where `bilinear`) plus the block's contribution, in float32 whatever the
    /// features' type. The kernels upsample StyleGAN2's filter themselves as they add.
    fn forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        prev: Option<&Tensor>,
        (filter, bilinear): (&Filter, bool),
        kernels: Option<&Kernels>,
    ) -> Result<Tensor> {
        let styles = self.affine.forward(w)?.f_mul_scalar(self.weight_gain)?;
        let wm = kernels.map(|_| modulated_1x1_weights(&self.weight, &styles)).transpose()?;
        let with_kernel = |prev: Option<Picture>| match (kernels, &wm) {
            (Some(k), Some(wm)) => k.to_rgb(x, wm, &self.bias, self.clamp, prev),
            _ => Ok(None),
        };
        if filter.is_bilinear() || prev.is_none() {
            if let Some(img) = with_kernel(prev.map(Picture::Half))? {
                return Ok(img);
            }
        }
        let prev = prev.map(|p| filter.upsample2d(p, bilinear)).transpose()?;
        // The upsampled picture is a cropped view; the kernel adds into a dense copy.
        if prev.is_some() {
            let dense = prev.as_ref().map(Tensor::f_contiguous).transpose()?;
            if let Some(img) = with_kernel(dense.as_ref().map(Picture::Same))? {
                return Ok(img);
            }
        }
        let y = self.contribution(x, &styles)?;
        match prev {
            Some(p) => p.f_add(&y),
            None => Ok(y),
        }
    }

    fn contribution(&self, x: &Tensor, styles: &Tensor) -> Result<Tensor> {
        let y = modulated_1x1(x, &self.weight, styles)?;
        let y = bias_act(&y, Some(&self.bias.f_to_kind(y.kind())?), Activation::Linear, 1.0, self.clamp)?;
        if is_half(y.kind()) {
            y.f_to_kind(Kind::Float)?.f_contiguous()
        } else {
            Ok(y)
        }
    }
}

struct Block {
    konst: Option<Tensor>,
    conv0: Option<StyledLayer>,
    conv1: StyledLayer,
    torgb: Option<ToRgb>,
    skip: Option<Tensor>, // resnet: 1x1 weight with its gain folded in
    filter: Filter,
    num_conv: i64,
}

impl Block {
    fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>, res: i64) -> Result<Self> {
        let b = format!("synthesis.b{res}");
        // Noise streams: two per block, numbered by resolution.
        let stream = 2 * res.trailing_zeros() as u64;
        let first = res == 4;
        let skip = if !first && g.synthesis_kwargs.architecture == Architecture::Resnet {
            let wt = take(w, &format!("{b}.skip.weight"));
            let _ = take(w, &format!("{b}.skip.resample_filter"));
            let gain = 1.0 / (wt.size()[1] as f64).sqrt();
            Some(wt.f_mul_scalar(gain)?)
        } else {
            None
        };
        Ok(Self {
            konst: if first { Some(take(w, &format!("{b}.const"))) } else { None },
            conv0: if first { None } else { Some(StyledLayer::new(g, w, &format!("{b}.conv0"), true, stream)?) },
            conv1: StyledLayer::new(g, w, &format!("{b}.conv1"), false, stream + 1)?,
            torgb: if g.has_torgb(res) { Some(ToRgb::new(g, w, &format!("{b}.torgb"))?) } else { None },
            skip,
            filter: Filter::from_buffer(&take(w, &format!("{b}.resample_filter")))?,
            num_conv: if first { 1 } else { 2 },
        })
    }

    /// `kind` is the type the block computes in; `channels_last`, its features' layout.
    fn forward(
        &self,
        x: Option<Tensor>,
        img: Option<Tensor>,
        ws: &Tensor,
        pass: Pass,
        kind: Kind,
        channels_last: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = ws.size()[0];
        let w = |i: i64| ws.f_select(1, i);
        let half = std::f64::consts::FRAC_1_SQRT_2;
        // Channels-last features let oneDNN (CPU) and cuDNN (half precision) pick their fast
        // convolution kernels; the layout then carries through the block's ops.
        let layout = |x: Tensor| -> Result<Tensor> {
            if channels_last {
                x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])
            } else {
                x.f_contiguous()
            }
        };
        let x = match (&self.konst, x, &self.conv0) {
            (Some(k), _, _) => {
                let x = layout(k.f_unsqueeze(0)?.f_repeat([n, 1, 1, 1])?.f_to_kind(kind)?)?;
                self.conv1.forward(&x, &self.conv1.styles(&w(0)?)?, pass, 1.0, None, None)?
            }
            (None, Some(x), Some(conv0)) => {
                // A block that changes the type or runs on CUDA sets its features' layout, as
                // NVIDIA's blocks do; on the CPU in float32 the layout the first block chose
                // carries through (forcing it at every block measured slower).
                let x = if x.kind() != kind || pass.cuda { layout(x.f_to_kind(kind)?)? } else { x };
                let (s0, s1) = (conv0.styles(&w(0)?)?, self.conv1.styles(&w(1)?)?);
                // With the kernels, conv0's epilogue also scales conv1's input: one pass fewer.
                let then_scale = match pass.kernels {
                    Some(_) if !pass.fused => Some(input_styles(&s1, kind)?),
                    _ => None,
                };
                let h = conv0.forward(&x, &s0, pass, 1.0, then_scale.as_ref(), None)?;
                let gain = if self.skip.is_some() { half } else { 1.0 };
                let out = self.conv1.forward(&h, &s1, pass, gain, None, then_scale.as_ref())?;
                match &self.skip {
                    Some(skip) => {
                        let y = x.f_conv2d(&skip.f_to_kind(kind)?, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
                        self.filter.upsample2d(&y, pass.cuda)?.f_mul_scalar(half)?.f_add(&out)?
                    }
                    None => out,
                }
            }
            _ => unreachable!("a block after the first always receives features"),
        };
        let img = match (&self.torgb, img) {
            (Some(torgb), img) => {
                let up = (&self.filter, pass.cuda);
                Some(torgb.forward(&x, &w(self.num_conv)?, img.as_ref(), up, pass.kernels)?)
            }
            (None, Some(img)) => Some(self.filter.upsample2d(&img, pass.cuda)?),
            (None, None) => None,
        };
        Ok((x, img))
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
    /// The generator's own CUDA kernels, where they load and no gradient is recorded.
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
    pub conv_path: ConvPath,
    pub precision: Precision,
    /// Whether upsampling layers fold the FIR filter into their weights (one convolution with
    /// four times the multiply-adds) or run the strided convolution and then the filter.
    /// `None` (the default): where the generator's CUDA kernels run, which filter inside the
    /// layer's epilogue, each upsampling block times both ways once per batch size and keeps
    /// the faster; elsewhere folded on CUDA (libtorch's depthwise filtering is slow there)
    /// and not on the CPU (where the extra multiply-adds cost more than they save).
    pub fold_filters: Option<bool>,
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
        if let (Some(device), Some(mode)) = (super::graphs::wanted(self.device), uniform) {
            let key = GraphKey { batch: ws.size()[0], noise: mode };
            return self.graphs.run(key, device, ws, |ws| self.run(ws, noise, self.precision, false));
        }
        self.run(ws, noise, self.precision, false)
    }

    /// Passes recorded as CUDA graphs so far, and why one could not be (see [`Graphs::summary`]).
    pub fn graphs_summary(&self) -> (usize, Option<String>) {
        self.graphs.summary()
    }

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
        super::device::synchronize(self.device);
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
        let sync = || super::device::synchronize(self.device);
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
        let measure = self.fold_filters.is_none() && kernels.is_some() && !fused;
        let fold = self.fold_filters.unwrap_or(self.device.is_cuda());
        let pass = Pass { noise, fused, cuda: self.device.is_cuda(), fold, kernels };
        let batch = ws.size()[0];
        let (mut x, mut img): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut idx = 0;
        for (block, res) in self.blocks.iter().zip(self.settings.block_resolutions()) {
            let count = block.num_conv + i64::from(block.torgb.is_some());
            let bws = ws.f_narrow(1, idx, count)?;
            idx += block.num_conv;
            let kind = precision.block_kind(res, &self.settings, self.device);
            let channels_last = precision.channels_last(res, &self.settings, self.device) && !fused;
            let run = |fold: bool| {
                let again = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
                block.forward(again(&x), again(&img), &bws, Pass { fold, ..pass }, kind, channels_last)
            };
            let (nx, nimg) = if measure && block.conv0.is_some() {
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
    let weight = super::device::upload(&weight, ws.device())?;
    let diff = ws.f_sub(w_avg)?;
    let low = w_avg.f_add(&diff.f_mul(&weight)?)?;
    let high = ws.f_sub(&diff.f_mul(&weight.f_neg()?.f_add_scalar(1.0)?)?)?;
    low.f_where_self(&weight.f_abs()?.f_lt(0.5)?, &high)
}
