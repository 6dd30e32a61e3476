//! API errors: one kind per gRPC code, each with a message a person can act on.
//!
//! Handlers return [`ApiError`]; only here does it become a `tonic::Status`. Internal failures
//! are logged with their detail and answered with a short message, so storage paths or stack
//! details never reach a client.

use tonic::{Code, Status};

use crate::core::CoreError;
use crate::store::StoreError;

/// What went wrong, by gRPC code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed or refers to something in a wrong way.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent change won; try again.
    #[error("{0}")]
    Aborted(String),
    /// A peer (site agent) is not reachable.
    #[error("{0}")]
    Unavailable(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Waiting took too long.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an I/O failure on the server.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Shorthand for [`ApiError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// Shorthand for [`ApiError::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    /// Shorthand for [`ApiError::FailedPrecondition`].
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Contention(stream) => {
                ApiError::Aborted(format!("{stream} is changing concurrently; try again"))
            }
            CoreError::Store(StoreError::Conflict { stream, .. }) => {
                ApiError::Aborted(format!("{stream} changed concurrently; try again"))
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::Internal("the server could not record this; see the otad log".into())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(CoreError::Store(e))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "I/O error");
        ApiError::Internal("the server hit an I/O error; see the otad log".into())
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;
