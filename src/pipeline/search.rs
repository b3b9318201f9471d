//! The latent searches of the pipeline's project stage: projection (regions regenerated from
//! the likeness of the background picture under them) and harmonisation (a region's seed
//! nudged so its patch's border agrees with the background around it). Both change only
//! the plan's generation parameters; the generate stage then draws the patches as usual.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::progress::{tell, Progress, ProgressSink, Search};
use super::Pipeline;
use crate::compositor::Compositor;
use crate::error::PipelineError;
use crate::model::{GenerationParams, Model, Watch};
use crate::router::geometry::Rect;
use crate::router::{Background, Harmony, Region, RoutePlan};

/// How strongly harmonisation holds w near the seed's: the penalty on the offset's squared
/// length, in units of W's spread.
pub const HARMONIZE_HOLD: f64 = 0.05;

/// The width of the border ring a region is harmonised over: 8 % of its shorter visible side,
/// 2 to 32 pixels.
fn ring_band(region: &Region) -> i64 {
    ((0.08 * region.visible.w.min(region.visible.h) as f64).round() as i64).clamp(2, 32)
}

/// Regions of `plan` for which `steps_of` gives a step count, grouped by model and count so
/// each group is searched as one batch.
fn groups(plan: &RoutePlan, steps_of: impl Fn(&Region) -> Option<usize>) -> BTreeMap<(String, usize), Vec<usize>> {
    let mut groups: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    for (i, region) in plan.regions.iter().enumerate() {
        if let Some(steps) = steps_of(region) {
            groups.entry((region.model.name().to_string(), steps)).or_default().push(i);
        }
    }
    groups
}

/// Called before every search step with the stop flag; may wait (until the flag is set at
/// the latest) so that cheaper work goes first.
pub type Courtesy = Arc<dyn Fn(&AtomicBool) + Send + Sync>;

/// The searches of one request, watched as one: they stop together, wait on the same
/// courtesy, and report their steps against the request's total.
pub struct SearchWatch<'a> {
    stop: &'a AtomicBool,
    sink: Option<ProgressSink>,
    courtesy: Option<Courtesy>,
    /// Every search step the plan asks for (see [`Pipeline::search_steps`]).
    total: usize,
    done: AtomicUsize,
}

impl<'a> SearchWatch<'a> {
    /// Stops when `stop` is set; reports to no one, waits for nothing.
    pub fn new(stop: &'a AtomicBool) -> Self {
        Self { stop, sink: None, courtesy: None, total: 0, done: AtomicUsize::new(0) }
    }

    /// Reports each step to `sink`, out of `total` steps in all.
    pub fn telling(self, sink: Option<ProgressSink>, total: usize) -> Self {
        Self { sink, total, ..self }
    }

    /// Waits on `courtesy` before each step.
    pub fn yielding(self, courtesy: Option<Courtesy>) -> Self {
        Self { courtesy, ..self }
    }

    /// Runs one group's search (`steps` steps of `model`) with `search` given the [`Watch`].
    fn group<T>(
        &self,
        kind: Search,
        model: &Model,
        steps: usize,
        search: impl FnOnce(Watch) -> Result<T, PipelineError>,
    ) -> Result<T, PipelineError> {
        let before = self.done.load(Ordering::Relaxed);
        let report = |step: usize, steps: usize, loss: f64| {
            tell(self.sink.as_ref(), || Progress::Step {
                search: kind,
                model: model.name().to_string(),
                step,
                steps,
                loss,
                done: before + step,
                total: self.total,
            })
        };
        let courtesy = || {
            if let Some(c) = &self.courtesy {
                c(self.stop);
            }
        };
        let watch = Watch {
            stop: self.stop,
            courtesy: self.courtesy.as_ref().map(|_| &courtesy as _),
            report: self.sink.as_ref().map(|_| &report as _),
        };
        let out = search(watch)?;
        self.done.store(before + steps, Ordering::Relaxed);
        Ok(out)
    }
}

/// Each picture's mean absolute difference from its target over its weight, in 8-bit levels.
fn ring_errors(images: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Vec<f64>, PipelineError> {
    let dims = &[1i64, 2, 3][..];
    let diff = images.f_narrow(1, 0, 3)?.f_sub(&targets.f_to_device(images.device())?)?.f_abs()?;
    let weights = weights.f_to_device(images.device())?;
    let total = diff.f_mul(&weights)?.f_sum_dim_intlist(dims, false, Kind::Float)?;
    let count = weights.f_sum_dim_intlist(dims, false, Kind::Float)?.f_mul_scalar(3.0)?.f_clamp_min(1e-6)?;
    let levels = total.f_div(&count)?.f_mul_scalar(127.5)?.f_to_device(Device::Cpu)?;
    Ok(Vec::<f64>::try_from(levels.f_to_kind(Kind::Double)?)?)
}

impl Pipeline {
    /// Every search step `plan` asks for: one count per group searched as a batch.
    pub fn search_steps(plan: &RoutePlan) -> usize {
        let projected = match plan.background {
            Background::Image(_) => groups(plan, |r| r.project_steps).keys().map(|(_, steps)| steps).sum(),
            _ => 0,
        };
        projected + groups(plan, |r| r.harmonize_steps).keys().map(|(_, steps)| steps).sum::<usize>()
    }

    /// Both searches, projection first.
    pub fn search(&self, mut plan: RoutePlan, watch: &SearchWatch) -> Result<RoutePlan, PipelineError> {
        self.project(&mut plan, watch)?;
        self.harmonize(&mut plan, watch)?;
        Ok(plan)
    }

    /// Regions that `project` get the ws that reproduce what the background picture shows
    /// under them (see `model::project`); the regions of one model with the same step count
    /// are searched as one batch. Heavy: a generator pass forward and back per step.
    /// Stops within one search step of the watch's stop flag being set.
    pub fn project(&self, plan: &mut RoutePlan, watch: &SearchWatch) -> Result<(), PipelineError> {
        let Background::Image(rgb) = &plan.background else { return Ok(()) };
        if !plan.projects() {
            return Ok(());
        }
        let compositor = Compositor { device: self.device };
        let picture = compositor.picture(rgb, plan.height, plan.width)?;
        for ((_, steps), members) in groups(plan, |r| r.project_steps) {
            let model = plan.regions[members[0]].model.clone();
            let res = model.spec.generator.img_resolution;
            let (mut targets, mut weights) = (Vec::new(), Vec::new());
            for &i in &members {
                let (target, weight) = compositor.projection_target(&picture, &plan.regions[i], res)?;
                targets.push(target);
                weights.push(weight);
            }
            let (targets, weights) = (Tensor::f_stack(&targets, 0)?, Tensor::f_stack(&weights, 0)?);
            let ws =
                watch.group(Search::Project, &model, steps, |w| Ok(model.project(&targets, &weights, steps, w)?))?;
            let ws = ws.f_to_device(Device::Cpu)?;
            for (k, &i) in members.iter().enumerate() {
                let w = Vec::<f32>::try_from(ws.f_get(k as i64)?.f_flatten(0, -1)?)?;
                plan.regions[i].params.projected = Some(Arc::new(w));
            }
        }
        Ok(())
    }

    /// Regions that `harmonize` get ws near their seeds' whose patches agree with the
    /// background (not the other regions) over the ring just inside their edge (see
    /// `model::project::harmonize`); `Region::harmony` records the ring error before and
    /// after. A generated background is drawn here once to be matched.
    pub fn harmonize(&self, plan: &mut RoutePlan, watch: &SearchWatch) -> Result<(), PipelineError> {
        if !plan.harmonizes() {
            return Ok(());
        }
        let compositor = Compositor { device: self.device };
        let patch = match &plan.background {
            Background::Generated { model, params, .. } => {
                Some(model.generate(std::slice::from_ref(params))?.f_get(0)?)
            }
            _ => None,
        };
        let canvas = compositor.background(plan, patch.as_ref())?;
        let bounds = Rect { x: 0, y: 0, w: plan.width, h: plan.height };
        for ((_, steps), members) in groups(plan, |r| r.harmonize_steps) {
            let model = plan.regions[members[0]].model.clone();
            let res = model.spec.generator.img_resolution;
            let (mut targets, mut weights) = (Vec::new(), Vec::new());
            for &i in &members {
                let region = &plan.regions[i];
                let ring = compositor.border_ring(region, &bounds, ring_band(region))?;
                let (target, weight) = compositor.target_under(&canvas, region, res, &ring)?;
                targets.push(target);
                weights.push(weight);
            }
            let (targets, weights) = (Tensor::f_stack(&targets, 0)?, Tensor::f_stack(&weights, 0)?);
            let params: Vec<GenerationParams> = members.iter().map(|&i| plan.regions[i].params.clone()).collect();
            let before = ring_errors(&model.generate(&params)?, &targets, &weights)?;
            let ws = watch.group(Search::Harmonize, &model, steps, |w| {
                Ok(model.harmonize(&params, &targets, &weights, steps, HARMONIZE_HOLD, w)?)
            })?;
            let ws = ws.f_to_device(Device::Cpu)?;
            let mut nudged = params;
            for (k, p) in nudged.iter_mut().enumerate() {
                p.projected = Some(Arc::new(Vec::<f32>::try_from(ws.f_get(k as i64)?.f_flatten(0, -1)?)?));
                p.mix = None; // the ws already hold the mix
            }
            let after = ring_errors(&model.generate(&nudged)?, &targets, &weights)?;
            for (k, &i) in members.iter().enumerate() {
                let region = &mut plan.regions[i];
                region.params = nudged[k].clone();
                region.harmony = Some(Harmony { ring_error_before: before[k], ring_error_after: after[k] });
            }
        }
        Ok(())
    }
}
