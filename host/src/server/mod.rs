//! The HTTP daemon behind `wpool serve`: a JSON API under `/v1` over a
//! [`Pool`], with `/healthz`, Prometheus `/metrics` and an OpenAPI document
//! at `/v1/openapi.json` generated from the handlers.
//!
//! Part of the `cli` feature: the library proper does not know HTTP exists.
//!
//! Every request passes, in order: the bearer-token check (when a token is
//! set), then the body reader, which refuses a body past the route's size
//! limit (413) or one that does not arrive within
//! [`ServerConfig::body_timeout`] (408), so a slow or endless upload cannot
//! hold a connection or memory for long.

mod error;
mod metrics;
mod routes;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

pub use self::error::{ApiError, ErrorBody, ErrorDetail};
pub use self::routes::ApiDoc;
use crate::Pool;

/// How the server answers.
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
    /// The longest `?wait=` honoured; longer waits are cut to it.
    /// Default: 5 min.
    pub max_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_module_size: 64 << 20,
            max_input_size: 16 << 20,
            body_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
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
}

/// The API's router over `pool`. `shutdown` ends long polls and event
/// streams when cancelled.
pub fn router(pool: Pool, config: ServerConfig, shutdown: CancellationToken) -> Router {
    let metrics = Arc::new(metrics::Metrics::default());
    metrics::spawn_collector(&pool, metrics.clone(), shutdown.clone());
    let state = AppState {
        pool,
        config: Arc::new(config),
        shutdown,
        metrics,
    };
    routes::routes()
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), check_token))
        .with_state(state)
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
    let app = router(pool, config, token.clone());
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    };
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await
}

async fn check_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.token.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
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

/// Reads the whole body, within the route's size limit and the body
/// timeout, before the handler runs.
async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = body_limit(&state.config, request.uri().path());
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        return too_large(limit).into_response();
    }
    let (parts, body) = request.into_parts();
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::bad_request("invalid_request", "the request body could not be read")
            })?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    crate::units::format_duration(state.config.body_timeout)
                ),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "the request body is larger than this route's limit of {}; the server's \
         --max-module-size and --max-input-size set the limits",
        crate::units::format_size(limit)
    ))
}

/// The largest body a route takes: a module upload up to the module limit;
/// a task up to the input limit, base64-encoded, plus room for the options.
fn body_limit(config: &ServerConfig, path: &str) -> u64 {
    if path == "/v1/modules" {
        config.max_module_size
    } else if path == "/v1/tasks" {
        config
            .max_input_size
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(64 << 10)
    } else {
        64 << 10
    }
}
