//! The error types that cross module boundaries. Each names what went wrong and where; the
//! server maps them to HTTP status codes in one place.

use thiserror::Error;

use crate::encode::EncodeError;
use crate::model::ModelError;

/// A layout the router refuses: the JSON field (as a path such as `regions[2].polygon`)
/// and the reason.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{field}: {reason}")]
pub struct LayoutError {
    pub field: String,
    pub reason: String,
    /// Not JSON at all (a syntax error or a truncated body), rather than a layout that is
    /// well-formed but wrong.
    pub malformed: bool,
}

impl LayoutError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into(), malformed: false }
    }
}

/// Anything that can stop a layout from becoming a picture.
#[derive(Debug, Error)]
pub enum RenderError {
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
