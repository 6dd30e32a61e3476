//! API errors: one kind per gRPC code, each with a message a person can act on.
//!
//! Handlers return [`ApiError`]; only here does it become a `tonic::Status`. Internal failures
//! are logged with their detail and answered with a short message, so storage paths or stack
//! details never reach a client. Messages repeat what a client sent only through
//! [`crate::quote::quote`] (at most 100 characters).
//!
//! Size limits have one code everywhere: a message larger than `max_message_bytes` (a unary
//! request, a message of a stream), a firmware chunk over 1 MiB and a firmware file over
//! `max_firmware_bytes` are `RESOURCE_EXHAUSTED`, gRPC's convention for size limits. Too many
//! values in one field (a list over its bound) are `INVALID_ARGUMENT`: the request is malformed,
//! not large. [`stream_status`] brings tonic's own codes for streamed messages in line.

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

/// A read error of a streaming request (`Streaming::message`) as the API answers it: a message
/// over the size limit is `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`), bytes that are no
/// message of the expected type are `INVALID_ARGUMENT` (tonic says `INTERNAL`: the client sent
/// them). Anything else (the client went away, cancelled) keeps its code.
pub fn stream_status(s: Status) -> Status {
    let m = s.message();
    match s.code() {
        Code::OutOfRange if m.contains("message length too large") => Status::resource_exhausted(
            format!("a message is too large: {}", crate::quote::quote(m)),
        ),
        Code::Internal
            if m.starts_with("failed to decode Protobuf message")
                || m.starts_with("protocol error") =>
        {
            Status::invalid_argument(format!("malformed message: {}", crate::quote::quote(m)))
        }
        _ => s,
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_get_the_api_codes() {
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(stream_status(big).code(), Code::ResourceExhausted);
        let garbage = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert_eq!(stream_status(garbage).code(), Code::InvalidArgument);
        let gone = Status::cancelled("h2 protocol error: stream reset");
        assert_eq!(stream_status(gone).code(), Code::Cancelled);
        let other = Status::internal("disk on fire");
        assert_eq!(stream_status(other).code(), Code::Internal);
    }
}
