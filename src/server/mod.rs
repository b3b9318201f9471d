//! The service around the pipeline: HTTP (axum) and gRPC (tonic) on one port, admission,
//! limits, auth, metrics, readiness and graceful shutdown. It never sequences the stages
//! itself: both APIs call [`AppState::render`], which hands the layout to
//! [`crate::pipeline::Pipeline::run`] with the batcher's workers.
//!
//! - `state`: settings, limits, readiness, the engine (pipeline + batcher), the render entry
//! - `routes`: the endpoint table (mounted and documented alike), middleware, small handlers
//! - `compose`: `POST /v1/compose`, its JSON answer and its event stream; `grpc`: the gRPC API
//! - `page`: the layout editor at `/` (`ui/`), compiled in
//! - `progress`: a render on its own task as a stream of progress frames, for both APIs
//! - `auth`, `error` (the one mapping to HTTP status), `metrics`, `openapi`
//! - `lifecycle`: listening, loading in the background, signals and draining

pub mod auth;
mod compose;
pub mod error;
pub mod grpc;
mod lifecycle;
pub mod metrics;
pub mod openapi;
mod page;
mod progress;
pub mod routes;
mod state;

pub use lifecycle::{init_logging, serve, ServeError};
pub use routes::{app, Endpoint};
pub use state::{AppState, Engine, EngineError};
