//! The HTTP surface: the table of endpoints (which `app` mounts and the OpenAPI document
//! describes, so the two cannot drift), request ids, logs and request metrics, bearer auth on
//! `/v1/*`, CORS, and the small handlers. The compose handler lives in `compose.rs`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use super::compose::post_compose;
use super::error::ApiError;
use super::state::AppState;
use super::{auth, grpc, openapi, page};
use crate::pipeline::{millis, Timings};

/// Every HTTP endpoint the server mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Compose,
    Models,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] =
        [Self::Compose, Self::Models, Self::Healthz, Self::Readyz, Self::Metrics, Self::OpenApi];

    pub fn method(self) -> &'static str {
        match self {
            Self::Compose => "post",
            _ => "get",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::Compose => "/v1/compose",
            Self::Models => "/v1/models",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Metrics => "/metrics",
            Self::OpenApi => "/openapi.json",
        }
    }

    pub fn summary(self) -> &'static str {
        match self {
            Self::Compose => "Compose a picture from a layout",
            Self::Models => "The loaded models",
            Self::Healthz => "Liveness: the process answers",
            Self::Readyz => "Readiness: every model loaded and warmed up, not shutting down",
            Self::Metrics => "Prometheus metrics",
            Self::OpenApi => "This document",
        }
    }

    /// Whether the bearer token, when one is set, guards it.
    pub fn guarded(self) -> bool {
        self.path().starts_with("/v1/")
    }

    fn handler(self) -> MethodRouter<Arc<AppState>> {
        match self {
            Self::Compose => post(post_compose),
            Self::Models => get(models),
            Self::Healthz => get(healthz),
            Self::Readyz => get(readyz),
            Self::Metrics => get(metrics_text),
            Self::OpenApi => get(openapi_json),
        }
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    let grpc = state.grpc_health.clone().add_service(grpc::MixganServer::new(grpc::GrpcApi { state: state.clone() }));
    let (mut guarded, mut open) = (Router::new(), Router::new());
    for e in Endpoint::ALL {
        if e.guarded() {
            guarded = guarded.route(e.path(), e.handler());
        } else {
            open = open.route(e.path(), e.handler());
        }
    }
    let guarded = guarded.route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mut router = open
        .merge(guarded)
        .merge(page::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        // gRPC on the same port (HTTP/2): tonic's routes under their service paths.
        .route_service("/mixgan.v1.Mixgan/{*method}", grpc.clone())
        .route_service("/grpc.health.v1.Health/{*method}", grpc)
        .fallback(not_found)
        .with_state(state.clone());
    if !state.config.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let origins = &state.config.cors_origins;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        router = router.layer(CorsLayer::new().allow_origin(allow).allow_methods(Any).allow_headers(Any));
    }
    router
}

async fn not_found() -> Response {
    let body = json!({"error": {"code": "not_found", "message": "no such endpoint; see /openapi.json"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Request id, in-flight gauge, request metrics and one log line per request.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = state.request_id(req.headers());
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let mut resp = next.run(req).await;
    state.metrics.in_flight.dec();
    let elapsed = started.elapsed();
    let status = resp.status();
    state.metrics.requests.with_label_values(&[&route, status.as_str()]).inc();
    state.metrics.request_seconds.with_label_values(&[&route]).observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let ms = millis(elapsed);
    match resp.extensions().get::<Timings>() {
        Some(t) => tracing::info!(
            request_id = %id, %method, route = %route, status = status.as_u16(), ms,
            route_ms = millis(t.route), detect_ms = millis(t.detect), project_ms = millis(t.project), queue_ms = millis(t.queue),
            generate_ms = millis(t.generate), composite_ms = millis(t.composite), encode_ms = millis(t.encode),
            "request"
        ),
        None => tracing::info!(request_id = %id, %method, route = %route, status = status.as_u16(), ms, "request"),
    }
    resp
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth::check(state.config.api_key.as_deref(), given) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "models": state.models()? })))
}
