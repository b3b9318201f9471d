//! The generator's layers: the mapping network, the modulated convolution layers, toRGB and
//! the synthesis blocks, each built from its share of the weights map and run forward. The
//! generator (the parent module) strings them together and owns the settings of a pass; these
//! take them as given and keep no state beyond their weights and constants.

use std::collections::HashMap;

use tch::{Device, Kind, TchError, Tensor};

use super::{NoisePlan, Pass};
use crate::model::kernels::{Kernels, Picture, Rgb};
use crate::model::modconv::{
    input_styles, modulated_1x1, modulated_1x1_weights, scale_input, Epilogue, Route, StyleConv,
};
use crate::model::ops::{bias_act, is_half, normalize_2nd_moment, Dense, Filter};
use crate::model::spec::{Activation, Architecture, GeneratorSettings, NoiseMode};

type Result<T> = std::result::Result<T, TchError>;

fn take(w: &mut HashMap<String, Tensor>, name: &str) -> Tensor {
    w.remove(name).unwrap_or_else(|| panic!("weights were checked, yet `{name}` is missing"))
}

pub(super) struct Mapping {
    embed: Option<Dense>,
    layers: Vec<Dense>,
    pub(super) w_avg: Tensor,
}

impl Mapping {
    pub(super) fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>) -> Result<Self> {
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
    pub(super) fn forward(&self, z: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
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
            crate::model::device::upload(&Tensor::from_slice(&values).f_view([1, 1, res, res])?, device)
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

    /// `then_scale` and `prescaled` as in [`Epilogue::then_scale`] and [`Route::prescaled`];
    /// for the block's last layer, the picture of its toRGB layer `rgb` comes out of the
    /// layer's epilogue where the kernels can make it there ([`StyleConv::forward`]).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        styles: &Tensor,
        pass: Pass,
        gain: f64,
        then_scale: Option<&Tensor>,
        prescaled: Option<&Tensor>,
        rgb: Option<&Rgb>,
    ) -> Result<(Tensor, Option<Tensor>)> {
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
        self.conv.forward(x, styles, self.up.as_ref(), self.padding, route, &epilogue, rgb)
    }
}

/// A toRGB layer's modulated weights for a batch, and the picture so far (with whether it is
/// at half size): [`ToRgb::tail`].
struct RgbTail {
    wm: Tensor,
    prev: Option<(Tensor, bool)>,
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
    /// features' type. The kernels upsample StyleGAN2's filter themselves as they add, and
    /// make `x` scaled by `next` (the next layer's input styles) as they read it: returned
    /// beside the picture, `None` where the kernels did not run.
    fn forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        prev: Option<&Tensor>,
        up: (&Filter, bool),
        kernels: Option<&Kernels>,
        next: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(k) = kernels {
            let tail = self.tail(w, prev, up)?;
            if let Some(done) = k.to_rgb(x, &self.rgb(&tail, next, true))? {
                return Ok(done);
            }
        }
        let (filter, bilinear) = up;
        let prev = prev.map(|p| filter.upsample2d(p, bilinear)).transpose()?;
        let y = self.contribution(x, &self.styles(w)?)?;
        let img = match prev {
            Some(p) => p.f_add(&y)?,
            None => y,
        };
        Ok((img, None))
    }

    fn styles(&self, w: &Tensor) -> Result<Tensor> {
        self.affine.forward(w)?.f_mul_scalar(self.weight_gain)
    }

    /// What the kernels need of this layer for the ws `w` beyond the features: the modulated
    /// weights, and the picture so far as they take it (at half size with StyleGAN2's filter,
    /// which they upsample themselves; otherwise upsampled here into a dense picture).
    fn tail(&self, w: &Tensor, prev: Option<&Tensor>, (filter, bilinear): (&Filter, bool)) -> Result<RgbTail> {
        let wm = modulated_1x1_weights(&self.weight, &self.styles(w)?)?;
        let prev = match prev {
            None => None,
            Some(p) if filter.is_bilinear() => Some((p.shallow_clone(), true)),
            Some(p) => Some((filter.upsample2d(p, bilinear)?.f_contiguous()?, false)),
        };
        Ok(RgbTail { wm, prev })
    }

    /// The layer as the kernels take it, with `next` to scale the features by and whether the
    /// features are read after it (`keep`).
    fn rgb<'a>(&'a self, tail: &'a RgbTail, next: Option<&'a Tensor>, keep: bool) -> Rgb<'a> {
        let prev = tail.prev.as_ref().map(|(p, half)| if *half { Picture::Half(p) } else { Picture::Same(p) });
        Rgb { wm: &tail.wm, bias: &self.bias, clamp: self.clamp, prev, next, keep }
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

/// A block's features as the next block receives them: scaled for its first convolution by
/// that layer's input styles (`scaled_by`, [`input_styles`]) where this block scaled them
/// (with the kernels, as its last epilogue or its toRGB layer wrote them, which saves the next
/// layer a pass over them).
pub(super) struct Features {
    pub(super) x: Tensor,
    pub(super) scaled_by: Option<Tensor>,
}

impl Features {
    /// The same tensors again (shallow), for a block that runs more than once.
    pub(super) fn again(&self) -> Self {
        Self { x: self.x.shallow_clone(), scaled_by: self.scaled_by.as_ref().map(Tensor::shallow_clone) }
    }
}

/// How a block runs: the type it computes in, its features' layout, the next block with its
/// type where this block scales its output for that block's first convolution, and whether it
/// is the last (whose features nobody reads: the kernels may leave them unfinished).
#[derive(Clone, Copy)]
pub(super) struct BlockPlan<'a> {
    pub(super) kind: Kind,
    pub(super) channels_last: bool,
    pub(super) next: Option<(&'a Block, Kind)>,
    pub(super) last: bool,
}

pub(super) struct Block {
    konst: Option<Tensor>,
    conv0: Option<StyledLayer>,
    conv1: StyledLayer,
    torgb: Option<ToRgb>,
    skip: Option<Tensor>, // resnet: 1x1 weight with its gain folded in
    filter: Filter,
    num_conv: i64,
}

impl Block {
    pub(super) fn new(g: &GeneratorSettings, w: &mut HashMap<String, Tensor>, res: i64) -> Result<Self> {
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

    /// The ws this block reads, and how many of them it uses up: its toRGB layer reads the w
    /// after its convolutions', which the next block's first convolution reads too.
    pub(super) fn ws(&self) -> (i64, i64) {
        (self.num_conv + i64::from(self.torgb.is_some()), self.num_conv)
    }

    /// Whether the block starts with an upsampling convolution.
    pub(super) fn upsamples(&self) -> bool {
        self.conv0.is_some()
    }

    /// Whether this block can hand `next` its features scaled for its first convolution: its
    /// toRGB layer reads the w that convolution reads, and `next` has no resnet skip, which
    /// needs the features unscaled.
    pub(super) fn can_scale_for(&self, next: &Block) -> bool {
        self.torgb.is_some() && next.conv0.is_some() && next.skip.is_none()
    }

    /// The block's features and the picture so far. With `plan.next` (which the caller checked
    /// with [`Block::can_scale_for`], on the unfused path) the features come out scaled for
    /// the next block's first convolution.
    pub(super) fn forward(
        &self,
        x: Option<Features>,
        img: Option<Tensor>,
        ws: &Tensor,
        pass: Pass,
        plan: BlockPlan,
    ) -> Result<(Features, Option<Tensor>)> {
        let BlockPlan { kind, channels_last, next, last } = plan;
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
        // The next block's first convolution reads the w this block's toRGB layer reads.
        let next_scale = match next {
            Some((block, next_kind)) => {
                let conv0 = block.conv0.as_ref().expect("can_scale_for checked it");
                Some(input_styles(&conv0.styles(&w(self.num_conv)?)?, next_kind)?)
            }
            None => None,
        };
        // With the kernels, the last layer's epilogue makes the picture too (a resnet block
        // adds its skip after that layer, so its toRGB layer runs on its own).
        let tail = match (&self.torgb, &img) {
            (Some(torgb), img) if pass.kernels.is_some() && !pass.fused && self.skip.is_none() => {
                Some(torgb.tail(&w(self.num_conv)?, img.as_ref(), (&self.filter, pass.cuda))?)
            }
            _ => None,
        };
        let rgb = self.torgb.as_ref().zip(tail.as_ref()).map(|(t, tail)| t.rgb(tail, next_scale.as_ref(), !last));
        // The last layer's input, styles, gain and input scaling, and the block's input for
        // a resnet skip.
        let (input, s1, gain, prescaled, skip_from) = match (&self.konst, x, &self.conv0) {
            (Some(k), _, _) => {
                let x = layout(k.f_unsqueeze(0)?.f_repeat([n, 1, 1, 1])?.f_to_kind(kind)?)?;
                (x, self.conv1.styles(&w(0)?)?, 1.0, None, None)
            }
            (None, Some(Features { x, scaled_by }), Some(conv0)) => {
                debug_assert!(scaled_by.is_none() || (self.skip.is_none() && !pass.fused));
                // A block that changes the type or runs on CUDA sets its features' layout, as
                // NVIDIA's blocks do; on the CPU in float32 the layout the first block chose
                // carries through (forcing it at every block measured slower).
                let x = if x.kind() != kind || pass.cuda { layout(x.f_to_kind(kind)?)? } else { x };
                // Features that come scaled need no styles of conv0's own.
                let s0 = match &scaled_by {
                    Some(s) => s.shallow_clone(),
                    None => conv0.styles(&w(0)?)?,
                };
                let s1 = self.conv1.styles(&w(1)?)?;
                // With the kernels, conv0's epilogue also scales conv1's input: one pass fewer.
                let then_scale = match pass.kernels {
                    Some(_) if !pass.fused => Some(input_styles(&s1, kind)?),
                    _ => None,
                };
                let (h, _) = conv0.forward(&x, &s0, pass, 1.0, then_scale.as_ref(), scaled_by.as_ref(), None)?;
                let gain = if self.skip.is_some() { half } else { 1.0 };
                (h, s1, gain, then_scale, self.skip.is_some().then_some(x))
            }
            _ => unreachable!("a block after the first always receives features"),
        };
        let (out, picture) = self.conv1.forward(&input, &s1, pass, gain, None, prescaled.as_ref(), rgb.as_ref())?;
        let x = match (&self.skip, skip_from) {
            (Some(skip), Some(x)) => {
                let y = x.f_conv2d(&skip.f_to_kind(kind)?, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
                self.filter.upsample2d(&y, pass.cuda)?.f_mul_scalar(half)?.f_add(&out)?
            }
            _ => out,
        };
        if picture.is_some() {
            // The epilogue left the features as the next block wants them.
            return Ok((Features { x, scaled_by: next_scale }, picture));
        }
        let (img, scaled) = match (&self.torgb, img) {
            (Some(torgb), img) => {
                let up = (&self.filter, pass.cuda);
                let (img, scaled) =
                    torgb.forward(&x, &w(self.num_conv)?, img.as_ref(), up, pass.kernels, next_scale.as_ref())?;
                (Some(img), scaled)
            }
            (None, Some(img)) => (Some(self.filter.upsample2d(&img, pass.cuda)?), None),
            (None, None) => (None, None),
        };
        let x = match (next_scale, scaled) {
            (Some(s), Some(xs)) => Features { x: xs, scaled_by: Some(s) },
            (Some(s), None) => Features { x: scale_input(&x, &s, pass.kernels)?, scaled_by: Some(s) },
            (None, _) => Features { x, scaled_by: None },
        };
        Ok((x, img))
    }
}
