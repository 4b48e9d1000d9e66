//! The HTTP daemon behind `wpool serve`: a JSON API under `/v1` over a
//! [`Pool`], with `/healthz`, Prometheus `/metrics` and an OpenAPI document
//! at `/v1/openapi.json` generated from the handlers.
//!
//! Part of the `cli` feature: the library proper does not know HTTP exists.
//!
//! Every request passes, in order: the JSON-error layer (any error answer
//! that is not JSON yet, such as an extractor's rejection or a 405, is
//! turned into one), the bearer-token check (when a token is set), then the
//! body reader, which refuses a body past the route's size limit (413), one
//! that does not arrive within [`ServerConfig::body_timeout`] (408), a
//! Content-Type the route does not take (415), and any body that would take
//! the bytes in flight across connections past
//! [`ServerConfig::max_body_bytes_in_flight`] (503 with `Retry-After`).
//! Connections are accepted by our own loop (see `listen`): a header-read
//! timeout, a connection limit, and accept errors that do not stop it.
//!
//! # Limits for a daemon exposed to untrusted clients
//!
//! | setting | default |
//! |---|---|
//! | [`ServerConfig::header_timeout`] | 10 s |
//! | [`ServerConfig::max_connections`] | 1024 |
//! | [`ServerConfig::max_body_bytes_in_flight`] | 256 MiB |
//! | [`ServerConfig::body_timeout`] | 30 s |
//! | [`ServerConfig::max_module_size`] | 64 MiB |
//! | [`ServerConfig::max_input_size`] | 16 MiB |
//! | [`ServerConfig::max_wait`] | 5 min |

mod body;
mod dashboard;
mod error;
mod listen;
mod metrics;
mod openapi;
mod routes;
pub mod types;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use self::error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
pub use self::routes::ApiDoc;
use crate::Pool;

/// How the server answers, and what it bounds.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// When set, every request but `/healthz` must carry
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The largest module `POST /v1/modules` accepts. Default: 64 MiB.
    pub max_module_size: u64,
    /// The largest task input. Default: 16 MiB.
    pub max_input_size: u64,
    /// How long a request body may take to arrive. Default: 30 s.
    pub body_timeout: Duration,
    /// The longest `?wait=` honoured; longer waits are cut to it (the
    /// answer is then 202 if the task is not finished). Default: 5 min.
    pub max_wait: Duration,
    /// How long a connection may take to send a request's line and
    /// headers, counted from when the server starts waiting for them (an
    /// idle keep-alive connection included); past it the connection is
    /// closed. Default: 10 s.
    pub header_timeout: Duration,
    /// The most connections open at once; past it, new connections wait in
    /// the kernel's backlog until one closes. Default: 1024.
    pub max_connections: usize,
    /// The most request-body bytes held at once across all connections;
    /// past it requests are answered 503 with `Retry-After`. Default:
    /// 256 MiB.
    pub max_body_bytes_in_flight: u64,
    /// Where module uploads are written while they arrive. Default: the
    /// system's temporary directory (`wpool serve` uses
    /// `<data dir>/uploads`).
    pub upload_dir: Option<PathBuf>,
    /// The largest memory limit a task may ask for, as the OpenAPI document
    /// states it: taken from the pool by [`router`].
    pub(crate) max_task_memory: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_module_size: 64 << 20,
            max_input_size: 16 << 20,
            body_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes_in_flight: 256 << 20,
            upload_dir: None,
            max_task_memory: crate::EngineConfig::DEFAULT_MAX_MEMORY,
        }
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) pool: Pool,
    pub(crate) config: Arc<ServerConfig>,
    /// Cancelled when the server shuts down: long polls answer at once and
    /// event streams end, so that the graceful shutdown is not held open.
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Request-body bytes in flight, across connections.
    pub(crate) budget: Arc<body::BodyBudget>,
}

/// The API's router over `pool`. `shutdown` ends long polls and event
/// streams when cancelled.
pub fn router(pool: Pool, mut config: ServerConfig, shutdown: CancellationToken) -> Router {
    config.max_task_memory = pool.max_memory();
    let metrics = Arc::new(metrics::Metrics::default());
    metrics::spawn_collector(&pool, metrics.clone(), shutdown.clone());
    let state = AppState {
        pool,
        budget: Arc::new(body::BodyBudget::new(config.max_body_bytes_in_flight)),
        config: Arc::new(config),
        shutdown,
        metrics,
    };
    routes::routes()
        .merge(dashboard::routes())
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), check_token))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// One line per request at info (`wpool::access`): method, path, status
/// and time taken. The query string is left out (it may carry ids a log
/// need not keep); the token never appears.
async fn access_log(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    tracing::info!(
        target: "wpool::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting, ends long polls and event streams, and waits for requests in
/// flight. It does not stop the pool: the caller does (see
/// [`Pool::stop`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: Pool,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = CancellationToken::new();
    let app = router(pool, config.clone(), token.clone());
    listen::serve(listener, app, &config, token, shutdown).await
}

async fn check_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.token.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" || dashboard::is_public(request.uri().path()) {
        return next.run(request).await;
    }
    match bearer(request.headers()) {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => unauthorized("the bearer token is wrong"),
        None => unauthorized(
            "this server requires a bearer token: send `Authorization: Bearer <token>` \
             (the CLI reads it from --token or WPOOL_TOKEN)",
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's
/// name is case-insensitive (RFC 9110, section 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The media types a route's body may have, or `None` for any.
fn accepted_types(method: &Method, path: &str) -> Option<&'static [&'static str]> {
    match (method, path) {
        (&Method::POST, "/v1/modules") => Some(&["application/wasm", "application/octet-stream"]),
        (&Method::POST, "/v1/tasks") => Some(&["application/json"]),
        (&Method::POST, "/v1/tasks:purge") | (&Method::PUT, "/v1/workers") => {
            Some(&["application/json"])
        }
        (&Method::POST, "/v1/tasks:batch") => Some(&[
            "application/json",
            "application/x-ndjson",
            "application/jsonl",
        ]),
        (&Method::PUT, p) if p.starts_with("/v1/modules/") && p.ends_with("/settings") => {
            Some(&["application/json"])
        }
        _ => None,
    }
}

/// The media type of the body (`Content-Type` without its parameters),
/// lowercase; `None` when absent or unreadable.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// Checks the Content-Type of an upload: absent, or one the route takes.
fn check_content_type(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accepted) = accepted_types(method, path) else {
        return Ok(());
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = media_type(headers);
    if essence.as_deref().is_some_and(|e| accepted.contains(&e)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "{method} {path} takes a body of type {}, not `{}`: set the Content-Type header \
             accordingly",
            accepted.join(" or "),
            String::from_utf8_lossy(value.as_bytes())
        ),
    ))
}

/// Reads the whole body, within the route's size limit, the body timeout
/// and the budget of bytes in flight, before the handler runs. A module
/// upload is left to its handler, which streams it to a file.
async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let limit = body_limit(&state.config, path);
    if let Err(e) = check_content_type(request.method(), path, request.headers()) {
        return e.into_response();
    }
    let declared = body::content_length(request.headers());
    if declared.is_some_and(|length| length > limit) {
        return body::too_large(limit).into_response();
    }
    if request.method() == Method::POST && path == "/v1/modules" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = body::read_to_memory(body, limit, declared, &state.budget);
    let (bytes, held) = match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return body::timed_out(state.config.body_timeout).into_response(),
    };
    // The budget is given back once the handler has taken the bytes.
    let body = Body::from_stream(futures_util::stream::once(async move {
        let _held = held;
        Ok::<_, std::convert::Infallible>(bytes)
    }));
    next.run(Request::from_parts(parts, body)).await
}

/// The largest body a route takes: a module upload up to the module limit;
/// a task up to the input limit, base64-encoded, plus room for the
/// options; a batch as much, plus 512 bytes of options for each of its
/// most tasks (its inputs together are bounded as one task's input is).
fn body_limit(config: &ServerConfig, path: &str) -> u64 {
    let task = config
        .max_input_size
        .saturating_mul(4)
        .div_ceil(3)
        .saturating_add(64 << 10);
    if path == "/v1/modules" {
        config.max_module_size
    } else if path == "/v1/tasks" {
        task
    } else if path == "/v1/tasks:batch" {
        task.saturating_add(types::MAX_BATCH as u64 * 512)
    } else {
        64 << 10
    }
}
