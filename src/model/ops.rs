//! The tensor operations StyleGAN2 is built from: bias + activation with gain and clamp,
//! dense layers, FIR resampling and the upsampling convolution (modulated convolution is in
//! `modconv`). Each follows the arithmetic of NVIDIA's
//! reference ops (`bias_act`, `upfirdn2d`, `conv2d_resample`) in the same order, so results
//! agree to float rounding. Weights come in as arguments; what is kept is derived constants
//! (a filter's kernels per type), made once.

use std::sync::Mutex;

use tch::{Kind, TchError, Tensor};

use super::spec::Activation;

type Result<T> = std::result::Result<T, TchError>;

/// StyleGAN's leaky ReLU slope.
pub const LRELU_SLOPE: f64 = 0.2;

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Linear => Ok(x.shallow_clone()),
        Activation::Relu => x.f_relu(),
        // max(x, 0.2x) is leaky ReLU with slope 0.2, value for value.
        Activation::Lrelu => x.f_maximum(&x.f_mul_scalar(LRELU_SLOPE)?),
        Activation::Tanh => x.f_tanh(),
        Activation::Sigmoid => x.f_sigmoid(),
        Activation::Elu => x.f_elu(),
        Activation::Selu => x.f_selu(),
        Activation::Softplus => x.f_softplus(),
        Activation::Swish => x.f_sigmoid()?.f_mul(x),
    }
}

/// `act(x + b) * gain`, clamped to ±clamp; `b` runs along dimension 1.
pub fn bias_act(x: &Tensor, b: Option<&Tensor>, act: Activation, gain: f64, clamp: Option<f64>) -> Result<Tensor> {
    let mut y = match b {
        Some(b) => {
            let mut shape = vec![1i64; x.dim()];
            shape[1] = -1;
            x.f_add(&b.f_reshape(&shape)?)?
        }
        None => x.shallow_clone(),
    };
    y = activate(&y, act)?;
    if gain != 1.0 {
        y = y.f_mul_scalar(gain)?;
    }
    if let Some(c) = clamp {
        y = y.f_clamp(-c, c)?;
    }
    Ok(y)
}

/// A fully connected layer with its gains folded into the stored weight and bias.
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
    act: Activation,
}

impl Dense {
    /// `weight` [out, in] and `bias` [out] as stored; `lr` is the learning-rate multiplier.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, lr: f64, act: Activation) -> Result<Self> {
        let fan_in = weight.size()[1] as f64;
        let weight = weight.f_mul_scalar(lr / fan_in.sqrt())?;
        let bias = match bias {
            Some(b) if lr != 1.0 => Some(b.f_mul_scalar(lr)?),
            Some(b) => Some(b.shallow_clone()),
            None => None,
        };
        Ok(Self { weight, bias, act })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.bias, self.act) {
            (Some(b), Activation::Linear) => b.f_unsqueeze(0)?.f_addmm(x, &self.weight.f_tr()?),
            (b, act) => {
                let y = x.f_matmul(&self.weight.f_tr()?)?;
                bias_act(&y, b.as_ref(), act, act.default_gain(), None)
            }
        }
    }
}

pub fn normalize_2nd_moment(x: &Tensor) -> Result<Tensor> {
    let ms = x.f_square()?.f_mean_dim(1, true, Kind::Float)?;
    x.f_mul(&ms.f_add_scalar(1e-8)?.f_rsqrt()?)
}

/// Tensors made once per key (a compute type, a layout, a gain) and reused by every forward
/// pass. Keys are few, so a list does.
pub struct Cache<K> {
    entries: Mutex<Vec<(K, Vec<Tensor>)>>,
}

impl<K: PartialEq + Copy> Cache<K> {
    pub fn new() -> Self {
        Self { entries: Mutex::new(Vec::new()) }
    }

    pub fn get(&self, key: K, make: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = entries.iter().find(|(k, _)| *k == key) {
            return Ok(v.iter().map(Tensor::shallow_clone).collect());
        }
        // Made without a graph: these are constants, also inside a projection's search.
        let v = tch::no_grad(make)?;
        entries.push((key, v.iter().map(Tensor::shallow_clone).collect()));
        Ok(v)
    }
}

impl<K: PartialEq + Copy> Default for Cache<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// A FIR filter prepared for resampling: the 2-D kernel, normalised to unit sum.
pub struct Filter {
    /// [taps, taps], already flipped (the ops convolve) and scaled by the upsampling gain 4.
    up_kernel: Tensor,
    taps: i64,
    /// Whether it is StyleGAN2's [1, 3, 3, 1] filter, whose 2x upsampling is bilinear
    /// interpolation (weights 1/4 and 3/4) of the zero-padded input.
    bilinear: bool,
    /// Depthwise kernels per (type, channels, transposed), made once.
    kernels: Cache<(Kind, i64, bool)>,
}

impl Filter {
    /// From a stored `resample_filter` buffer: [taps, taps], or [taps] when separable.
    pub fn from_buffer(f: &Tensor) -> Result<Self> {
        let f2 = if f.dim() == 1 { f.f_outer(f)? } else { f.shallow_clone() };
        let taps = f2.size()[0];
        let up_kernel = f2.f_mul_scalar(4.0)?.f_flip([0, 1])?;
        let bilinear = taps == 4 && {
            let g = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 1.0]).f_to_device(f2.device())?;
            let expected = g.f_outer(&g)?.f_div_scalar(64.0)?;
            f2.f_to_kind(Kind::Float)?.f_sub(&expected)?.f_abs()?.f_max()?.f_double_value(&[])? < 1e-6
        };
        Ok(Self { up_kernel, taps, bilinear, kernels: Cache::new() })
    }

    pub fn taps(&self) -> i64 {
        self.taps
    }

    /// Whether it is StyleGAN2's [1, 3, 3, 1] filter (upsampling is then bilinear).
    pub fn is_bilinear(&self) -> bool {
        self.bilinear
    }

    /// The kernel the filtering correlates with ([taps, taps], gain included), for folding
    /// into a convolution's weights.
    pub fn kernel(&self) -> &Tensor {
        &self.up_kernel
    }

    /// The depthwise kernel [ch, 1, taps, taps] in `kind`; `transposed` un-flips it for a
    /// transposed convolution, which correlates with the kernel as given.
    fn depthwise(&self, kind: Kind, ch: i64, transposed: bool) -> Result<Tensor> {
        let t = self.taps;
        let k = self.kernels.get((kind, ch, transposed), || {
            let k = if transposed { self.up_kernel.f_flip([0, 1])? } else { self.up_kernel.shallow_clone() };
            Ok(vec![k.f_to_kind(kind)?.f_view([1, 1, t, t])?.f_expand([ch, 1, t, t], false)?.f_contiguous()?])
        })?;
        Ok(k.into_iter().next().expect("one kernel"))
    }

    /// Pads (negative: crops) both spatial axes by `before`/`after`, then filters each channel.
    /// Equal padding goes to the convolution itself, saving a copy of the features.
    pub fn pad_and_filter(&self, x: &Tensor, before: i64, after: i64) -> Result<Tensor> {
        let (x, pad) = if before == after && before >= 0 {
            (x.shallow_clone(), before)
        } else {
            (pad_or_crop(x, before, after)?, 0)
        };
        let ch = x.size()[1];
        let k = self.depthwise(x.kind(), ch, false)?;
        x.f_conv2d(&k, None::<Tensor>, [1, 1], [pad, pad], [1, 1], ch)
    }

    /// NVIDIA's `upsample2d`: 2x zero insertion, padding and the filter, with gain 4. Done as
    /// one depthwise transposed convolution followed by a crop to the same footprint, or, with
    /// `bilinear` and the [1, 3, 3, 1] filter, as bilinear interpolation of the input padded
    /// with one zero (the same numbers; GPUs run depthwise convolutions slowly).
    pub fn upsample2d(&self, x: &Tensor, bilinear: bool) -> Result<Tensor> {
        let (t, size) = (self.taps, x.size());
        if bilinear && self.bilinear {
            let (h, w) = (size[2], size[3]);
            let padded = x.f_constant_pad_nd([1, 1, 1, 1])?;
            let up = padded.f_upsample_bilinear2d([2 * h + 4, 2 * w + 4], false, None, None)?;
            return up.f_narrow(2, 2, 2 * h)?.f_narrow(3, 2, 2 * w);
        }
        let (ch, h, w) = (size[1], size[2], size[3]);
        let p0 = (t + 1) / 2;
        let p1 = (t - 2) / 2;
        let pad = t - 1 - p0;
        let k = self.depthwise(x.kind(), ch, true)?;
        let y = x.f_conv_transpose2d(&k, None::<Tensor>, [2, 2], [pad, pad], [0, 0], ch, [1, 1])?;
        let (oh, ow) = (2 * h + p0 + p1 - t + 1, 2 * w + p0 + p1 - t + 1);
        y.f_narrow(2, 0, oh)?.f_narrow(3, 0, ow)
    }
}

fn pad_or_crop(x: &Tensor, before: i64, after: i64) -> Result<Tensor> {
    let pad = [before.max(0), after.max(0), before.max(0), after.max(0)];
    let mut y = if pad.iter().any(|&p| p > 0) { x.f_constant_pad_nd(pad)? } else { x.shallow_clone() };
    if before < 0 || after < 0 {
        let (h, w) = (y.size()[2], y.size()[3]);
        let (c0, c1) = ((-before).max(0), (-after).max(0));
        y = y.f_narrow(2, c0, h - c0 - c1)?.f_narrow(3, c0, w - c0 - c1)?;
    }
    Ok(y)
}

/// Where NVIDIA's `conv2d_resample` for up=2 pads: the strided transposed convolution's own
/// padding, then the padding (negative: cropping) of its result on each side before the filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Up2Padding {
    pub conv: i64,
    pub before: i64,
    pub after: i64,
}

impl Up2Padding {
    /// For a `k`-tap kernel with the layer's `padding` and a `taps`-tap filter.
    pub fn new(k: i64, taps: i64, padding: i64) -> Self {
        let p0 = padding + (taps + 1) / 2 - (k - 1);
        let p1 = padding + (taps - 2) / 2 - (k - 2);
        let conv = (-p0).min(-p1).max(0);
        Self { conv, before: p0 + conv, after: p1 + conv }
    }
}

/// The strided transposed convolution of NVIDIA's `conv2d_resample` for up=2, before its FIR
/// filter: `w` is [out, in/groups, k, k], or, when `transposed_w`, already [in, out, k, k]
/// (one group); `padding` is the layer's. Returns the result and how to pad it for the filter.
pub fn conv_transpose_up2(
    x: &Tensor,
    w: &Tensor,
    f: &Filter,
    padding: i64,
    groups: i64,
    transposed_w: bool,
) -> Result<(Tensor, Up2Padding)> {
    let s = w.size();
    let k = s[2];
    let pad = Up2Padding::new(k, f.taps, padding);
    let wt = if transposed_w {
        w.shallow_clone()
    } else if groups == 1 {
        w.f_transpose(0, 1)?
    } else {
        let (cout, cin_g) = (s[0], s[1]);
        w.f_reshape([groups, cout / groups, cin_g, k, k])?.f_transpose(1, 2)?.f_reshape([
            groups * cin_g,
            cout / groups,
            k,
            k,
        ])?
    };
    let y = x.f_conv_transpose2d(&wt, None::<Tensor>, [2, 2], [pad.conv, pad.conv], [0, 0], groups, [1, 1])?;
    Ok((y, pad))
}

/// NVIDIA's `conv2d_resample` for up=2: a strided transposed convolution, then the FIR
/// filter over the padded result (arguments as [`conv_transpose_up2`]).
pub fn conv2d_up2(x: &Tensor, w: &Tensor, f: &Filter, padding: i64, groups: i64, transposed_w: bool) -> Result<Tensor> {
    let (y, pad) = conv_transpose_up2(x, w, f, padding, groups, transposed_w)?;
    f.pad_and_filter(&y, pad.before, pad.after)
}

/// Whether `kind` is a half-precision type.
pub fn is_half(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::BFloat16)
}
