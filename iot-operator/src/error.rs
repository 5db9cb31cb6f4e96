//! API errors: a status, a stable machine-readable code and a human-readable reason.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iot_core::{Error as _, ErrorKind};
use iot_fleet::{FleetError, ServerError};

/// A refused request. Every refusal happens before any state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (always 4xx for the caller's mistakes).
    pub status: StatusCode,
    /// Stable code, for programs (`not_found`, `unknown_field`...).
    pub code: &'static str,
    /// What was wrong, for people.
    pub reason: String,
}

/// The refusal cause attached to a response, read by the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct RefusalCause(pub &'static str);

impl ApiError {
    /// A refusal with `status`, `code` and `reason`.
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, reason)
    }

    /// 404: nothing the caller may see has this id.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with this id is visible to this token"),
        )
    }

    /// 401: no valid token.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "reason": self.reason });
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(RefusalCause(self.code));
        response
    }
}

fn from_kind(kind: ErrorKind, reason: String) -> ApiError {
    let (status, code) = match kind {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Unauthorized => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::Conflict | ErrorKind::InvalidState => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::InvalidInput | ErrorKind::Decode | ErrorKind::Capacity => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, code, reason)
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Access(iot_fleet::AccessError::NotFound) => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "not found: no such id is visible to this token",
            ),
            FleetError::Access(_) => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token's role or scope does not allow the operation",
            ),
            other => from_kind(other.kind(), other.to_string()),
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Fleet(f) => f.into(),
            ServerError::InvalidPath => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_path",
                "not a valid shadow path (dot-separated segments)",
            ),
            ServerError::UnknownImage(v) => Self::new(
                StatusCode::CONFLICT,
                "unknown_image",
                format!("no firmware image {v} was published"),
            ),
            other => from_kind(other.kind(), other.to_string()),
        }
    }
}
