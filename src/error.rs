//! The library's one error type. Variants say who is at fault; messages are lowercase, name the value and
//! the constraint, and carry the path when one is known.

use std::path::PathBuf;

/// Every fallible library call returns this. New variants may be added, so matches need a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline spec (or a `--set` override) is wrong. `location` is `file:line:col` where known.
    #[error("{location}{message}")]
    Spec { location: String, message: String },

    /// The settings of a run do not fit together or with the files they name (no input or output, the
    /// output is the input, a sampler for another kind of model, outputs made with other settings).
    #[error("{message}")]
    Config { message: String },

    /// A run was stopped (SIGINT / SIGTERM, or its stop flag) before this work was done.
    #[error("the run was stopped")]
    Interrupted,

    /// A value is out of range or of the wrong kind.
    #[error("invalid {what} {value} (expected {expected})")]
    Invalid {
        what: String,
        value: String,
        expected: String,
    },

    /// The model directory, its card, or its graphs are wrong, or the engine failed.
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },

    /// An engine (ONNX Runtime, tract) failed while running a graph.
    #[error("engine {engine}: {message}")]
    Engine { engine: String, message: String },

    /// An image could not be decoded or encoded.
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },

    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Arrays do not have the shapes an operation needs.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// The combination asked for is not supported (e.g. `jacobian: exact` without a VJP graph).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A computation produced NaN/Inf or failed to converge.
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(
        what: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what: what.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
