//! The gRPC API (tonic, `proto/mixgan.proto`), served on the HTTP port: the same
//! [`AppState::render`] (admission, limits, pipeline), auth and metrics as the HTTP API, and
//! `grpc.health.v1.Health` following readiness. It maps `ApiError` to gRPC codes, nothing more.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::auth;
use super::error::ApiError;
use super::progress::{Frame, Watching};
use super::state::AppState;
use crate::pipeline::{millis, Progress, Rendered, Timings};

pub mod pb {
    tonic::include_proto!("mixgan.v1");
}

use pb::mixgan_server::Mixgan;

pub use pb::mixgan_server::MixganServer;

pub struct GrpcApi {
    pub state: Arc<AppState>,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::MalformedJson(_) | ApiError::InvalidLayout(_) | ApiError::UnsupportedMediaType(_) => {
                Status::invalid_argument(message)
            }
            ApiError::BodyTooLarge { .. } | ApiError::Overloaded(_) => Status::resource_exhausted(message),
            ApiError::Unauthorized => Status::unauthenticated(message),
            ApiError::NotReady => Status::unavailable(message),
            ApiError::Timeout { .. } => Status::deadline_exceeded(message),
            ApiError::Internal(_) => Status::internal(message),
        }
    }
}

impl GrpcApi {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), ApiError> {
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        auth::check(self.state.config.api_key.as_deref(), given)
    }

    fn observe(&self, method: &str, started: Instant, code: tonic::Code) {
        let m = &self.state.metrics;
        let route = format!("/mixgan.v1.Mixgan/{method}");
        m.requests.with_label_values(&[&route, &format!("grpc_{}", code as i32)]).inc();
        m.request_seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    }
}

fn timings(t: &Timings) -> pb::Timings {
    pb::Timings {
        route_ms: millis(t.route),
        detect_ms: millis(t.detect),
        project_ms: millis(t.project),
        queue_ms: millis(t.queue),
        generate_ms: millis(t.generate),
        composite_ms: millis(t.composite),
        encode_ms: millis(t.encode),
        total_ms: millis(t.total()),
    }
}

/// One frame of a progress stream as its gRPC message; an error ends the stream.
fn event(frame: Frame) -> Result<pb::ComposeEvent, Status> {
    use pb::compose_event::Event;
    let event = match frame {
        Frame::Done(done) => Event::Result(reply((*done)?)),
        Frame::Progress(Progress::Queued) => Event::Queued(pb::Queued {}),
        Frame::Progress(Progress::Planned { width, height, regions, jobs, search_steps }) => {
            Event::Planned(pb::Planned {
                width: width as u32,
                height: height as u32,
                regions: regions as u32,
                jobs: jobs.into_iter().map(|j| pb::JobSize { model: j.model, patches: j.patches as u32 }).collect(),
                search_steps: search_steps as u32,
            })
        }
        Frame::Progress(Progress::Step { search, model, step, steps, loss, done, total }) => {
            Event::Step(pb::SearchStep {
                search: search.name().into(),
                model,
                step: step as u32,
                steps: steps as u32,
                loss,
                done: done as u32,
                total: total as u32,
            })
        }
        Frame::Progress(Progress::Batch { model, patches, queued_ms }) => {
            Event::Batch(pb::BatchDone { model, patches: patches as u32, queued_ms })
        }
        Frame::Progress(Progress::Composited { composite_ms, encode_ms }) => {
            Event::Composited(pb::Composited { composite_ms, encode_ms })
        }
    };
    Ok(pb::ComposeEvent { event: Some(event) })
}

fn reply(rendered: Rendered) -> pb::ComposeReply {
    let Rendered { bytes, format, plan, timings: t, .. } = rendered;
    pb::ComposeReply {
        image: bytes,
        mime: format.mime().to_string(),
        width: plan.width as u32,
        height: plan.height as u32,
        regions: plan
            .regions
            .iter()
            .map(|r| pb::Region {
                source: r.source.clone(),
                class: r.class.clone().unwrap_or_default(),
                model: r.model.name().to_string(),
                seed: r.params.seed,
                z: r.z,
                r#box: vec![r.rect.x, r.rect.y, r.rect.w, r.rect.h],
                visible: vec![r.visible.x, r.visible.y, r.visible.w, r.visible.h],
                matte: r.matte_name().to_string(),
                harmony: r.harmony.map(|h| pb::Harmony {
                    ring_error_before: h.ring_error_before,
                    ring_error_after: h.ring_error_after,
                }),
            })
            .collect(),
        timings: Some(timings(&t)),
        detections: plan
            .detections
            .iter()
            .map(|d| pb::Detection {
                source: d.source.clone(),
                detector: d.detector.clone(),
                class: d.class.clone(),
                r#box: d.rect.to_vec(),
                score: d.score,
                region: d.region.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

impl GrpcApi {
    /// The request's layout, once authorised and within the size limit.
    fn layout(&self, req: Request<pb::ComposeRequest>) -> Result<Vec<u8>, ApiError> {
        self.authorize(&req)?;
        let layout = req.into_inner().layout_json.into_bytes();
        if layout.len() > self.state.config.max_body_bytes {
            return Err(ApiError::BodyTooLarge { limit: self.state.config.max_body_bytes });
        }
        Ok(layout)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ComposeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Mixgan for GrpcApi {
    type ComposeStreamStream = EventStream;

    async fn compose(&self, req: Request<pb::ComposeRequest>) -> Result<Response<pb::ComposeReply>, Status> {
        let started = Instant::now();
        let result = async { self.state.render(self.layout(req)?, None).await }.await;
        let out = result.map(|done| Response::new(reply(done))).map_err(Status::from);
        self.observe("Compose", started, out.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok));
        out
    }

    async fn compose_stream(&self, req: Request<pb::ComposeRequest>) -> Result<Response<EventStream>, Status> {
        let started = Instant::now();
        let result = async { Watching::start(self.state.clone(), self.layout(req)?).await }.await.map_err(Status::from);
        self.observe("ComposeStream", started, result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok));
        let frames = result?;
        Ok(Response::new(Box::pin(frames.map(event))))
    }

    async fn list_models(&self, req: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsReply>, Status> {
        self.authorize(&req)?;
        let models = self
            .state
            .models()?
            .into_iter()
            .map(|m| pb::Model {
                kind: format!("{:?}", m.kind).to_lowercase(),
                name: m.name,
                classes: m.classes,
                resolution: m.resolution as u32,
                channels: m.channels as u32,
                c_dim: m.c_dim as u32,
                device: m.device,
                max_batch: m.batching.map_or(0, |b| b.max_batch as u32),
                max_wait_ms: m.batching.map_or(0, |b| b.max_wait_ms as u32),
                queue_depth: m.queue_depth as u32,
                ready: m.ready,
                projects: m.projects,
                precision: m.precision.map(|p| p.to_string()).unwrap_or_default(),
                alpha: m.alpha,
            })
            .collect();
        Ok(Response::new(pb::ListModelsReply { models }))
    }
}
