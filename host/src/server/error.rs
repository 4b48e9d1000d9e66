//! [`ApiError`]: every error the API answers with, as a status and a JSON
//! body `{"error": {"code": "...", "message": "..."}}`.
//!
//! Codes are stable (scripts may match on them); messages say what to fix.
//! Failures inside the server (the store, the host) are logged in full and
//! answered with a generic message: internal text never reaches a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `malformed_json`, `invalid_request`,
    /// `invalid_base64`, `invalid_module`, `invalid_limit`, `invalid_task`,
    /// `unknown_module`, `not_found`, `module_in_use`, `already_finished`,
    /// `too_large`, `body_timeout`, `unauthorized`, `queue_full`,
    /// `shutting_down`, `internal`.
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 500 `internal`; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server's log has the details",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidModule(_) => Self::bad_request("invalid_module", message),
            Error::UnknownModule(hash) => Self::new(
                StatusCode::NOT_FOUND,
                "unknown_module",
                format!("unknown module {hash}: upload its bytes first with POST /v1/modules"),
            ),
            Error::ModuleInUse(_) => Self::new(StatusCode::CONFLICT, "module_in_use", message),
            Error::InvalidLimit { .. } => Self::bad_request("invalid_limit", message),
            Error::InvalidTask(_) => Self::bad_request("invalid_task", message),
            Error::NotFound(_) => Self::not_found(message),
            Error::QueueFull(_) => Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message),
            Error::ShutDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down and accepts no new tasks; retry after it restarts",
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof => Self::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {error}"),
            ),
            Category::Data => Self::bad_request("invalid_request", error.to_string()),
            Category::Io => Self::internal(&error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
