//! Prometheus metrics: requests, durations per request and per stage, batch sizes, queue
//! depths, in-flight requests, overload rejections, models loaded. Only counts; serves nothing.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::batcher::BatchObserver;
use crate::pipeline::{Hooks, Stage};
use crate::router::RoutePlan;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub stage_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    pub batch_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub queue_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub rejected: IntCounterVec,
    pub cancelled: IntCounterVec,
    pub dropped_jobs: IntCounterVec,
    pub models_loaded: IntGauge,
    pub ready: IntGauge,
    pub patches_per_request: Histogram,
    pub canvas_batch_size: Histogram,
}

const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("mixgan_requests_total", "HTTP requests by route and status."),
            &["route", "status"],
        )
        .unwrap();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("mixgan_request_duration_seconds", "HTTP request duration by route.")
                .buckets(SECONDS.to_vec()),
            &["route"],
        )
        .unwrap();
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("mixgan_stage_duration_seconds", "Time per pipeline stage of /v1/compose (route, detect, project, queue, generate, composite, encode; detect only for layouts that detect, project only when a region projects or harmonises).")
                .buckets(SECONDS.to_vec()),
            &["stage"],
        )
        .unwrap();
        let batch_size = HistogramVec::new(
            HistogramOpts::new("mixgan_batch_size", "Patches per generator batch, by model.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["model"],
        )
        .unwrap();
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("mixgan_batch_duration_seconds", "Generator time per batch, by model.")
                .buckets(SECONDS.to_vec()),
            &["model"],
        )
        .unwrap();
        let queue_depth =
            IntGaugeVec::new(Opts::new("mixgan_queue_depth", "Patches waiting for a generator, by model."), &["model"])
                .unwrap();
        let queue_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mixgan_queue_duration_seconds",
                "Time a generation job waited for its batch, by model (the autoscaling signal).",
            )
            .buckets(SECONDS.to_vec()),
            &["model"],
        )
        .unwrap();
        let in_flight = IntGauge::new("mixgan_in_flight_requests", "Requests being served.").unwrap();
        let rejected = IntCounterVec::new(
            Opts::new("mixgan_rejected_total", "Requests refused without work, by reason."),
            &["reason"],
        )
        .unwrap();
        let cancelled = IntCounterVec::new(
            Opts::new(
                "mixgan_cancelled_total",
                "Admitted requests that ended before their answer, by reason (client_left, timeout).",
            ),
            &["reason"],
        )
        .unwrap();
        let dropped_jobs = IntCounterVec::new(
            Opts::new("mixgan_dropped_jobs_total", "Generation jobs dropped because their client had gone, by model."),
            &["model"],
        )
        .unwrap();
        let models_loaded = IntGauge::new("mixgan_models_loaded", "Models loaded.").unwrap();
        let ready = IntGauge::new(
            "mixgan_ready",
            "1 when every model is loaded and warmed up and the server is not shutting down.",
        )
        .unwrap();
        let patches_per_request = Histogram::with_opts(
            HistogramOpts::new("mixgan_patches_per_request", "Generated patches per compose request.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(request_seconds.clone())).unwrap();
        registry.register(Box::new(stage_seconds.clone())).unwrap();
        registry.register(Box::new(batch_size.clone())).unwrap();
        registry.register(Box::new(batch_seconds.clone())).unwrap();
        registry.register(Box::new(queue_depth.clone())).unwrap();
        registry.register(Box::new(queue_seconds.clone())).unwrap();
        registry.register(Box::new(in_flight.clone())).unwrap();
        registry.register(Box::new(rejected.clone())).unwrap();
        registry.register(Box::new(cancelled.clone())).unwrap();
        registry.register(Box::new(dropped_jobs.clone())).unwrap();
        registry.register(Box::new(models_loaded.clone())).unwrap();
        registry.register(Box::new(ready.clone())).unwrap();
        let canvas_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "mixgan_canvas_batch_size",
                "Canvases per compositing batch (composite_on = batched; none otherwise).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .unwrap();
        registry.register(Box::new(patches_per_request.clone())).unwrap();
        registry.register(Box::new(canvas_batch_size.clone())).unwrap();
        let _ = rejected.with_label_values(&["overload"]);
        let _ = rejected.with_label_values(&["search_budget"]);
        for reason in ["client_left", "timeout"] {
            let _ = cancelled.with_label_values(&[reason]);
        }
        Self {
            registry,
            requests,
            request_seconds,
            stage_seconds,
            batch_size,
            batch_seconds,
            queue_depth,
            queue_seconds,
            in_flight,
            rejected,
            cancelled,
            dropped_jobs,
            models_loaded,
            ready,
            patches_per_request,
            canvas_batch_size,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// Starts every per-model series at zero so they show before the first request.
    pub fn register_model(&self, model: &str) {
        self.queue_depth.with_label_values(&[model]).set(0);
        let _ = self.batch_size.with_label_values(&[model]);
        let _ = self.batch_seconds.with_label_values(&[model]);
        let _ = self.queue_seconds.with_label_values(&[model]);
        let _ = self.dropped_jobs.with_label_values(&[model]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchObserver for Metrics {
    fn batch(&self, model: &str, size: usize, seconds: f64) {
        self.batch_size.with_label_values(&[model]).observe(size as f64);
        self.batch_seconds.with_label_values(&[model]).observe(seconds);
    }

    fn queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth.with_label_values(&[model]).set(depth as i64);
    }

    fn dropped(&self, model: &str, jobs: usize) {
        self.dropped_jobs.with_label_values(&[model]).inc_by(jobs as u64);
    }

    fn queued(&self, model: &str, seconds: f64) {
        self.queue_seconds.with_label_values(&[model]).observe(seconds);
    }
}

/// What the compositing worker reports: the size of each batch of canvases.
pub struct CanvasBatches(pub std::sync::Arc<Metrics>);

impl BatchObserver for CanvasBatches {
    fn batch(&self, _lane: &str, size: usize, _seconds: f64) {
        self.0.canvas_batch_size.observe(size as f64);
    }
}

impl Hooks for Metrics {
    fn planned(&self, plan: &RoutePlan) {
        self.patches_per_request.observe(plan.jobs.iter().map(|j| j.slots.len()).sum::<usize>() as f64);
    }

    fn stage_done(&self, stage: Stage, took: std::time::Duration) {
        self.stage_seconds.with_label_values(&[stage.name()]).observe(took.as_secs_f64());
    }
}
