//! [`ApiError`]: every error the API answers with, as a status and a JSON
//! body `{"error": {"code": "...", "message": "..."}}`.
//!
//! Codes are stable (scripts may match on them); messages say what to fix.
//! Failures inside the server (the store, the host) are logged in full and
//! answered with a generic message: internal text never reaches a client.

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

/// The `Retry-After` of a `store_unavailable` answer, in seconds: a
/// database restart takes a few.
const STORE_RETRY_AFTER_SECS: u64 = 2;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (one of [`ErrorCode`]).
    #[schema(value_type = ErrorCode)]
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

/// Every code an error answer may carry. Scripts may match on them; new
/// codes may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: a field, a query parameter or a path parameter is wrong.
    InvalidRequest,
    /// 400: `input_base64` is not base64.
    InvalidBase64,
    /// 400: the bytes are not a module wpool can run.
    InvalidModule,
    /// 400: a module's run settings are not valid for it.
    InvalidSettings,
    /// 400: a limit is out of range.
    InvalidLimit,
    /// 400: the task's settings disagree (attempts, labels, times).
    InvalidTask,
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 404: the task's module is not stored.
    UnknownModule,
    /// 404: no such task, module or route.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 408: the body did not arrive within the body timeout.
    BodyTimeout,
    /// 409: tasks that are not finished use the module.
    ModuleInUse,
    /// 409: the task already finished.
    AlreadyFinished,
    /// 409: the task is not final yet (its output is not there).
    NotFinished,
    /// 413: the body is larger than the route's limit.
    TooLarge,
    /// 414: the URI is too long.
    UriTooLong,
    /// 415: the body's Content-Type is not one the route takes.
    UnsupportedMediaType,
    /// 429: the queue is full.
    QueueFull,
    /// 431: the headers are too large.
    HeadersTooLarge,
    /// 500: a failure inside the server, logged there.
    Internal,
    /// 503: too many request bodies in flight; retry after `Retry-After`.
    Busy,
    /// 503: the stored task outputs are at the daemon's bound
    /// (`--max-stored-output`); retry after `Retry-After`, once retention
    /// removed old results.
    StorageFull,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 503: the task store (a PostgreSQL server) is out of reach; nothing
    /// was stored. Retry after `Retry-After`: the server carries on when
    /// the store is back.
    StoreUnavailable,
    /// Any other error status.
    HttpError,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: secs` to the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
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

    /// The code and message, as an error answer's body carries them.
    pub(crate) fn into_detail(self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_string(),
            message: self.message,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidModule(_) => Self::bad_request("invalid_module", message),
            Error::InvalidSettings(_) => Self::bad_request("invalid_settings", message),
            Error::UnknownModule(hash) => Self::new(
                StatusCode::NOT_FOUND,
                "unknown_module",
                format!("unknown module {hash}: upload its bytes first with POST /v1/modules"),
            ),
            Error::ModuleInUse(_) => Self::new(StatusCode::CONFLICT, "module_in_use", message),
            Error::InvalidLimit { .. } => Self::bad_request("invalid_limit", message),
            Error::InvalidTask(_) => Self::bad_request("invalid_task", message),
            Error::NotFound(_) => Self::not_found(message),
            Error::QueueFull(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message).retry_after(1)
            }
            Error::NotFinal(..) => Self::new(StatusCode::CONFLICT, "not_finished", message),
            Error::StorageFull(..) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_full", message).retry_after(30)
            }
            Error::ShutDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down and accepts no new tasks; retry after it restarts",
            ),
            Error::Unavailable(cause) => {
                // Every request during an outage would log it: the pool
                // warns of the outage itself.
                tracing::debug!(error = %cause, "the store is out of reach");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the task store is out of reach for now (the server's log says why); \
                     retry after Retry-After seconds",
                )
                .retry_after(STORE_RETRY_AFTER_SECS)
            }
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

/// Makes every error answer JSON: an answer of 400 or more that is not
/// JSON already (an extractor's rejection, axum's 405, ...) is rewritten to
/// the API's error shape, its text kept as the message.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            // axum adds `Allow` outside this layer, so it is not known
            // here; the answer carries it.
            (
                "method_not_allowed",
                format!(
                    "{method} is not allowed on {path}; the Allow header lists the methods it \
                     takes (see /v1/openapi.json)"
                ),
            )
        }
        StatusCode::NOT_FOUND => ("not_found", format!("nothing at {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => (
            "invalid_request",
            if text.is_empty() {
                format!("the request to {path} is not valid")
            } else {
                format!("the request to {path} is not valid: {text}")
            },
        ),
        _ if status.is_server_error() => {
            tracing::error!(%status, %text, "an error answer without a JSON body");
            (
                "internal",
                "internal error; the server's log has the details".into(),
            )
        }
        _ => ("http_error", text),
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
