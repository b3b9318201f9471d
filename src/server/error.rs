//! Every error the API answers, and the one place that maps each to its HTTP status and JSON
//! body `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::batcher::BatchError;
use crate::error::{LayoutError, RenderError};

#[derive(Debug)]
pub enum ApiError {
    /// The body is not JSON.
    MalformedJson(String),
    /// A layout the router refuses.
    InvalidLayout(LayoutError),
    BodyTooLarge {
        limit: usize,
    },
    UnsupportedMediaType(String),
    Unauthorized,
    NotReady,
    Overloaded(String),
    Timeout {
        after_ms: u64,
    },
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

    pub fn message(&self) -> String {
        match self {
            Self::MalformedJson(m) | Self::Overloaded(m) | Self::Internal(m) => m.clone(),
            Self::InvalidLayout(e) => e.to_string(),
            Self::BodyTooLarge { limit } => format!("the body is larger than {limit} bytes"),
            Self::UnsupportedMediaType(got) => format!("send the layout as application/json, not `{got}`"),
            Self::Unauthorized => "missing or wrong bearer token".into(),
            Self::NotReady => "the models are still loading and warming up, or the server is shutting down".into(),
            Self::Timeout { after_ms } => format!("the request took longer than {after_ms} ms"),
        }
    }
}

impl From<RenderError> for ApiError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Layout(l) if l.malformed => Self::MalformedJson(l.to_string()),
            RenderError::Layout(l) => Self::InvalidLayout(l),
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
        let body = json!({"error": {"code": self.code(), "message": self.message()}});
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
