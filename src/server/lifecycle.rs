//! The server's life: logging, listening, loading the models in the background (alive but not
//! ready meanwhile), gRPC health following readiness, and on SIGTERM or SIGINT a graceful
//! shutdown that drains the requests in flight for at most the grace period.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::routes::app;
use super::state::{AppState, EngineError};
use crate::config::{Config, LogFormat};
use crate::model::DeviceError;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("setting `device`: {0}")]
    Device(#[from] DeviceError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot serve: {0}")]
    Engine(#[from] EngineError),
    #[error("loading the models panicked: {0}")]
    LoadPanicked(String),
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

/// Sets the gRPC health of the whole server and of the Mixgan service.
async fn set_health(state: &AppState, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    state.health.set_service_status("", status).await;
    state.health.set_service_status("mixgan.v1.Mixgan", status).await;
}

/// Runs the server until SIGTERM or SIGINT, then drains in-flight requests for at most the
/// grace period. The bound address is printed on stdout first (useful with port 0).
pub async fn serve(config: Config) -> Result<(), ServeError> {
    init_logging(config.log_format);
    let device = config.device.resolve()?;
    crate::model::device::configure(device, config.switches());
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .map_err(|source| ServeError::Listen { addr: config.addr.clone(), source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.addr.clone(), source })?;
    println!("mixgan: listening on http://{local}");
    let grace = Duration::from_secs(config.grace_period_s);
    let state = AppState::new(config, device);
    tracing::info!(addr = %local, models = %state.config.models.display(), device = %state.config.device, "starting");

    set_health(&state, false).await;
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<ServeError>(1);
    let loader = state.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let st = loader.clone();
        match tokio::task::spawn_blocking(move || st.load_engine()).await {
            Ok(Ok(())) => {
                if loader.is_ready() {
                    set_health(&loader, true).await;
                }
                tracing::info!(seconds = t.elapsed().as_secs_f64(), "models loaded and warmed up; ready");
            }
            Ok(Err(e)) => {
                let _ = failed_tx.send(e.into()).await;
            }
            Err(e) => {
                let _ = failed_tx.send(ServeError::LoadPanicked(e.to_string())).await;
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });

    let reason = tokio::select! {
        r = shutdown_signal() => Ok(r),
        Some(e) = failed_rx.recv() => Err(e),
    };
    state.begin_shutdown();
    set_health(&state, false).await;
    let _ = stop_tx.send(true);
    match &reason {
        Ok(sig) => {
            tracing::info!(signal = %sig, grace_s = grace.as_secs(), "shutting down: draining in-flight requests")
        }
        Err(e) => tracing::error!("{e}"),
    }
    // The grace period is for the requests in flight. Idle keep-alive connections (a client's
    // gRPC channel stays open) must not hold the exit: once nothing is in flight the answers
    // get LINGER to be written and the connections to close, then the process ends.
    let mut server = server;
    let drained = async {
        while !state.nothing_in_flight() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = tokio::time::timeout(LINGER, &mut server).await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("grace period over with requests still in flight");
    }
    reason.map(|_| ())
}

/// How long the server waits, once no request is in flight, for answers to be written and
/// connections to close before it exits.
const LINGER: Duration = Duration::from_secs(2);

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
