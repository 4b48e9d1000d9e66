//! The handlers, each with the OpenAPI description it is published under.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::Stream;
use utoipa::OpenApi;

use super::error::{ApiError, ErrorBody};
use super::types::{
    BatchAnswer, BatchItem, CancelAnswer, MAX_BATCH, ModuleInfo, ModuleList, PurgeRequest,
    PurgeView, QueueView, ResultView, SpecError, StatsView, SubmitTask, TaskAnswer, TaskList,
    TaskView, WasmBytes, WorkersRequest, WorkersView,
};
use super::{AppState, metrics};
use crate::store::TaskFilter;
use crate::{CancelResult, EventsError, ModuleHash, TaskId, TaskState};

/// The OpenAPI document of the API, built from the handlers and types.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "wpool",
        description = "Run WebAssembly tasks on a pool of wasmtime instances."
    ),
    paths(
        upload_module,
        list_modules,
        get_module,
        delete_module,
        get_module_settings,
        put_module_settings,
        submit_task,
        submit_batch,
        list_tasks,
        get_task,
        get_result,
        get_output,
        get_input,
        cancel_task,
        retry_task,
        delete_task,
        purge_tasks,
        pause_queue,
        resume_queue,
        set_workers,
        stats,
        events,
        healthz,
        metrics_text
    ),
    components(schemas(
        ErrorBody,
        SubmitTask,
        TaskAnswer,
        TaskView,
        ResultView,
        TaskList,
        WasmBytes,
        BatchAnswer,
        BatchItem
    ))
)]
pub struct ApiDoc;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/modules", get(list_modules).post(upload_module))
        .route("/v1/modules/{hash}", get(get_module).delete(delete_module))
        .route(
            "/v1/modules/{hash}/settings",
            get(get_module_settings).put(put_module_settings),
        )
        .route("/v1/tasks", get(list_tasks).post(submit_task))
        .route("/v1/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/v1/tasks/{id}/result", get(get_result))
        .route("/v1/tasks/{id}/output", get(get_output))
        .route("/v1/tasks/{id}/input", get(get_input))
        .route("/v1/tasks/{id}/retry", post(retry_task))
        .route("/v1/tasks/{id}/delete", post(delete_task))
        .route("/v1/tasks:purge", post(purge_tasks))
        .route("/v1/tasks:batch", post(submit_batch))
        .route("/v1/queue/pause", post(pause_queue))
        .route("/v1/queue/resume", post(resume_queue))
        .route("/v1/workers", put(set_workers))
        .route("/v1/stats", get(stats))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(no_route)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}: the API lives under /v1 (see /v1/openapi.json)",
        uri.path()
    ))
}

async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::openapi::document(
        &state.config,
        state.pool.max_workers(),
    ))
}

/// A request body that must be a JSON object: serde would also take a
/// struct from an array of its fields (`[]` for one whose fields all have
/// defaults), which the schema does not allow.
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    Ok(serde_json::from_value(value)?)
}

fn parse_hash(text: &str) -> Result<ModuleHash, ApiError> {
    text.parse()
        .map_err(|e: crate::Error| ApiError::bad_request("invalid_request", e.to_string()))
}

fn parse_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse()
        .map_err(|e: crate::Error| ApiError::bad_request("invalid_request", e.to_string()))
}

/// The query parameters, refusing any not in `known`.
fn query(uri: &Uri, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|_| ApiError::bad_request("invalid_request", "the query string is not valid"))?;
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "unknown query parameter `{name}`; this route takes: {}",
                known.join(", ")
            ),
        ));
    }
    Ok(pairs)
}

/// `?wait=DURATION`, capped at the server's longest wait.
fn wait_param(state: &AppState, pairs: &[(String, String)]) -> Result<Option<Duration>, ApiError> {
    let Some((_, text)) = pairs.iter().find(|(k, _)| k == "wait") else {
        return Ok(None);
    };
    let wait = crate::units::parse_duration(text)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("`wait`: {e}")))?;
    Ok(Some(wait.min(state.config.max_wait)))
}

/// Waits for a task to be final, at most `wait`, or until the server
/// shuts down; its result then.
async fn wait_for(
    state: &AppState,
    id: TaskId,
    wait: Duration,
) -> Result<Option<ResultView>, ApiError> {
    let record = tokio::select! {
        record = state.pool.wait_record_timeout(id, wait) => record?,
        () = state.shutdown.cancelled() => Some(Arc::new(state.pool.status(id).await?)),
    };
    Ok(record.as_deref().and_then(ResultView::of_record))
}

/// Upload a module (raw wasm bytes); answers with its hash.
///
/// Idempotent: uploading the same bytes again answers 200 with the same
/// hash. The bytes are streamed to a temporary file while they arrive,
/// then validated, compiled and stored.
#[utoipa::path(
    post, path = "/v1/modules",
    request_body(content = WasmBytes, content_type = "application/wasm",
        description = "the module's bytes: a WASI command module or a `wpool:task` component"),
    responses(
        (status = 201, description = "stored", body = ModuleInfo),
        (status = 200, description = "already stored", body = ModuleInfo),
        (status = 400, description = "not a module wpool can run", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "larger than the module limit", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/wasm", body = ErrorBody),
        (status = 503, description = "too many request bodies in flight (see Retry-After)", body = ErrorBody),
    )
)]
async fn upload_module(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let limit = state.config.max_module_size;
    let dir = state
        .config
        .upload_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let spool = super::body::spool_to_file(body, limit, &dir, &state.budget);
    let spooled = match tokio::time::timeout(state.config.body_timeout, spool).await {
        Ok(spooled) => spooled?,
        Err(_) => return Err(super::body::timed_out(state.config.body_timeout)),
    };
    if spooled.size == 0 {
        return Err(ApiError::bad_request(
            "invalid_module",
            "the body is empty: send the module's bytes (Content-Type: application/wasm)",
        ));
    }
    let size = spooled.size;
    let bytes = tokio::fs::read(&spooled.path)
        .await
        .map_err(|e| ApiError::internal(&format!("cannot read an upload file: {e}")))?;
    drop(spooled);
    let hash = ModuleHash::of(&bytes);
    let existed = state.pool.backend().module(&hash).await?.is_some();
    state.pool.register(&bytes).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let info = ModuleInfo {
        hash: hash.to_string(),
        size,
        settings: state.pool.module_settings(&hash).await?,
    };
    Ok((status, Json(info)).into_response())
}

/// Every stored module.
#[utoipa::path(get, path = "/v1/modules", responses((status = 200, body = ModuleList)))]
async fn list_modules(State(state): State<AppState>) -> Result<Json<ModuleList>, ApiError> {
    let stored = state.pool.modules().await?;
    let mut modules = Vec::with_capacity(stored.len());
    for m in stored {
        modules.push(ModuleInfo {
            hash: m.hash.to_string(),
            size: m.size,
            settings: state.pool.module_settings(&m.hash).await?,
        });
    }
    Ok(Json(ModuleList { modules }))
}

/// Whether a module is stored (the CLI asks before uploading).
#[utoipa::path(
    get, path = "/v1/modules/{hash}",
    params(("hash" = String, Path, description = "the module's SHA-256, hex")),
    responses(
        (status = 200, body = ModuleInfo),
        (status = 400, description = "not a module hash", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_module(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    let hash = parse_hash(&hash)?;
    let size = state
        .pool
        .backend()
        .module(&hash)
        .await?
        .map(|b| b.len() as u64);
    match size {
        Some(size) => Ok(Json(ModuleInfo {
            hash: hash.to_string(),
            size,
            settings: state.pool.module_settings(&hash).await?,
        })),
        None => Err(crate::Error::UnknownModule(hash).into()),
    }
}

/// A module's run settings (all defaults when none were set).
#[utoipa::path(
    get, path = "/v1/modules/{hash}/settings",
    params(("hash" = String, Path, description = "the module's SHA-256, hex")),
    responses(
        (status = 200, body = crate::ModuleSettings),
        (status = 400, description = "not a module hash", body = ErrorBody),
        (status = 404, description = "unknown module", body = ErrorBody),
    )
)]
async fn get_module_settings(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Json<crate::ModuleSettings>, ApiError> {
    let hash = parse_hash(&hash)?;
    if state.pool.backend().module(&hash).await?.is_none() {
        return Err(crate::Error::UnknownModule(hash).into());
    }
    Ok(Json(state.pool.module_settings(&hash).await?))
}

/// Set a module's run settings, replacing any: its name (`argv[0]`), fixed
/// arguments, environment variables, exit codes that mean success, and a
/// bounded scratch directory. They grant nothing of the host (directories
/// are the operator's to grant), so any client allowed to upload may set
/// them. Every task of the module that starts afterwards runs with them,
/// tasks already queued included. Default settings (`{}`) remove them.
#[utoipa::path(
    put, path = "/v1/modules/{hash}/settings",
    params(("hash" = String, Path, description = "the module's SHA-256, hex")),
    request_body = crate::ModuleSettings,
    responses(
        (status = 200, description = "set; the module with its settings", body = ModuleInfo),
        (status = 400, description = "not a module hash, or settings not valid for this module \
            (`invalid_settings`: the message names the field and what is accepted)", body = ErrorBody),
        (status = 404, description = "unknown module", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/json", body = ErrorBody),
    )
)]
async fn put_module_settings(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    body: Bytes,
) -> Result<Json<ModuleInfo>, ApiError> {
    let hash = parse_hash(&hash)?;
    let settings: crate::ModuleSettings = json_object(&body)?;
    let size = state
        .pool
        .backend()
        .module(&hash)
        .await?
        .map(|b| b.len() as u64)
        .ok_or(crate::Error::UnknownModule(hash))?;
    state
        .pool
        .set_module_settings(&hash, settings.clone())
        .await?;
    Ok(Json(ModuleInfo {
        hash: hash.to_string(),
        size,
        settings,
    }))
}

/// Delete a module; refused (409) while unfinished tasks use it.
#[utoipa::path(
    delete, path = "/v1/modules/{hash}",
    params(("hash" = String, Path, description = "the module's SHA-256, hex")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "not a module hash", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "unfinished tasks use it", body = ErrorBody),
    )
)]
async fn delete_module(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hash = parse_hash(&hash)?;
    match state.pool.delete_module(&hash).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(crate::Error::UnknownModule(hash).into()),
    }
}

/// Submit a task. With `?wait=DURATION`, answers once the task finished
/// (200, with its result) or the wait is over (202, without).
#[utoipa::path(
    post, path = "/v1/tasks",
    request_body = SubmitTask,
    params(("wait" = Option<String>, Query, description = "long-poll for the result, e.g. `30s`; \
        cut to the server's longest wait (--max-wait, default 5m)")),
    responses(
        (status = 201, description = "accepted (durable)", body = TaskAnswer),
        (status = 200, description = "an existing task (idempotency key), or finished within `wait`", body = TaskAnswer),
        (status = 202, description = "accepted; not finished within `wait`", body = TaskAnswer),
        (status = 400, body = ErrorBody),
        (status = 404, description = "unknown module", body = ErrorBody),
        (status = 413, description = "input too large", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/json", body = ErrorBody),
        (status = 429, description = "the queue is full", body = ErrorBody),
        (status = 503, description = "shutting down, or too many request bodies in flight", body = ErrorBody),
    )
)]
async fn submit_task(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pairs = query(&uri, &["wait"])?;
    let wait = wait_param(&state, &pairs)?;
    let request: SubmitTask = json_object(&body)?;
    let spec_error = |e: SpecError| match e {
        SpecError::Invalid(code, message) => ApiError::bad_request(code, message),
        SpecError::InputTooLarge(size, limit) => ApiError::too_large(format!(
            "the input is {size} bytes, more than the limit of {limit}"
        )),
    };
    let input = request.input_bytes().map_err(spec_error)?;
    let limit = state.config.max_input_size;
    if input.len() as u64 > limit {
        return Err(spec_error(SpecError::InputTooLarge(
            input.len() as u64,
            limit,
        )));
    }
    let spec = request.to_spec(input).map_err(spec_error)?;
    let existing = match &request.idempotency_key {
        Some(key) => state.pool.backend().by_key(key).await?,
        None => None,
    };
    let handle = state.pool.try_submit(spec).await?;
    let id = handle.id();
    let created = existing != Some(id);
    let result = match wait {
        Some(wait) => wait_for(&state, id, wait).await?,
        None => None,
    };
    let record = state.pool.status(id).await?;
    let status = if result.is_some() || !created {
        StatusCode::OK
    } else if wait.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    let answer = TaskAnswer {
        task: TaskView::from(&record),
        result,
        created: Some(created),
    };
    let mut response = (status, Json(answer)).into_response();
    if let Ok(location) = format!("/v1/tasks/{id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Submit many tasks in one request: one store transaction and one flush
/// for the whole batch.
///
/// The body is a JSON array of the task objects `POST /v1/tasks` takes
/// (`application/json`), or JSON Lines (`application/x-ndjson` or
/// `application/jsonl`): one task object per line, blank lines skipped but
/// counted. At most 10000 tasks, within the body limit of one task plus
/// 512 bytes per task; an empty batch is refused (400), a larger one too
/// (413).
///
/// The answer (200) has one item per task, in order: the task's `id` and
/// whether this call `created` it or its idempotency key named an existing
/// task (a key given twice in one batch names the first), or the item's
/// `error`. A malformed item (not a task object, a field out of range, an
/// unknown module, an input past the limit) is refused alone, its error
/// naming its index (or line), and the others are submitted. Whatever is
/// not an item's own fault refuses the whole batch with nothing submitted:
/// a full queue (429 `queue_full`), stored outputs at their bound (503
/// `storage_full`), too many bodies in flight (503 `busy`), each with
/// `Retry-After`; a shutdown (503), a failure of the store (500). A batch
/// larger than the whole queue (`--max-queued`) goes in when the queue is
/// empty.
#[utoipa::path(
    post, path = "/v1/tasks:batch",
    request_body(content = Vec<SubmitTask>, content_type = "application/json",
        description = "a JSON array of tasks, or JSON Lines (one task per line)"),
    responses(
        (status = 200, description = "the batch was taken: per task, its id or its error", body = BatchAnswer),
        (status = 400, description = "not a JSON array (or JSON Lines), or an empty batch", body = ErrorBody),
        (status = 413, description = "more than 10000 tasks, or a body past the limit", body = ErrorBody),
        (status = 415, description = "a Content-Type other than JSON or JSON Lines", body = ErrorBody),
        (status = 429, description = "the queue is full: nothing was submitted (see Retry-After)", body = ErrorBody),
        (status = 503, description = "shutting down, stored outputs at their bound, or too many \
            request bodies in flight: nothing was submitted (see Retry-After)", body = ErrorBody),
    )
)]
async fn submit_batch(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<BatchAnswer>, ApiError> {
    let lines = match super::media_type(&headers).as_deref() {
        Some("application/x-ndjson" | "application/jsonl") => true,
        Some(_) => false,
        // No type: JSON Lines unless it reads as an array.
        None => body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'['),
    };
    let parsed = if lines {
        batch_lines(&body)?
    } else {
        batch_array(&body)?
    };
    if parsed.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the batch holds no tasks: send a JSON array of task objects, or one task object \
             per line (JSON Lines)",
        ));
    }
    if parsed.len() > MAX_BATCH {
        return Err(ApiError::too_large(format!(
            "the batch holds {} tasks, more than the {MAX_BATCH} one request takes: split it",
            parsed.len()
        )));
    }
    let mut items = Vec::with_capacity(parsed.len());
    let mut specs = Vec::new();
    // For each spec sent to the pool, its item.
    let mut spec_items = Vec::new();
    for (index, (line, request)) in parsed.into_iter().enumerate() {
        let spec = request.and_then(|request| task_spec(&state, &request));
        let mut item = BatchItem {
            index,
            line,
            id: None,
            created: None,
            error: None,
        };
        match spec {
            Ok(spec) => {
                spec_items.push(index);
                specs.push(spec);
            }
            Err(e) => item.error = Some(item_error(e, index, line)),
        }
        items.push(item);
    }
    if !specs.is_empty() {
        let answers = state.pool.try_submit_many(specs).await?;
        for (index, answer) in spec_items.into_iter().zip(answers) {
            let item = &mut items[index];
            match answer {
                Ok(submitted) => {
                    item.id = Some(submitted.handle.id().to_string());
                    item.created = Some(submitted.created);
                }
                Err(e) => item.error = Some(item_error(e.into(), index, item.line)),
            }
        }
    }
    let created = items.iter().filter(|i| i.created == Some(true)).count();
    let existing = items.iter().filter(|i| i.created == Some(false)).count();
    let failed = items.iter().filter(|i| i.error.is_some()).count();
    if failed > 0 {
        tracing::debug!(failed, "batch items refused");
    }
    Ok(Json(BatchAnswer {
        items,
        created,
        existing,
        failed,
    }))
}

/// An item of a batch: its line (JSON Lines), and its task or why it is not
/// one.
type BatchEntry = (Option<usize>, Result<SubmitTask, ApiError>);

/// The items of a JSON array body.
fn batch_array(body: &[u8]) -> Result<Vec<BatchEntry>, ApiError> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        // One value, then more on the next line: JSON Lines sent as JSON.
        Err(e) if e.is_syntax() && e.line() > 1 && body.starts_with(b"{") => {
            return Err(ApiError::bad_request(
                "malformed_json",
                format!(
                    "the body is not valid JSON: {e}; for one task per line, send \
                     Content-Type: application/x-ndjson"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let serde_json::Value::Array(values) = value else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON array of task objects (or JSON Lines, one task per line, \
             with Content-Type: application/x-ndjson)",
        ));
    };
    Ok(values
        .into_iter()
        .map(|value| (None, batch_task(value)))
        .collect())
}

/// The items of a JSON Lines body: one per line that is not blank.
fn batch_lines(body: &[u8]) -> Result<Vec<BatchEntry>, ApiError> {
    let mut entries = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let task = serde_json::from_slice::<serde_json::Value>(line)
            .map_err(ApiError::from)
            .and_then(batch_task);
        entries.push((Some(n + 1), task));
    }
    Ok(entries)
}

/// One task object of a batch.
fn batch_task(value: serde_json::Value) -> Result<SubmitTask, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a task must be a JSON object",
        ));
    }
    Ok(serde_json::from_value(value)?)
}

/// The spec a task object asks for, checked as `POST /v1/tasks` checks it.
fn task_spec(state: &AppState, request: &SubmitTask) -> Result<crate::TaskSpec, ApiError> {
    let spec_error = |e: SpecError| match e {
        SpecError::Invalid(code, message) => ApiError::bad_request(code, message),
        SpecError::InputTooLarge(size, limit) => ApiError::too_large(format!(
            "the input is {size} bytes, more than the limit of {limit}"
        )),
    };
    let input = request.input_bytes().map_err(spec_error)?;
    let limit = state.config.max_input_size;
    if input.len() as u64 > limit {
        return Err(spec_error(SpecError::InputTooLarge(
            input.len() as u64,
            limit,
        )));
    }
    request.to_spec(input).map_err(spec_error)
}

/// An item's error, its message naming the item.
fn item_error(error: ApiError, index: usize, line: Option<usize>) -> super::ErrorDetail {
    let mut detail = error.into_detail();
    detail.message = match line {
        Some(line) => format!("line {line}: {}", detail.message),
        None => format!("item {index}: {}", detail.message),
    };
    detail
}

/// List tasks, newest first, filtered by state and labels, a page at a
/// time.
#[utoipa::path(
    get, path = "/v1/tasks",
    params(
        ("state" = Option<String>, Query, description = "queued, scheduled, running, succeeded, failed, cancelled or expired"),
        ("label" = Option<String>, Query, description = "`key=value`; repeat for several"),
        ("limit" = Option<usize>, Query, description = "page size, 1 to 10000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody))
)]
async fn list_tasks(State(state): State<AppState>, uri: Uri) -> Result<Json<TaskList>, ApiError> {
    let pairs = query(&uri, &["state", "label", "limit", "cursor"])?;
    let mut filter = TaskFilter::default();
    for (key, value) in &pairs {
        match key.as_str() {
            "state" => {
                filter.state = Some(value.parse::<TaskState>().map_err(|e: crate::Error| {
                    ApiError::bad_request("invalid_request", e.to_string())
                })?);
            }
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("label `{value}` must be written key=value"),
                    )
                })?;
                filter.labels.insert(k.to_string(), v.to_string());
            }
            "limit" => {
                // `5` or `5.0`: both are the integer 5 to JSON Schema.
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .or_else(|| {
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.fract() == 0.0 && (1.0..=10_000.0).contains(f))
                            .map(|f| f as usize)
                    })
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_request",
                            format!("limit `{value}` must be a number from 1 to 10000"),
                        )
                    })?;
            }
            "cursor" => filter.before = Some(parse_id(value)?),
            _ => {}
        }
    }
    let page = filter.page_size();
    let tasks = state.pool.list(&filter).await?;
    let next_cursor = (tasks.len() == page)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(TaskList {
        tasks: tasks.iter().map(TaskView::from).collect(),
        next_cursor,
    }))
}

/// A task's state, and its result once final.
#[utoipa::path(
    get, path = "/v1/tasks/{id}",
    params(("id" = String, Path, description = "the task's id")),
    responses(
        (status = 200, body = TaskAnswer),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let record = state.pool.status(id).await?;
    Ok(Json(TaskAnswer {
        task: TaskView::from(&record),
        result: ResultView::of_record(&record),
        created: None,
    }))
}

/// A task's result. Without a result yet: 202 with the task; with
/// `?wait=DURATION`, waits for it first.
#[utoipa::path(
    get, path = "/v1/tasks/{id}/result",
    params(
        ("id" = String, Path, description = "the task's id"),
        ("wait" = Option<String>, Query, description = "long-poll, e.g. `30s`; cut to the \
        server's longest wait (--max-wait, default 5m)"),
    ),
    responses(
        (status = 200, description = "final", body = ResultView),
        (status = 202, description = "not finished yet", body = TaskView),
        (status = 400, description = "not a task id, or a malformed `wait`", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query(&uri, &["wait"])?;
    let wait = wait_param(&state, &pairs)?;
    let id = parse_id(&id)?;
    let result = match wait {
        Some(wait) => wait_for(&state, id, wait).await?,
        None => ResultView::of_record(&state.pool.status(id).await?),
    };
    Ok(match result {
        Some(result) => Json(result).into_response(),
        None => {
            let record = state.pool.status(id).await?;
            (StatusCode::ACCEPTED, Json(TaskView::from(&record))).into_response()
        }
    })
}

/// A final task's output, as raw bytes, streamed from where the store
/// keeps it (large outputs are never read whole into the server's memory).
#[utoipa::path(
    get, path = "/v1/tasks/{id}/output",
    params(("id" = String, Path, description = "the task's id")),
    responses(
        (status = 200, description = "the output of the task's last attempt",
            content_type = "application/octet-stream", body = WasmBytes),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the task is not final yet (`not_finished`)", body = ErrorBody),
    )
)]
async fn get_output(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = state.pool.status(id).await?;
    if !record.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!(
                "task {id} is {}: its output is there once it is final; wait for it with \
                 GET /v1/tasks/{id}/result?wait=30s",
                record.state
            ),
        ));
    }
    let octets = [(header::CONTENT_TYPE, "application/octet-stream")];
    let length = record.output.len();
    let body = match &record.output {
        crate::Payload::Inline(bytes) => Body::from(bytes.clone()),
        stored => {
            let path = state
                .pool
                .backend()
                .payload_file(&id, crate::Slot::Output, stored)
                .ok_or_else(|| {
                    ApiError::internal(&format!(
                        "task {id}'s output names a file the backend lacks"
                    ))
                })?;
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                // Retention removed the task and its output meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(crate::Error::NotFound(id).into());
                }
                Err(e) => {
                    return Err(ApiError::internal(&format!(
                        "cannot open the output file {}: {e}",
                        path.display()
                    )));
                }
            };
            Body::from_stream(tokio_util::io::ReaderStream::new(file))
        }
    };
    Ok((octets, [(header::CONTENT_LENGTH, length.to_string())], body).into_response())
}

/// A task's input, as raw bytes.
#[utoipa::path(
    get, path = "/v1/tasks/{id}/input",
    params(("id" = String, Path, description = "the task's id")),
    responses(
        (status = 200, description = "the task's input",
            content_type = "application/octet-stream", body = WasmBytes),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn get_input(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = state.pool.status(id).await?;
    let octets = [(header::CONTENT_TYPE, "application/octet-stream")];
    let length = record.input.len();
    let body = match &record.input {
        crate::Payload::Inline(bytes) => Body::from(bytes.clone()),
        stored => {
            let path = state
                .pool
                .backend()
                .payload_file(&id, crate::Slot::Input, stored)
                .ok_or_else(|| {
                    ApiError::internal(&format!("task {id}'s input names a file the backend lacks"))
                })?;
            match tokio::fs::File::open(&path).await {
                Ok(file) => Body::from_stream(tokio_util::io::ReaderStream::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(crate::Error::NotFound(id).into());
                }
                Err(e) => {
                    return Err(ApiError::internal(&format!(
                        "cannot open the input file {}: {e}",
                        path.display()
                    )));
                }
            }
        }
    };
    Ok((octets, [(header::CONTENT_LENGTH, length.to_string())], body).into_response())
}

/// Run a final task again, as a new task: a copy with the same module,
/// input, limits, priority, attempts, backoff and labels (plus the label
/// `retry_of` naming the original), without its idempotency key, delay or
/// expiry. The original stays as it ended.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/retry",
    params(("id" = String, Path, description = "the final task to run again")),
    responses(
        (status = 201, description = "the new task", body = TaskAnswer),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the task is not final (`not_finished`)", body = ErrorBody),
        (status = 429, description = "the queue is full", body = ErrorBody),
        (status = 503, description = "shutting down, or stored outputs at their bound", body = ErrorBody),
    )
)]
async fn retry_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let handle = state.pool.retry(id).await?;
    let record = state.pool.status(handle.id()).await?;
    let answer = TaskAnswer {
        task: TaskView::from(&record),
        result: None,
        created: Some(true),
    };
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    if let Ok(location) = format!("/v1/tasks/{}", handle.id()).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Delete a final task, with its result and stored input and output.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/delete",
    params(("id" = String, Path, description = "the final task to delete")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the task is not final (`not_finished`): cancel it first", body = ErrorBody),
    )
)]
async fn delete_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let record = state.pool.status(id).await?;
    if !record.state.is_final() {
        return Err(crate::Error::NotFinal(id, record.state).into());
    }
    match state.pool.delete(&[id]).await?.as_slice() {
        [] => Err(crate::Error::NotFound(id).into()),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// Delete every final task matching a filter (a final state, labels), with
/// their results and stored inputs and outputs.
#[utoipa::path(
    post, path = "/v1/tasks:purge",
    request_body = PurgeRequest,
    responses(
        (status = 200, body = PurgeView),
        (status = 400, description = "a state that is not final, or a malformed filter", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/json", body = ErrorBody),
    )
)]
async fn purge_tasks(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<PurgeView>, ApiError> {
    // A body is required, `{}` for every final task: a purge of
    // everything is never a request's accident.
    let request: PurgeRequest = json_object(&body)?;
    let mut filter = TaskFilter::default();
    if let Some(text) = &request.state {
        let task_state = text
            .parse::<TaskState>()
            .map_err(|e: crate::Error| ApiError::bad_request("invalid_request", e.to_string()))?;
        if !task_state.is_final() {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "only final tasks can be purged (succeeded, failed, cancelled, expired), \
                     not {task_state} ones: cancel them first"
                ),
            ));
        }
        filter.state = Some(task_state);
    }
    filter.labels = request.labels;
    let deleted = state.pool.purge(&filter).await?;
    Ok(Json(PurgeView { deleted }))
}

/// Pause the queue: no task is started until it is resumed; running tasks
/// finish, and submissions are still taken.
#[utoipa::path(post, path = "/v1/queue/pause", responses((status = 200, body = QueueView)))]
async fn pause_queue(State(state): State<AppState>) -> Json<QueueView> {
    state.pool.pause();
    tracing::info!("queue paused");
    Json(QueueView { paused: true })
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/v1/queue/resume", responses((status = 200, body = QueueView)))]
async fn resume_queue(State(state): State<AppState>) -> Json<QueueView> {
    state.pool.resume();
    tracing::info!("queue resumed");
    Json(QueueView { paused: false })
}

/// Change how many tasks run at once, from 1 to the daemon's
/// `--max-workers`. Fewer: running tasks finish, no new ones start until
/// below the new count.
#[utoipa::path(
    put, path = "/v1/workers",
    request_body = WorkersRequest,
    responses(
        (status = 200, body = WorkersView),
        (status = 400, description = "not from 1 to the daemon's maximum", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/json", body = ErrorBody),
    )
)]
async fn set_workers(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<WorkersView>, ApiError> {
    let request: WorkersRequest = json_object(&body)?;
    let max_workers = state.pool.max_workers();
    if request.workers == 0 || request.workers > max_workers {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "`workers` must be from 1 to {max_workers} (this daemon's --max-workers), not {}",
                request.workers
            ),
        ));
    }
    state
        .pool
        .set_workers(request.workers)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    tracing::info!(workers = request.workers, "worker count changed");
    Ok(Json(WorkersView {
        workers: request.workers,
        max_workers,
    }))
}

/// Cancel a task: a waiting one never runs, a running one is killed.
/// A finished task is left alone (409).
#[utoipa::path(
    delete, path = "/v1/tasks/{id}",
    params(("id" = String, Path, description = "the task's id")),
    responses(
        (status = 200, body = CancelAnswer),
        (status = 400, description = "not a task id", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already finished", body = ErrorBody),
    )
)]
async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CancelAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let cancel = match state.pool.cancel(id).await? {
        CancelResult::Cancelled => "cancelled",
        CancelResult::Killed => "killed",
        CancelResult::AlreadyFinished(s) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_finished",
                format!("task {id} already finished ({s}); nothing to cancel"),
            ));
        }
    };
    Ok(Json(CancelAnswer {
        id: id.to_string(),
        cancel: cancel.to_string(),
    }))
}

/// Counts per state, workers, throughput.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = StatsView)))]
async fn stats(State(state): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    Ok(Json(StatsView::from(&state.pool.stats().await?)))
}

/// Server-sent events of every task transition and progress report, as
/// they happen. Each event's name is its kind (`submitted`, `started`,
/// `progress`, `retrying`, `succeeded`, `failed`, `cancelled`, `expired`,
/// `requeued`, `interrupted`), its data the JSON event. `?task=ID` keeps one task's
/// events. A client that falls behind gets a `lagged` event saying how
/// many it missed.
#[utoipa::path(
    get, path = "/v1/events",
    params(("task" = Option<String>, Query, description = "only this task's events")),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream", body = String),
        (status = 400, description = "not a task id", body = ErrorBody),
    )
)]
async fn events(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let pairs = query(&uri, &["task"])?;
    let only = match pairs.iter().find(|(k, _)| k == "task") {
        Some((_, id)) => Some(parse_id(id)?),
        None => None,
    };
    let events = state.pool.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (events, shutdown),
        move |(mut events, shutdown)| async move {
            loop {
                let next = tokio::select! {
                    next = events.recv() => next,
                    () = shutdown.cancelled() => return None,
                };
                let event = match next {
                    Ok(event) if only.is_none_or(|id| id == event.id) => {
                        let json = serde_json::to_value(&event).unwrap_or_default();
                        let name = json
                            .get("event")
                            .and_then(|v| v.as_str())
                            .unwrap_or("event")
                            .to_string();
                        SseEvent::default().event(name).data(json.to_string())
                    }
                    Ok(_) => continue,
                    Err(EventsError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                    Err(_) => return None,
                };
                return Some((Ok(event), (events, shutdown)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Liveness: 200 while the server answers. Needs no token.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn healthz() -> Json<BTreeMap<&'static str, &'static str>> {
    Json(BTreeMap::from([("status", "ok")]))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
async fn metrics_text(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.pool.stats().await?;
    let text = metrics::render(&stats, &state.metrics);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
