//! Modulated convolution (StyleGAN2's weight modulation and demodulation) and the layer's
//! epilogue (noise, bias, activation, gain, clamp), arranged for speed at large batches:
//!
//! - demodulation coefficients come from one small matrix product, `rsqrt(s² · Σ_taps w²ᵀ)`,
//!   instead of building every sample's modulated weights (`[N, out, in, k, k]`, hundreds of
//!   megabytes at batch 32 with 512 channels);
//! - the weights in each compute type (and, for half precision, NVIDIA's pre-scaled weights)
//!   are made once and kept on the device, as are the constant noise with the bias;
//! - gains fold into the demodulation and the bias where the activation allows, so a layer
//!   costs four passes over its features (style scaling, `addcmul`, activation, clamp) on top
//!   of the convolution, or one where the generator's own kernels (CUDA's, the CPU's passes)
//!   make its epilogue;
//! - toRGB is one batched matrix product per picture, reading the features once (or, with
//!   the kernels, a pass that also reads them once).
//!
//! The arithmetic is NVIDIA's up to float rounding (tests/generator_reference.rs and
//! tests/precision.rs hold it to that). Stateless apart from those caches.

use tch::{Kind, TchError, Tensor};

use super::kernels::{Finish, Kernels, Rgb};
use super::ops::{activate, conv2d_up2, conv_transpose_up2, is_half, Cache, Filter, Up2Padding, LRELU_SLOPE};
use super::spec::Activation;

type Result<T> = std::result::Result<T, TchError>;

/// Features in `kind`, channels-last or not: what a layer's constants are prepared for.
#[derive(Clone, Copy, PartialEq)]
struct Key {
    kind: Kind,
    channels_last: bool,
    gain_bits: u64,
    const_noise: bool,
    folded: bool,
}

/// Reorders a 4-D tensor's memory to channels-last, keeping its shape.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])
}

/// Whether `x` [N, C, H, W] is stored channels-last (and C is not trivially 1).
fn is_channels_last(x: &Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    size.len() == 4 && size[1] > 1 && stride[1] == 1 && stride[3] == size[1]
}

/// One demodulated, modulated convolution layer's weights and constants.
pub struct StyleConv {
    /// [out, in, k, k] as stored.
    weight: Tensor,
    /// Half precision's weights: scaled to at most 1/sqrt(fan-in) per output channel (NVIDIA's
    /// guard against float16 overflow; demodulation cancels the scale).
    scaled: Tensor,
    /// [out, in]: Σ over taps of `weight`², and of `scaled`².
    sq: Tensor,
    sq_scaled: Tensor,
    cache: Cache<Key>,
}

/// What follows the convolution: `clamp(act(gain · (y·d + noise + bias)))`, with the activation
/// applied before the gain where it is not positively homogeneous.
pub struct Epilogue<'a> {
    pub bias: &'a Tensor,
    /// The constant noise [res, res] and its strength, when every sample uses it.
    pub const_noise: Option<(&'a Tensor, &'a Tensor)>,
    /// Per-sample noise [N, 1, res, res] already scaled by its strength, in float32.
    pub noise: Option<&'a Tensor>,
    pub act: Activation,
    pub gain: f64,
    pub clamp: Option<f64>,
    /// The next layer's input scaling ([`input_styles`], [N, out] float32), applied last, so
    /// that it can skip its own scaling pass ([`Route::prescaled`]).
    pub then_scale: Option<&'a Tensor>,
}

/// How one layer runs.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    /// Each sample's own weights as one grouped convolution (NVIDIA's path for single
    /// pictures); otherwise the features are scaled before one shared convolution and after it.
    pub fused: bool,
    /// An upsampling layer convolves once with the filter folded into its weights (where the
    /// padding allows): four times the multiply-adds of the strided convolution, but no
    /// filtering pass, which libtorch runs slowly on a GPU.
    pub fold: bool,
    /// The generator's CUDA kernels (no autograd): the unfused path's style scaling and its
    /// epilogue (with an unfolded upsampling filter) in one pass each.
    pub kernels: Option<&'a Kernels>,
    /// The input already carries this layer's style scaling, by these styles (its
    /// [`input_styles`], made by whoever scaled it; unfused path only).
    pub prescaled: Option<&'a Tensor>,
}

/// The styles an unfused layer scales its input by: half precision scales them to at most 1,
/// as it does the weights, so the products stay in range.
pub fn input_styles(styles: &Tensor, kind: Kind) -> Result<Tensor> {
    if is_half(kind) {
        styles.f_div(&styles.f_abs()?.f_amax([1i64], true)?)
    } else {
        Ok(styles.shallow_clone())
    }
}

impl Epilogue<'_> {
    /// The gain that can move inside the activation (all of it for linear, ReLU and leaky ReLU).
    fn folded_gain(&self) -> f64 {
        match self.act {
            Activation::Linear | Activation::Relu | Activation::Lrelu => self.gain,
            _ => 1.0,
        }
    }
}

impl StyleConv {
    pub fn new(weight: Tensor) -> Result<Self> {
        let s = weight.size();
        let fan_in = (s[1] * s[2] * s[3]) as f64;
        let wmax = weight.f_abs()?.f_amax([1i64, 2, 3], true)?;
        let scaled = weight.f_div(&wmax)?.f_mul_scalar(1.0 / fan_in.sqrt())?;
        let sq = weight.f_square()?.f_sum_dim_intlist(&[2i64, 3][..], false, Kind::Float)?;
        let sq_scaled = scaled.f_square()?.f_sum_dim_intlist(&[2i64, 3][..], false, Kind::Float)?;
        Ok(Self { weight, scaled, sq, sq_scaled, cache: Cache::new() })
    }

    /// The convolution weights in `kind` (transposed for an upsampling layer, and with the
    /// filter folded in when `key.folded`), the constant noise plus bias times the folded gain,
    /// and the leaky-ReLU slope, made once per key.
    fn prepared(&self, key: Key, up: Option<&Filter>, e: &Epilogue) -> Result<Vec<Tensor>> {
        self.cache.get(key, || {
            let base = if is_half(key.kind) { &self.scaled } else { &self.weight };
            let base = match up {
                Some(f) if key.folded => fold_filter(base, f)?,
                _ => base.shallow_clone(),
            };
            let mut w = if up.is_some() { base.f_transpose(0, 1)? } else { base };
            w = w.f_to_kind(key.kind)?.f_contiguous()?;
            if key.channels_last {
                w = to_channels_last(&w)?;
            }
            let g = e.folded_gain();
            let ch = self.weight.size()[0];
            let mut nb = e.bias.f_view([1, ch, 1, 1])?;
            if let Some((noise, strength)) = e.const_noise {
                let res = noise.size()[0];
                nb = nb.f_add(&noise.f_mul(strength)?.f_view([1, 1, res, res])?)?;
            }
            nb = nb.f_mul_scalar(g)?.f_to_kind(key.kind)?.f_contiguous()?;
            if key.channels_last && nb.size()[2] > 1 {
                nb = to_channels_last(&nb)?;
            }
            let slope = Tensor::f_full([1], LRELU_SLOPE, (key.kind, self.weight.device()))?;
            let mut prepared = vec![w, nb, slope];
            if let Some(f) = up {
                prepared.push(f.kernel().f_to_kind(Kind::Float)?.f_contiguous()?);
            }
            Ok(prepared)
        })
    }

    /// `x` [N, in, H, W] in its compute type; `styles` [N, in] in float32. Returns the
    /// features, and a picture where `rgb` (the toRGB layer that reads them next) is given and,
    /// without upsampling, on the unfused path with the kernels, the epilogue's pass makes it
    /// too (leaving the features scaled by `rgb.next`, where given). Otherwise no picture, and
    /// the features are the layer's own.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        styles: &Tensor,
        up: Option<&Filter>,
        padding: i64,
        route: Route,
        e: &Epilogue,
        rgb: Option<&Rgb>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Route { fused, fold, kernels, prescaled } = route;
        assert!(!(fused && prescaled.is_some()), "a fused layer modulates its weights, not its input");
        let n = x.size()[0];
        let kind = x.kind();
        let ws = self.weight.size();
        let (cout, cin) = (ws[0], ws[1]);
        let half = is_half(kind);
        let styles = match prescaled {
            Some(s) => s.shallow_clone(),
            None => input_styles(styles, kind)?,
        };
        let sq = if half { &self.sq_scaled } else { &self.sq };
        let g = e.folded_gain();
        // Σ_i,taps (w·s_i)² = s² · Σ_taps w², one [N, in] x [in, out] product.
        let d = styles.f_square()?.f_matmul(&sq.f_tr()?)?.f_add_scalar(1e-8)?.f_rsqrt()?.f_mul_scalar(g)?;
        // The transposed convolution's padding when the filter is folded into the weights.
        let fold_pad = if fold && !fused { up.and_then(|f| folded_padding(f, ws[2], padding)) } else { None };
        let key = Key {
            kind,
            channels_last: is_channels_last(x),
            gain_bits: g.to_bits(),
            const_noise: e.const_noise.is_some(),
            folded: fold_pad.is_some(),
        };
        let prep = self.prepared(key, up, e)?;
        let (w, nb, slope) = (&prep[0], &prep[1], &prep[2]);
        let y = if fused {
            let base = if half { &self.scaled } else { &self.weight };
            let wm = base
                .f_unsqueeze(0)?
                .f_mul(&styles.f_view([n, 1, cin, 1, 1])?)?
                .f_mul(&d.f_view([n, cout, 1, 1, 1])?)?
                .f_reshape([n * cout, cin, ws[2], ws[3]])?
                .f_to_kind(kind)?;
            let xg = x.f_reshape([1, n * cin, x.size()[2], x.size()[3]])?;
            let y = conv(&xg, &wm, up, padding, n, false)?;
            let y = y.f_reshape([n, cout, y.size()[2], y.size()[3]])?;
            if y.requires_grad() {
                y.f_add(nb)?
            } else {
                let mut y = y.f_contiguous()?;
                let _ = y.f_add_(nb)?;
                y
            }
        } else {
            let xs = if prescaled.is_some() { x.shallow_clone() } else { scale_input(x, &styles, kernels)? };
            let slope = match e.act {
                Activation::Lrelu => Some(LRELU_SLOPE),
                Activation::Linear => Some(1.0),
                _ => None,
            };
            let fin = slope.map(|slope| Finish {
                d: &d,
                nb,
                noise: e.noise,
                noise_gain: g,
                slope,
                clamp: e.clamp,
                post: e.then_scale,
            });
            let kernel = kernels.zip(fin.as_ref());
            let y = match (fold_pad, up) {
                (Some(p), _) => xs.f_conv_transpose2d(w, None::<Tensor>, [2, 2], [p, p], [0, 0], 1, [1, 1])?,
                (None, Some(f)) => {
                    // Unfolded, the kernels filter the strided convolution's result as they
                    // finish the layer.
                    let (t, pad) = conv_transpose_up2(&xs, w, f, padding, 1, true)?;
                    if let Some((k, fin)) = kernel {
                        if let Some(y) = k.up_epilogue(&t, &prep[3], pad, fin)? {
                            return Ok((y, None));
                        }
                    }
                    f.pad_and_filter(&t, pad.before, pad.after)?
                }
                (None, None) => conv(&xs, w, None, padding, 1, true)?,
            };
            if let Some((k, fin)) = kernel {
                let picture = match rgb {
                    Some(rgb) if up.is_none() => k.epilogue_rgb(&y, fin, rgb)?,
                    _ => None,
                };
                if picture.is_some() {
                    return Ok((y, picture));
                }
                if k.epilogue(&y, fin)? {
                    return Ok((y, None));
                }
            }
            nb.f_addcmul(&y, &d.f_to_kind(kind)?.f_view([n, cout, 1, 1])?)?
        };
        let mut y = match e.noise {
            Some(noise) => y.f_add(&noise.f_mul_scalar(g)?.f_to_kind(kind)?)?,
            None => y,
        };
        y = match e.act {
            Activation::Lrelu => y.f_prelu(slope)?,
            Activation::Linear => y,
            act if g == e.gain => activate(&y, act)?,
            act => activate(&y, act)?.f_mul_scalar(e.gain)?,
        };
        if let Some(c) = e.clamp {
            if y.requires_grad() {
                y = y.f_clamp(-c, c)?;
            } else {
                let _ = y.f_clamp_(-c, c)?;
            }
        }
        let y = match e.then_scale {
            Some(s) => scale(&y, s)?,
            None => y,
        };
        Ok((y, None))
    }
}

/// An unfused layer's input `x` [N, C, H, W] scaled by its [`input_styles`] `styles`, in
/// `x`'s type: by the kernels where they take `x`, else by a tensor op.
pub fn scale_input(x: &Tensor, styles: &Tensor, kernels: Option<&Kernels>) -> Result<Tensor> {
    if let Some(xs) = kernels.map(|k| k.scale(x, styles)).transpose()?.flatten() {
        return Ok(xs);
    }
    scale(x, styles)
}

/// `x` [N, C, H, W] times `s` [N, C] float32, in `x`'s type.
fn scale(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let size = x.size();
    x.f_mul(&s.f_to_kind(x.kind())?.f_view([size[0], size[1], 1, 1])?)
}

/// The transposed convolution's padding once the filter is folded into a `k`-tap kernel of a
/// layer with `padding`: the same footprint as NVIDIA's strided convolution and filter, if
/// that footprint is symmetric and reachable (it is for 3x3 kernels with the 4-tap filter).
fn folded_padding(f: &Filter, k: i64, padding: i64) -> Option<i64> {
    let t = f.taps();
    let p = Up2Padding::new(k, t, padding);
    (p.conv == 0 && p.before == p.after && (0..t).contains(&p.before)).then_some(t - 1 - p.before)
}

/// `w` [out, in, k, k] with the upsampling filter folded in: [out, in, k + taps - 1, ...],
/// each kernel correlated with the filter in full, so that one stride-2 transposed
/// convolution does what NVIDIA's strided convolution followed by the filter does.
fn fold_filter(w: &Tensor, f: &Filter) -> Result<Tensor> {
    let s = w.size();
    let (t, k) = (f.taps(), s[2]);
    let taps = f.kernel().f_to_kind(w.kind())?.f_view([1, 1, t, t])?;
    let flat = w.f_reshape([s[0] * s[1], 1, k, k])?.f_constant_pad_nd([t - 1, t - 1, t - 1, t - 1])?;
    flat.f_conv2d(&taps, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?.f_reshape([s[0], s[1], k + t - 1, k + t - 1])
}

/// The convolution itself; `transposed_w` says `w` is already [in, out, k, k] for upsampling.
fn conv(x: &Tensor, w: &Tensor, up: Option<&Filter>, padding: i64, groups: i64, transposed_w: bool) -> Result<Tensor> {
    match up {
        Some(f) => conv2d_up2(x, w, f, padding, groups, transposed_w),
        None => x.f_conv2d(w, None::<Tensor>, [1, 1], [padding, padding], [1, 1], groups),
    }
}

/// A 1x1 layer's weights [C_out, C_in, 1, 1] times each picture's styles [N, C_in]:
/// [N, C_out, C_in], in the styles' type.
pub fn modulated_1x1_weights(weight: &Tensor, styles: &Tensor) -> Result<Tensor> {
    let (n, c, cout) = (styles.size()[0], styles.size()[1], weight.size()[0]);
    weight.f_view([1, cout, c])?.f_mul(&styles.f_view([n, 1, c])?)
}

/// A toRGB layer's modulated 1x1 convolution (not demodulated): per picture, its weights
/// times its styles as a [C_out, C_in] matrix applied to every pixel, as one batched product
/// that reads the features once, whichever their layout. Returns [N, C_out, H, W] in `x`'s type.
pub fn modulated_1x1(x: &Tensor, weight: &Tensor, styles: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let cout = weight.size()[0];
    let wm = modulated_1x1_weights(weight, styles)?.f_to_kind(x.kind())?;
    if is_channels_last(x) {
        let xv = x.f_permute([0, 2, 3, 1])?.f_view([n, h * w, c])?;
        xv.f_matmul(&wm.f_transpose(1, 2)?)?.f_view([n, h, w, cout])?.f_permute([0, 3, 1, 2])
    } else {
        wm.f_matmul(&x.f_reshape([n, c, h * w])?)?.f_view([n, cout, h, w])
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    /// Two layers where the first applies the second's input scaling as its last step and the
    /// second skips its own give the same features as the two layers each on their own (the
    /// tensor-op path the GPU's kernels fall back to; the kernels are checked in kernels/tests.rs).
    #[test]
    fn a_layer_may_scale_the_next_ones_input_for_it() {
        tch::manual_seed(0);
        let f32s = (Kind::Float, Device::Cpu);
        let a = StyleConv::new(Tensor::randn([8, 6, 3, 3], f32s)).unwrap();
        let b = StyleConv::new(Tensor::randn([5, 8, 3, 3], f32s)).unwrap();
        let (bias_a, bias_b) = (Tensor::randn([8], f32s), Tensor::randn([5], f32s));
        let x = Tensor::randn([2, 6, 8, 8], f32s);
        let (sa, sb) = (Tensor::randn([2, 6], f32s), Tensor::randn([2, 8], f32s) + 1.0);
        fn epilogue<'a>(bias: &'a Tensor, then_scale: Option<&'a Tensor>) -> Epilogue<'a> {
            let (act, gain, clamp) = (Activation::Lrelu, 2f64.sqrt(), Some(1.0));
            Epilogue { bias, const_noise: None, noise: None, act, gain, clamp, then_scale }
        }
        fn route(prescaled: Option<&Tensor>) -> Route<'_> {
            Route { fused: false, fold: false, kernels: None, prescaled }
        }
        for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 3e-2)] {
            let xk = x.to_kind(kind);
            let h = a.forward(&xk, &sa, None, 1, route(None), &epilogue(&bias_a, None), None).unwrap().0;
            let plain = b.forward(&h, &sb, None, 1, route(None), &epilogue(&bias_b, None), None).unwrap().0;
            let then = input_styles(&sb, kind).unwrap();
            let hs = a.forward(&xk, &sa, None, 1, route(None), &epilogue(&bias_a, Some(&then)), None).unwrap().0;
            let joined = b.forward(&hs, &sb, None, 1, route(Some(&then)), &epilogue(&bias_b, None), None).unwrap().0;
            let diff = |p: &Tensor, q: &Tensor| {
                (p.to_kind(Kind::Float) - q.to_kind(Kind::Float)).abs().max().double_value(&[])
            };
            assert!(diff(&joined, &plain) <= tol, "{kind:?}: {} > {tol}", diff(&joined, &plain));
            let twice = b.forward(&hs, &sb, None, 1, route(None), &epilogue(&bias_b, None), None).unwrap().0;
            assert!(diff(&twice, &plain) > 0.1, "{kind:?}: scaling twice must show");
        }
    }
}
