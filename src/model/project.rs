//! Projection (GAN inversion): the w whose picture best matches a target picture under a
//! weight mask, so that a region of an existing image can be regenerated from its own
//! likeness. The schedule is the one StyleGAN2's paper describes (Adam on one w from w_avg,
//! noise on w that decays, learning rate ramped up and down); the loss is a masked pixel
//! error at full and half resolution instead of LPIPS, which would need VGG weights.
//! Only the native generator projects (it needs gradients through the synthesis).

use tch::{Kind, Tensor};

use super::stylegan2::{NoisePlan, StyleGan2};
use super::NoiseMode;
use crate::latent;

type Result<T> = std::result::Result<T, tch::TchError>;

/// Samples of W used to measure its spread, which scales the noise added to w.
const SPREAD_SAMPLES: u32 = 256;

/// Finds one w per target: `targets` [N, 3, R, R] in generator units, weighted by `weights`
/// [N, 1, R, R] in [0, 1], in `steps` Adam steps. The targets are searched as one batch:
/// each one's loss depends on its own w only, and Adam works value by value, so every w
/// follows the path it would follow alone. Deterministic: its noise comes from fixed seeds.
/// Everything per step stays on the generator's device (the noise for every step is made
/// up front). Returns ws [N, num_ws, w_dim] (the same w at every layer).
pub fn project(g: &StyleGan2, targets: &Tensor, weights: &Tensor, steps: usize) -> Result<Tensor> {
    // Callers usually run under a no-grad guard; the search needs gradients.
    tch::with_grad(|| search(g, targets, weights, steps))
}

/// How far W spreads around `w_avg` (the root mean square distance of samples), which scales
/// the noise added to w.
fn w_spread(g: &StyleGan2, w_avg: &Tensor) -> Result<f64> {
    let z_dim = g.settings.z_dim;
    let z: Vec<f32> = (0..SPREAD_SAMPLES).flat_map(|s| latent::randn(s, z_dim as usize)).map(|v| v as f32).collect();
    let z = Tensor::from_slice(&z).f_view([i64::from(SPREAD_SAMPLES), z_dim])?.f_to_device(g.device())?;
    let w = g.mapping(&z, None)?.f_select(1, 0)?;
    w.f_sub(w_avg)?
        .f_square()?
        .f_sum(Kind::Float)?
        .f_div_scalar(f64::from(SPREAD_SAMPLES))?
        .f_sqrt()?
        .f_double_value(&[])
}

fn search(g: &StyleGan2, targets: &Tensor, weights: &Tensor, steps: usize) -> Result<Tensor> {
    let device = g.device();
    let n = targets.size()[0];
    let w_avg = g.w_avg().f_to_device(device)?.f_view([1, -1])?;
    let w_dim = w_avg.size()[1];
    let w_std = w_spread(g, &w_avg)?;
    let targets = targets.f_to_device(device)?;
    let weights = weights.f_to_device(device)?;
    let small = |x: &Tensor| x.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
    let (targets_s, weights_s) = (small(&targets)?, small(&weights)?);
    // Each target's weighted mean square error, over its own weight.
    let per_sample = |d: &Tensor, w: &Tensor| -> Result<Tensor> {
        let total = w.f_sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)?.f_clamp_min(1.0)?;
        d.f_square()?
            .f_mul(w)?
            .f_sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)?
            .f_div(&total)?
            .f_div_scalar(3.0)
    };
    let loss_of = |img: &Tensor| -> Result<Tensor> {
        let full = per_sample(&img.f_sub(&targets)?, &weights)?;
        let half = per_sample(&small(img)?.f_sub(&targets_s)?, &weights_s)?;
        full.f_add(&half)?.f_sum(Kind::Float)
    };
    // The noise on w for every step, decaying to none at three quarters of the way; the same
    // for every target, as it would be for each alone.
    let mut jitter = Vec::with_capacity(steps * w_dim as usize);
    for step in 0..steps {
        let t = step as f64 / steps as f64;
        let scale = w_std * 0.05 * (1.0 - t / 0.75).max(0.0).powi(2);
        jitter.extend(latent::randn(step as u32, w_dim as usize).into_iter().map(|x| (x * scale) as f32));
    }
    let jitter = Tensor::from_slice(&jitter).f_view([steps as i64, 1, w_dim])?.f_to_device(device)?;
    let modes = vec![NoiseMode::Const; n as usize];
    let seeds = vec![0u64; n as usize];
    let mut w = w_avg.f_repeat([n, 1])?.f_set_requires_grad(true)?;
    let (mut m, mut v) = (w.f_zeros_like()?, w.f_zeros_like()?);
    let (b1, b2, eps, lr0) = (0.9f64, 0.999f64, 1e-8, 0.1);
    for step in 0..steps {
        let t = step as f64 / steps as f64;
        let ramp = ((1.0 - t) / 0.25).min(1.0);
        let lr = lr0 * (0.5 - 0.5 * (ramp * std::f64::consts::PI).cos()) * (t / 0.05).min(1.0);
        let ws = w.f_add(&jitter.f_get(step as i64)?)?.f_unsqueeze(1)?.f_repeat([1, g.num_ws(), 1])?;
        let img = g.synthesis_graph(&ws, NoisePlan { modes: &modes, seeds: &seeds })?;
        let grad = Tensor::f_run_backward(&[&loss_of(&img)?], &[&w], false, false)?.remove(0);
        tch::no_grad(|| -> Result<()> {
            m = m.f_mul_scalar(b1)?.f_add(&grad.f_mul_scalar(1.0 - b1)?)?;
            v = v.f_mul_scalar(b2)?.f_add(&grad.f_square()?.f_mul_scalar(1.0 - b2)?)?;
            let k = step as i32 + 1;
            let mhat = m.f_div_scalar(1.0 - b1.powi(k))?;
            let vhat = v.f_div_scalar(1.0 - b2.powi(k))?;
            let update = mhat.f_div(&vhat.f_sqrt()?.f_add_scalar(eps)?)?.f_mul_scalar(lr)?;
            let _ = w.f_sub_(&update)?;
            Ok(())
        })?;
    }
    w.f_detach()?.f_unsqueeze(1)?.f_repeat([1, g.num_ws(), 1])
}
