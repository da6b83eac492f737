//! Errors of the domain. The API crate maps each variant to one AWS error shape;
//! nothing here knows about status codes.

use thiserror::Error;

/// Why a control-plane call was refused. The message always names the field or the
/// resource at fault, because it reaches the caller verbatim.
#[derive(Debug, Error)]
pub enum DomainError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Failures of the persistence layer that the domain cannot interpret further.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write named a resource (`refers_to`) that no longer exists: it was deleted
    /// between the domain's check and the write.
    #[error("{0} does not exist")]
    MissingReference(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
