//! Every error the API answers, and the one place that maps each to its HTTP status and JSON
//! body `{"error": {"code": "...", "message": "..."}}` (`grpc.rs` maps them to gRPC codes).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

use crate::batcher::BatchError;
use crate::error::{LayoutError, PipelineError};

#[derive(Debug, Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("{0}")]
    MalformedJson(LayoutError),
    /// A layout the router refuses.
    #[error("{0}")]
    InvalidLayout(LayoutError),
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("send the layout as application/json, not `{0}`")]
    UnsupportedMediaType(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the models are still loading and warming up, or the server is shutting down")]
    NotReady,
    #[error("{0}")]
    Overloaded(String),
    #[error("the request took longer than {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::InvalidLayout(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotReady | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidLayout(_) => "invalid_layout",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::NotReady => "not_ready",
            Self::Overloaded(_) => "overloaded",
            Self::Timeout { .. } => "timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// Every code, for the OpenAPI document.
    pub const CODES: [&'static str; 9] = [
        "malformed_json",
        "invalid_layout",
        "body_too_large",
        "unsupported_media_type",
        "unauthorized",
        "not_ready",
        "overloaded",
        "timeout",
        "internal",
    ];
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Layout(l @ LayoutError::NotJson { .. }) => Self::MalformedJson(l),
            PipelineError::Layout(l) => Self::InvalidLayout(l),
            PipelineError::Batch(b) => b.into(),
            PipelineError::Busy(why) => Self::Overloaded(why),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Overloaded { .. } => Self::Overloaded(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        match self {
            Self::Overloaded(_) | Self::NotReady => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
