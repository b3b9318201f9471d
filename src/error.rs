//! The error types that cross module boundaries. Each names what went wrong and where; the
//! server maps them to HTTP and gRPC status codes, each in one place.

use thiserror::Error;

use crate::batcher::BatchError;
use crate::encode::EncodeError;
use crate::model::ModelError;

/// A layout the router refuses.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum LayoutError {
    /// Not JSON at all: a syntax error or a truncated body.
    #[error("layout: {reason}")]
    NotJson { reason: String },
    /// Well-formed JSON that is not an acceptable layout: the field (as a path such as
    /// `regions[2].polygon`) and the reason.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl LayoutError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The JSON path of the field at fault (`layout` for the whole body).
    pub fn field(&self) -> &str {
        match self {
            Self::NotJson { .. } => "layout",
            Self::Invalid { field, .. } => field,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::NotJson { reason } | Self::Invalid { reason, .. } => reason,
        }
    }
}

/// A value that is not one of a setting's or a flag's choices.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{given}` is not one of {choices}")]
pub struct UnknownChoice {
    pub given: String,
    pub choices: &'static str,
}

/// Anything that can stop a layout from becoming a picture.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("the {stage} stage panicked: {message}")]
    Panicked { stage: &'static str, message: String },
    /// Admission refused the request for now: it asks for more than is free.
    #[error("{0}")]
    Busy(String),
    #[error("cannot start the pipeline's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Internal(String),
}
