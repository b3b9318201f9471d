//! What a request reports as it passes through the stages, for the progress streams of both
//! APIs (server-sent events, gRPC server streaming). The pipeline emits these through a
//! [`ProgressSink`]; the front ends add the request's start (`queued`) and its end (the
//! result, or an error). Nothing here knows about HTTP or gRPC.

use std::sync::Arc;

use crate::router::RoutePlan;

/// One event of a request's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// Admitted: routing is next.
    Queued,
    /// Routed and admitted: the canvas, how many regions, each model's patches to draw, and
    /// the latent-search steps ahead (projection and harmonisation together).
    Planned { width: i64, height: i64, regions: usize, jobs: Vec<JobSize>, search_steps: usize },
    /// A latent search went `step` of its `steps`, at `loss` (the mean over its targets);
    /// `done` of `total` is the request's whole search so far. Reported every few steps.
    Step { search: Search, model: String, step: usize, steps: usize, loss: f64, done: usize, total: usize },
    /// One model's patches are drawn, after waiting `queued_ms` for their batch.
    Batch { model: String, patches: usize, queued_ms: f64 },
    /// Composited and encoded; the result follows.
    Composited { composite_ms: f64, encode_ms: f64 },
}

impl Progress {
    pub fn planned(plan: &RoutePlan, search_steps: usize) -> Self {
        Self::Planned {
            width: plan.width,
            height: plan.height,
            regions: plan.regions.len(),
            jobs: plan.jobs.iter().map(|j| JobSize { model: j.model.name().into(), patches: j.slots.len() }).collect(),
            search_steps,
        }
    }
}

/// One model's share of the generate stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobSize {
    pub model: String,
    pub patches: usize,
}

/// Which latent search a [`Progress::Step`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Search {
    Project,
    Harmonize,
}

impl Search {
    pub fn name(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Harmonize => "harmonize",
        }
    }
}

/// Hears a request's progress; called from whichever thread runs the stage.
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// Tells `sink`, if there is one.
pub(crate) fn tell(sink: Option<&ProgressSink>, event: impl FnOnce() -> Progress) {
    if let Some(sink) = sink {
        sink(event());
    }
}
