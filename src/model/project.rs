//! Projection (GAN inversion): the w whose picture best matches a target picture under a
//! weight mask, so that a region of an existing image can be regenerated from its own
//! likeness. The schedule is the one StyleGAN2's paper describes (Adam on one w from w_avg,
//! noise on w that decays, learning rate ramped up and down); the loss is a masked pixel
//! error at full and half resolution instead of LPIPS, which would need VGG weights.
//! Only the native generator projects (it needs gradients through the synthesis).

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use super::graphs::{self, Graph};
use super::stylegan2::{NoisePlan, StyleGan2};
use super::{ModelError, NoiseMode};
use crate::latent;

type Result<T> = std::result::Result<T, tch::TchError>;

/// Samples of W used to measure its spread, which scales the noise added to w.
const SPREAD_SAMPLES: u32 = 256;

/// About how many times a search reports its loss. Reading the loss waits for the device, so
/// the host cannot queue past it: a report every few steps lets the two overlap in between.
const REPORTS: usize = 20;

/// Told `(step, steps, mean loss per target)` every few steps and at the last.
pub type StepReport<'a> = &'a (dyn Fn(usize, usize, f64) + Sync);

/// What a search heeds as it goes: `stop`, checked before every step; `courtesy`, called
/// before every step, which may wait to let other work go first; and who hears its progress.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    pub stop: &'a AtomicBool,
    pub courtesy: Option<&'a (dyn Fn() + Sync)>,
    pub report: Option<StepReport<'a>>,
}

impl<'a> Watch<'a> {
    /// Stops when `stop` is set; waits for nothing, reports to no one.
    pub fn new(stop: &'a AtomicBool) -> Self {
        Self { stop, courtesy: None, report: None }
    }
}

/// Finds one w per target: `targets` [N, 3, R, R] in generator units, weighted by `weights`
/// [N, 1, R, R] in [0, 1], in `steps` Adam steps. The targets are searched as one batch:
/// each one's loss depends on its own w only, and Adam works value by value, so every w
/// follows the path it would follow alone. Deterministic: its noise comes from fixed seeds.
/// Everything per step stays on the generator's device (the noise for every step is made
/// up front). Returns ws [N, num_ws, w_dim] (the same w at every layer).
/// Stops with [`ModelError::Stopped`] within one step of `watch.stop` being set.
pub fn project(
    g: &StyleGan2,
    targets: &Tensor,
    weights: &Tensor,
    steps: usize,
    watch: Watch,
) -> std::result::Result<Tensor, ModelError> {
    // Callers usually run under a no-grad guard; the search needs gradients.
    tch::with_grad(|| {
        let device = g.device();
        let n = targets.size()[0];
        let w_avg = g.w_avg().f_to_device(device)?.f_view([1, -1])?;
        let w_dim = w_avg.size()[1];
        let w_std = w_spread(g, &w_avg)?;
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
        let noise = NoisePlan { modes: &modes, seeds: &seeds };
        let search = Search { g, targets, weights, steps, lr: 0.1, noise, watch };
        let num_ws = g.num_ws();
        let w = search.run(
            w_avg.f_repeat([n, 1])?,
            Some(&jitter),
            |w, jitter| w.f_add(jitter.expect("given"))?.f_unsqueeze(1)?.f_repeat([1, num_ws, 1]),
            None,
        )?;
        Ok(w.f_unsqueeze(1)?.f_repeat([1, num_ws, 1])?)
    })
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

/// Finds, for each of `start_ws` [N, num_ws, w_dim], the nearby ws whose pictures match
/// `targets` where `weights` say: one offset per sample added to every layer's w, found by
/// the projection's schedule from zero, with `hold` times its squared length over W's spread
/// added to the loss so the picture stays the seed's own. For harmonising a patch's border
/// with what lies around its region. Returns the new ws.
pub fn harmonize(
    g: &StyleGan2,
    start_ws: &Tensor,
    (targets, weights): (&Tensor, &Tensor),
    steps: usize,
    hold: f64,
    noise: NoisePlan,
    watch: Watch,
) -> std::result::Result<Tensor, ModelError> {
    tch::with_grad(|| {
        let device = g.device();
        let start = start_ws.f_to_device(device)?.f_detach()?;
        let w_std = w_spread(g, &g.w_avg().f_to_device(device)?.f_view([1, -1])?)?;
        let (n, w_dim) = (start.size()[0], start.size()[2]);
        let offset = Tensor::f_zeros([n, 1, w_dim], (Kind::Float, device))?;
        let search = Search { g, targets, weights, steps, lr: 0.05, noise, watch };
        let penalty =
            |d: &Tensor| -> Result<Tensor> { d.f_square()?.f_sum(Kind::Float)?.f_mul_scalar(hold / (w_std * w_std)) };
        let offset = search.run(offset, None, |d, _| start.f_add(d), Some(&penalty))?;
        Ok(start.f_add(&offset)?)
    })
}

/// An Adam search over one variable per target, on the projection's learning-rate schedule.
struct Search<'a> {
    g: &'a StyleGan2,
    targets: &'a Tensor,
    weights: &'a Tensor,
    steps: usize,
    lr: f64,
    noise: NoisePlan<'a>,
    watch: Watch<'a>,
}

type Penalty<'p> = &'p dyn Fn(&Tensor) -> Result<Tensor>;

/// Adam's decay rates and epsilon.
const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Whether a search could not be recorded as a CUDA graph already (said once).
static RECORDING_FAILED: AtomicBool = AtomicBool::new(false);

impl Search<'_> {
    /// Optimises `var` (made into ws by `ws_of(var, per_step[step])`) and returns it.
    ///
    /// A step is the same operations every time: what changes from step to step (the learning
    /// rate, Adam's bias corrections, `per_step`'s row) is copied into tensors on the device
    /// first, and Adam updates its state in place. So on CUDA with `cuda_graphs` the second
    /// step is recorded as a graph and the rest replay it, and the host issues a few
    /// operations a step instead of the pass, its gradient and the update one by one.
    fn run(
        &self,
        var: Tensor,
        per_step: Option<&Tensor>,
        ws_of: impl Fn(&Tensor, Option<&Tensor>) -> Result<Tensor>,
        penalty: Option<Penalty<'_>>,
    ) -> std::result::Result<Tensor, ModelError> {
        let device = self.g.device();
        // Colour only: a model that draws alpha is matched on its colour.
        let targets = self.targets.f_narrow(1, 0, 3)?.f_to_device(device)?;
        let weights = self.weights.f_to_device(device)?;
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
            let img = img.f_narrow(1, 0, 3)?;
            let full = per_sample(&img.f_sub(&targets)?, &weights)?;
            let half = per_sample(&small(&img)?.f_sub(&targets_s)?, &weights_s)?;
            full.f_add(&half)?.f_sum(Kind::Float)
        };
        let n = targets.size()[0] as f64;
        let every = (self.steps / REPORTS).max(1);
        let schedule = self.schedule(device)?;
        let now = schedule.f_get(0)?.f_detach_copy()?;
        let extra = per_step.map(|p| p.f_get(0)?.f_detach_copy()).transpose()?;
        let var = var.f_set_requires_grad(true)?;
        let (m, v) = (var.f_zeros_like()?, var.f_zeros_like()?);
        // One step, reading `now` and `extra`; returns the loss.
        let step_once = || -> Result<Tensor> {
            let img = self.g.synthesis_graph(&ws_of(&var, extra.as_ref())?, self.noise)?;
            let mut loss = loss_of(&img)?;
            if let Some(p) = penalty {
                loss = loss.f_add(&p(&var)?)?;
            }
            let grad = Tensor::f_run_backward(&[&loss], &[&var], false, false)?.remove(0);
            tch::no_grad(|| -> Result<()> {
                let (lr, c1, c2) = (now.f_get(0)?, now.f_get(1)?, now.f_get(2)?);
                let _ = m.shallow_clone().f_mul_scalar_(B1)?.f_add_(&grad.f_mul_scalar(1.0 - B1)?)?;
                let _ = v.shallow_clone().f_mul_scalar_(B2)?.f_add_(&grad.f_square()?.f_mul_scalar(1.0 - B2)?)?;
                let mhat = m.f_div(&c1)?;
                let vhat = v.f_div(&c2)?;
                let update = mhat.f_div(&vhat.f_sqrt()?.f_add_scalar(EPS)?)?.f_mul(&lr)?;
                let _ = var.shallow_clone().f_sub_(&update)?;
                Ok(())
            })?;
            loss.f_detach()
        };
        // Recorded on CUDA with `cuda_graphs`, where the pass has nothing made on the host
        // (random noise is), after one step as usual (cuDNN's autotuner runs there).
        let uniform = self.noise.uniform().is_some_and(|m| m != NoiseMode::Random);
        let record_on = graphs::wanted(device).filter(|_| uniform && !RECORDING_FAILED.load(Ordering::Relaxed));
        let mut recorded: Option<(Graph, Tensor)> = None;
        for step in 0..self.steps {
            if let Some(courtesy) = self.watch.courtesy {
                courtesy();
            }
            if self.watch.stop.load(Ordering::Relaxed) {
                return Err(ModelError::Stopped);
            }
            now.shallow_clone().f_copy_(&schedule.f_get(step as i64)?)?;
            if let (Some(extra), Some(rows)) = (&extra, per_step) {
                extra.shallow_clone().f_copy_(&rows.f_get(step as i64)?)?;
            }
            let loss = match (&recorded, record_on) {
                (Some((graph, loss)), _) => {
                    graph.replay()?;
                    loss.shallow_clone()
                }
                (None, Some(ordinal)) if step == 1 => match Graph::record(ordinal, None, step_once) {
                    Ok((graph, loss)) => {
                        graph.replay()?;
                        recorded = Some((graph, loss.shallow_clone()));
                        loss
                    }
                    Err(e) => {
                        if !RECORDING_FAILED.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "a search step could not be recorded as a CUDA graph; searches run as usual");
                        }
                        step_once()?
                    }
                },
                _ => step_once()?,
            };
            let done = step + 1;
            if let Some(report) = self.watch.report.filter(|_| done % every == 0 || done == self.steps) {
                report(done, self.steps, loss.f_double_value(&[])? / n);
            }
        }
        Ok(var.f_detach()?)
    }

    /// Per step on `device`: the learning rate (ramped up over the first 5 %, down over the
    /// last 25 %) and Adam's two bias corrections, [steps, 3].
    fn schedule(&self, device: tch::Device) -> Result<Tensor> {
        let rows: Vec<f32> = (0..self.steps)
            .flat_map(|step| {
                let t = step as f64 / self.steps as f64;
                let ramp = ((1.0 - t) / 0.25).min(1.0);
                let lr = self.lr * (0.5 - 0.5 * (ramp * std::f64::consts::PI).cos()) * (t / 0.05).min(1.0);
                let k = step as i32 + 1;
                [lr as f32, (1.0 - B1.powi(k)) as f32, (1.0 - B2.powi(k)) as f32]
            })
            .collect();
        Tensor::from_slice(&rows).f_view([self.steps as i64, 3])?.f_to_device(device)
    }
}
