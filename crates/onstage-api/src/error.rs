//! The one place where failures become AWS error responses: status code,
//! `x-amzn-ErrorType` and a body carrying the message twice (`exceptionMessage`, as
//! the model names it, and `message`, which botocore and aws-sdk-rust print). Also
//! the status of a refused participant connection (answered in plain text).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use onstage_stage::DomainError;
use onstage_stage::live::RefusalKind;

/// The AWS error shapes onstage answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    Serialization,
    ServiceQuotaExceeded,
    AccessDenied,
    ResourceNotFound,
    Conflict,
    InternalServer,
    NotImplemented,
    UnknownOperation,
    PayloadTooLarge,
    /// The request body did not arrive within the server's body deadline.
    RequestTimeout,
    /// A shared budget is spent for now (large unverified bodies); retryable.
    ServiceUnavailable,
    // Authentication failures, as AWS names them.
    MissingAuthenticationToken,
    IncompleteSignature,
    InvalidSignature,
    UnrecognizedClient,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Validation | ErrorKind::Serialization => StatusCode::BAD_REQUEST,
            ErrorKind::ServiceQuotaExceeded => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::AccessDenied
            | ErrorKind::MissingAuthenticationToken
            | ErrorKind::IncompleteSignature
            | ErrorKind::InvalidSignature
            | ErrorKind::UnrecognizedClient => StatusCode::FORBIDDEN,
            ErrorKind::ResourceNotFound | ErrorKind::UnknownOperation => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::InternalServer => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::Validation => "ValidationException",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::InternalServer => "InternalServerException",
            ErrorKind::NotImplemented => "NotImplementedException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::PayloadTooLarge => "RequestEntityTooLargeException",
            ErrorKind::RequestTimeout => "RequestTimeoutException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignature => "IncompleteSignatureException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", kind.type_name())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let kind = match &e {
            DomainError::Validation(_) => ErrorKind::Validation,
            DomainError::NotFound(_) => ErrorKind::ResourceNotFound,
            DomainError::Conflict(_) => ErrorKind::Conflict,
            DomainError::QuotaExceeded(_) => ErrorKind::ServiceQuotaExceeded,
            DomainError::NotImplemented(_) => ErrorKind::NotImplemented,
            DomainError::Store(_) | DomainError::Internal(_) => ErrorKind::InternalServer,
        };
        if kind == ErrorKind::InternalServer {
            // The details are for the operator, not the caller.
            tracing::error!(error = %e, "internal error");
            return ApiError::new(
                kind,
                "The service encountered an internal error; see the server log",
            );
        }
        ApiError::new(kind, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "exceptionMessage": self.message, "message": self.message });
        let mut response = (self.kind.status(), axum::Json(body)).into_response();
        response.headers_mut().insert(
            "x-amzn-ErrorType",
            HeaderValue::from_static(self.kind.type_name()),
        );
        response
    }
}

/// The status of a refused publish, subscribe or events socket (DECISIONS.md,
/// "Refused connections").
pub(crate) fn refusal_status(kind: &RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::Token(_) => StatusCode::UNAUTHORIZED,
        RefusalKind::Revoked
        | RefusalKind::TokenRevoked
        | RefusalKind::WrongParticipantId
        | RefusalKind::MissingCapability
        | RefusalKind::QuotaExceeded => StatusCode::FORBIDDEN,
        RefusalKind::PublisherNotFound => StatusCode::NOT_FOUND,
        RefusalKind::ReplicaIdInUse => StatusCode::CONFLICT,
        RefusalKind::InvalidOffer
        | RefusalKind::InvalidVideoCodec
        | RefusalKind::InvalidAudioCodec => StatusCode::BAD_REQUEST,
        RefusalKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use onstage_stage::token::TokenRejection;

    use super::*;

    #[test]
    fn refused_connections_answer_with_their_status() {
        let cases = [
            (RefusalKind::Token(TokenRejection::BadSignature), 401),
            (RefusalKind::Revoked, 403),
            (RefusalKind::TokenRevoked, 403),
            (RefusalKind::WrongParticipantId, 403),
            (RefusalKind::MissingCapability, 403),
            (RefusalKind::QuotaExceeded, 403),
            (RefusalKind::PublisherNotFound, 404),
            (RefusalKind::ReplicaIdInUse, 409),
            (RefusalKind::InvalidOffer, 400),
            (RefusalKind::InvalidVideoCodec, 400),
            (RefusalKind::InvalidAudioCodec, 400),
            (RefusalKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(refusal_status(&kind).as_u16(), status, "{kind:?}");
        }
    }
}
