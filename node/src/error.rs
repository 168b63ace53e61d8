//! API errors: a status and a one-line message, sent as `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use letl_storage::StorageError;
use tracing::{debug, error};

use crate::api::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The same request may well succeed later: a tier was unavailable, or an I/O or index
    /// error happened. Refusals (bad input, conflicts, a full tier) are not transient.
    pub transient: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            transient: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// Something this node should not have met (an unexpected answer, an encoding failure).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<letl_raft::cluster::ClusterError> for ApiError {
    fn from(e: letl_raft::cluster::ClusterError) -> Self {
        use letl_raft::cluster::ClusterError;
        let status = match &e {
            ClusterError::NoQuorum(_) | ClusterError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::Refused(_) => StatusCode::BAD_REQUEST,
            ClusterError::Forbidden(_) => StatusCode::FORBIDDEN,
            ClusterError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
            transient: matches!(
                e,
                ClusterError::NoQuorum(_) | ClusterError::Failed(_) | ClusterError::Busy(_)
            ),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = match &e {
            StorageError::InvalidUri { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::InvalidTierName { .. }
            | StorageError::InvalidRequestId { .. }
            | StorageError::LengthMismatch { .. }
            | StorageError::Body(_) => StatusCode::BAD_REQUEST,
            StorageError::UnknownTier { .. } | StorageError::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            StorageError::Conflict { .. } => StatusCode::CONFLICT,
            StorageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StorageError::TierFull { .. } | StorageError::NoSpace { .. } => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            StorageError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::HashMismatch { .. }
            | StorageError::Io { .. }
            | StorageError::Index(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let transient = matches!(
            e,
            StorageError::Unavailable { .. }
                | StorageError::Io { .. }
                | StorageError::Index(_)
                | StorageError::Body(_)
        );
        Self {
            transient,
            ..Self::new(status, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged here, where the request ends; the layers below only return errors.
        if self.status.is_server_error() {
            error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            debug!(status = self.status.as_u16(), error = %self.message, "request refused");
        }
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// An error with its chain of causes, `outer: cause: root cause`: the root cause is often the
/// only useful part (a refused certificate, a reset connection).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.ends_with(&text) {
            detail = format!("{detail}: {text}");
        }
        source = cause.source();
    }
    detail
}
