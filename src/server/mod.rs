//! The HTTP service (axum): routes, auth, request ids and logs, metrics, readiness and
//! graceful shutdown. Handlers only orchestrate: routing and compositing run on blocking
//! threads, generation on the batcher's workers, never on the async runtime.

pub mod error;
pub mod grpc;
pub mod metrics;
pub mod openapi;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;

use crate::batcher::{BatchSettings, Batcher, CpuSlots};
use crate::config::{Config, LogFormat};
use crate::model::parse_device;
use crate::registry::ModelRegistry;
use crate::render::{CompositeOn, Renderer, Timings};
use crate::router::{Background, RoutePlan};
use error::ApiError;
use metrics::Metrics;

/// What exists once the models are loaded.
pub struct Engine {
    pub renderer: Renderer,
    pub batcher: Batcher,
}

pub struct AppState {
    pub config: Config,
    /// CPU work slots shared by compositing and the generator workers.
    cpu_slots: Arc<CpuSlots>,
    /// Bounds the blocking threads that wait for a CPU slot, so a crowd of requests queues
    /// here as cheap tasks instead of as parked threads.
    compose_gate: tokio::sync::Semaphore,
    /// Compose requests admitted at once; one more is refused at once with 503.
    admitted: tokio::sync::Semaphore,
    /// grpc.health.v1: NOT_SERVING until ready, and again while shutting down.
    health: tonic_health::server::HealthReporter,
    /// gRPC routes so far: the health service (the API joins them in `app`).
    grpc_health: tonic::service::Routes,
    pub metrics: Arc<Metrics>,
    pub engine: OnceLock<Engine>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let slots = if config.cpu_slots == 0 { cores } else { config.cpu_slots };
        let (health, health_service) = tonic_health::server::health_reporter();
        Arc::new(Self {
            health,
            grpc_health: tonic::service::Routes::new(health_service),
            cpu_slots: Arc::new(CpuSlots::new(slots)),
            compose_gate: tokio::sync::Semaphore::new(slots),
            admitted: tokio::sync::Semaphore::new(config.max_in_flight),
            config,
            metrics: Arc::new(Metrics::new()),
            engine: OnceLock::new(),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    /// The engine once warmed up. It stays available while shutting down, so in-flight
    /// requests can finish.
    fn engine(&self) -> Result<&Engine, ApiError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(ApiError::NotReady);
        }
        self.engine.get().ok_or(ApiError::NotReady)
    }

    fn request_id(&self, headers: &HeaderMap) -> String {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:x}-{:06x}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed)))
    }
}

/// Loads the models, starts the workers and warms each model up; then the server is ready.
pub fn load_engine(state: &AppState) -> Result<(), String> {
    let c = &state.config;
    let device = parse_device(&c.device)?;
    // The CPU's parallelism comes from running batches and compositing side by side (one
    // task per CPU slot), so each libtorch call gets one thread unless told otherwise; on a
    // GPU too, where the CPU's libtorch work is compositing (`composite_on = "cpu"`) or none.
    tch::set_num_threads(c.torch_threads.max(1) as i32);
    let registry = Arc::new(ModelRegistry::load(&c.models, device).map_err(|e| e.to_string())?);
    for m in registry.iter() {
        state.metrics.register_model(m.name());
    }
    state.metrics.models_loaded.set(registry.iter().count() as i64);
    let defaults = BatchSettings { max_batch: c.max_batch, max_wait: Duration::from_millis(c.max_wait_ms) };
    let batcher = Batcher::start(&registry, defaults, c.queue_capacity, state.cpu_slots.clone(), state.metrics.clone());
    for m in registry.iter() {
        let params = m.default_params(0);
        for _ in 0..c.warmup_iterations {
            let rx = batcher.submit(m.name(), vec![params.clone()]).map_err(|e| e.to_string())?;
            let _patch = rx
                .blocking_recv()
                .map_err(|_| "a worker stopped during warm-up".to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
    let composite_on: CompositeOn = c.composite_on.parse().map_err(|e| format!("composite_on: {e}"))?;
    let renderer = Renderer { registry, limits: c.router_limits(), device, composite_on };
    if state.engine.set(Engine { renderer, batcher }).is_err() {
        return Err("the engine was loaded twice".into());
    }
    state.ready.store(true, Ordering::Release);
    state.metrics.ready.set(1);
    Ok(())
}

/// Equal lengths and bytes, compared without an early exit.
pub(crate) fn same_secret(given: &str, key: &str) -> bool {
    given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Sets the gRPC health of the whole server and of the Mixgan service.
async fn set_health(state: &AppState, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    state.health.set_service_status("", status).await;
    state.health.set_service_status("mixgan.v1.Mixgan", status).await;
}

pub fn app(state: Arc<AppState>) -> Router {
    let grpc = state.grpc_health.clone().add_service(grpc::MixganServer::new(grpc::GrpcApi { state: state.clone() }));
    let v1 = Router::new()
        .route("/v1/compose", post(compose))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mut router = Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
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
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"code": "not_found", "message": "no such endpoint; see /openapi.json"}})),
    )
        .into_response()
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
    let seconds = started.elapsed().as_secs_f64();
    let status = resp.status();
    state.metrics.requests.with_label_values(&[&route, status.as_str()]).inc();
    state.metrics.request_seconds.with_label_values(&[&route]).observe(seconds);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let timings = resp.extensions().get::<Timings>().copied();
    match timings {
        Some(t) => tracing::info!(
            request_id = %id, %method, route = %route, status = status.as_u16(), ms = seconds * 1e3,
            route_ms = ms(t.route), generate_ms = ms(t.generate), composite_ms = ms(t.composite), encode_ms = ms(t.encode),
            "request"
        ),
        None => {
            tracing::info!(request_id = %id, %method, route = %route, status = status.as_u16(), ms = seconds * 1e3, "request")
        }
    }
    resp
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| same_secret(g, key));
        if !ok {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
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
    Ok(Json(json!({ "models": model_list(&state)? })))
}

/// One model as both APIs describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ModelInfo {
    pub name: String,
    pub classes: Vec<String>,
    pub kind: crate::model::spec::ModelKind,
    pub resolution: i64,
    pub channels: i64,
    pub c_dim: i64,
    pub device: String,
    pub batching: Option<BatchingInfo>,
    pub queue_depth: usize,
    pub ready: bool,
    /// Whether regions served by it may `project`.
    pub projects: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct BatchingInfo {
    pub max_batch: usize,
    pub max_wait_ms: u64,
}

pub(crate) fn model_list(state: &AppState) -> Result<Vec<ModelInfo>, ApiError> {
    let engine = state.engine()?;
    let ready = state.is_ready();
    Ok(engine
        .renderer
        .registry
        .iter()
        .map(|m| {
            let g = &m.spec.generator;
            ModelInfo {
                name: m.name().to_string(),
                classes: m.spec.classes.clone(),
                kind: m.spec.kind,
                resolution: g.img_resolution,
                channels: g.img_channels,
                c_dim: g.c_dim,
                device: format!("{:?}", m.generator.device()).to_lowercase(),
                batching: engine
                    .batcher
                    .settings(m.name())
                    .map(|b| BatchingInfo { max_batch: b.max_batch, max_wait_ms: b.max_wait.as_millis() as u64 }),
                queue_depth: engine.batcher.queue_depth(m.name()),
                ready,
                projects: m.can_project(),
            }
        })
        .collect())
}

fn panic_message(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("a pipeline stage failed: {e}"))
}

async fn compose(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    state.engine()?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_string()));
    }
    let limit = state.config.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::BodyTooLarge { limit })?;
    let want_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    Ok(respond(compose_layout(state, bytes).await?, want_json))
}

/// Admission, the time limit and the overload metric around one compose, for both APIs.
pub(crate) async fn compose_layout(state: Arc<AppState>, layout: axum::body::Bytes) -> Result<Composed, ApiError> {
    state.engine()?;
    let Ok(_admitted) = state.admitted.try_acquire() else {
        state.metrics.rejected.with_label_values(&["overload"]).inc();
        return Err(ApiError::Overloaded(format!(
            "{} requests are in flight already; try again shortly",
            state.config.max_in_flight
        )));
    };
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    match tokio::time::timeout(timeout, run_compose(state.clone(), layout)).await {
        Err(_) => Err(ApiError::Timeout { after_ms: state.config.request_timeout_ms }),
        Ok(Err(e)) => {
            if matches!(e, ApiError::Overloaded(_)) {
                state.metrics.rejected.with_label_values(&["overload"]).inc();
            }
            Err(e)
        }
        Ok(Ok(done)) => Ok(done),
    }
}

pub(crate) struct Composed {
    pub bytes: Vec<u8>,
    pub plan: RoutePlan,
    pub timings: Timings,
    pub queue: Duration,
}

async fn run_compose(state: Arc<AppState>, body: axum::body::Bytes) -> Result<Composed, ApiError> {
    let engine = state.engine()?;
    let m = &state.metrics;
    let t0 = Instant::now();
    let st = state.clone();
    // Routing is cheap and takes no CPU slot: its jobs should reach the queues at once, where
    // they can join batches.
    let plan = tokio::task::spawn_blocking(move || st.engine().map(|e| e.renderer.plan(&body)))
        .await
        .map_err(panic_message)??
        .map_err(|e| ApiError::from(crate::error::RenderError::Layout(e)))?;
    let t1 = Instant::now();
    let projecting = plan.regions.iter().any(|r| r.project_steps.is_some());
    let plan = if projecting {
        let st = state.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let _slot = st.cpu_slots.acquire();
            let mut plan = plan;
            st.engine()?.renderer.project(&mut plan)?;
            Ok(plan)
        })
        .await
        .map_err(panic_message)??
    } else {
        plan
    };
    let project = t1.elapsed();
    // Submit every model's job first so they queue (and batch) together, then wait.
    let receivers = plan
        .jobs
        .iter()
        .map(|job| engine.batcher.submit(job.model.name(), job.items.iter().map(|(_, p)| p.clone()).collect()))
        .collect::<Result<Vec<_>, _>>()?;
    m.patches_per_request.observe(plan.jobs.iter().map(|j| j.items.len()).sum::<usize>() as f64);
    let mut batches = Vec::with_capacity(receivers.len());
    let mut queue = Duration::ZERO;
    for rx in receivers {
        let (tensor, report) = rx.await.map_err(|_| ApiError::Internal("a generation worker stopped".into()))??;
        queue = queue.max(report.queued);
        batches.push(tensor);
    }
    let t2 = Instant::now();
    let st = state.clone();
    let _gate = state.compose_gate.acquire().await.map_err(|_| ApiError::NotReady)?;
    let (plan, bytes, composite, encode) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let _slot = st.cpu_slots.acquire();
        let engine = st.engine()?;
        let patches = Renderer::assemble(&plan, batches)?;
        let c0 = Instant::now();
        let canvas = engine.renderer.composite(&plan, &patches)?;
        let c1 = Instant::now();
        let bytes = engine.renderer.encode(&canvas, &plan)?;
        Ok((plan, bytes, c1 - c0, c1.elapsed()))
    })
    .await
    .map_err(panic_message)??;
    let timings = Timings { route: t1 - t0, project, generate: (t2 - t1).saturating_sub(project), composite, encode };
    if projecting {
        m.stage_seconds.with_label_values(&["project"]).observe(project.as_secs_f64());
    }
    for (stage, d) in [
        ("route", timings.route),
        ("queue", queue),
        ("generate", timings.generate.saturating_sub(queue)),
        ("composite", composite),
        ("encode", encode),
    ] {
        m.stage_seconds.with_label_values(&[stage]).observe(d.as_secs_f64());
    }
    Ok(Composed { bytes, plan, timings, queue })
}

fn respond(done: Composed, want_json: bool) -> Response {
    let Composed { bytes, plan, timings, queue } = done;
    let mut resp = if want_json {
        let regions: Vec<_> = plan
            .regions
            .iter()
            .map(|r| {
                json!({
                    "source": r.source, "class": r.class, "model": r.model.name(), "seed": r.params.seed, "z": r.z,
                    "box": [r.rect.x, r.rect.y, r.rect.w, r.rect.h],
                    "visible": [r.visible.x, r.visible.y, r.visible.w, r.visible.h],
                })
            })
            .collect();
        let background = match &plan.background {
            Background::Color(c) => json!({"color": format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])}),
            Background::Image(_) => json!({"image": true}),
            Background::Generated { model, params, .. } => json!({"model": model.name(), "seed": params.seed}),
        };
        Json(json!({
            "image": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "format": format!("{:?}", plan.format).to_lowercase(),
            "mime": plan.format.mime(),
            "width": plan.width, "height": plan.height,
            "background": background,
            "regions": regions,
            "timings_ms": {
                "route": ms(timings.route), "project": ms(timings.project), "queue": ms(queue), "generate": ms(timings.generate),
                "composite": ms(timings.composite), "encode": ms(timings.encode), "total": ms(timings.total()),
            },
        }))
        .into_response()
    } else {
        ([(header::CONTENT_TYPE, plan.format.mime())], bytes).into_response()
    };
    resp.extensions_mut().insert(timings);
    resp
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIXGAN_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the server until SIGTERM or SIGINT, then drains in-flight requests for at most the
/// grace period. The bound address is printed on stdout first (useful with port 0).
pub async fn serve(config: Config) -> Result<(), String> {
    init_logging(config.log_format);
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("mixgan: listening on http://{local}");
    let grace = Duration::from_secs(config.grace_period_s);
    let state = AppState::new(config);
    tracing::info!(addr = %local, models = %state.config.models.display(), device = %state.config.device, "starting");

    set_health(&state, false).await;
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(1);
    let loader = state.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let st = loader.clone();
        match tokio::task::spawn_blocking(move || load_engine(&st)).await {
            Ok(Ok(())) => {
                if loader.is_ready() {
                    set_health(&loader, true).await;
                }
                tracing::info!(seconds = t.elapsed().as_secs_f64(), "models loaded and warmed up; ready");
            }
            Ok(Err(e)) => {
                let _ = failed_tx.send(e).await;
            }
            Err(e) => {
                let _ = failed_tx.send(format!("loading the models panicked: {e}")).await;
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = app(state.clone());
    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });

    let reason = tokio::select! {
        r = shutdown_signal() => Ok(r),
        Some(e) = failed_rx.recv() => Err(e),
    };
    state.shutting_down.store(true, Ordering::Release);
    state.metrics.ready.set(0);
    set_health(&state, false).await;
    let _ = stop_tx.send(true);
    match &reason {
        Ok(sig) => {
            tracing::info!(signal = %sig, grace_s = grace.as_secs(), "shutting down: draining in-flight requests")
        }
        Err(e) => tracing::error!("cannot serve: {e}"),
    }
    if tokio::time::timeout(grace, server).await.is_err() {
        tracing::warn!("grace period over with requests still in flight");
    }
    reason.map(|_| ())
}

async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    }
}
