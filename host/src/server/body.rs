//! Request bodies: read within the route's size limit, the body timeout,
//! and a budget of bytes in flight shared by every connection.
//!
//! The budget counts every body byte the server holds before a handler is
//! done with it: a task's JSON while it arrives and is parsed (the buffer's
//! capacity, not only its length), a module's bytes while they are written
//! to a temporary file and then compiled. A request that would take the
//! total past [`ServerConfig::max_body_bytes_in_flight`] is answered 503
//! `busy` with `Retry-After` at once, whatever its `Content-Length`
//! promised and however far a chunked body had come: the server never
//! buffers past the budget, so concurrent uploads cannot exhaust memory.
//!
//! [`ServerConfig::max_body_bytes_in_flight`]: super::ServerConfig::max_body_bytes_in_flight

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The bytes of request bodies in flight, across connections.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    total: u64,
}

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    fn add(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(permit) => permit.merge(more),
            None => self.0 = Some(more),
        }
    }
}

impl BodyBudget {
    /// A budget of `total` bytes.
    pub(crate) fn new(total: u64) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            permits: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
            total,
        }
    }

    /// Nothing taken yet.
    pub(crate) fn none() -> Held {
        Held(None)
    }

    /// Takes `bytes` more for `held`, or refuses at once (503 `busy`).
    pub(crate) fn take(&self, held: &mut Held, bytes: u64) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| self.busy())?;
        held.add(permit);
        Ok(())
    }

    fn busy(&self) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "the server is receiving as many request bodies as it allows at once ({} in \
                 flight, --max-body-bytes-in-flight); retry after the Retry-After delay",
                crate::units::format_size(self.total)
            ),
        )
        .retry_after(1)
    }
}

/// The declared `Content-Length`, if any.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads a whole body into memory, at most `limit` bytes, holding its
/// buffer's capacity against `budget`. The bytes come back with what they
/// hold of the budget; drop both together.
pub(crate) async fn read_to_memory(
    body: Body,
    limit: u64,
    declared: Option<u64>,
    budget: &BodyBudget,
) -> Result<(Vec<u8>, Held), ApiError> {
    let mut held = BodyBudget::none();
    let mut bytes = Vec::new();
    if let Some(length) = declared {
        // Promised up front: taken up front, before a byte is read.
        let length = length.min(limit);
        budget.take(&mut held, length)?;
        bytes.reserve_exact(usize::try_from(length).unwrap_or(0));
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        let needed = bytes.len() + chunk.len();
        if needed > limit_usize {
            return Err(too_large(limit));
        }
        if needed > bytes.capacity() {
            // Grow as a Vec would, but never past the limit, and only with
            // the budget's leave.
            let grown = needed
                .max(bytes.capacity().saturating_mul(2))
                .max(8 << 10)
                .min(limit_usize);
            budget.take(&mut held, (grown - bytes.capacity()) as u64)?;
            bytes.reserve_exact(grown - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, held))
}

/// A body written to a temporary file (deleted when dropped), with what it
/// holds of the budget.
#[derive(Debug)]
pub(crate) struct Spooled {
    /// The file.
    pub(crate) path: tempfile::TempPath,
    /// Its size.
    pub(crate) size: u64,
    /// Its bytes in the budget, until the upload is done with.
    pub(crate) _held: Held,
}

/// Streams a body to a new temporary file in `dir`, at most `limit`
/// bytes: the body is never held whole in memory while it arrives.
pub(crate) async fn spool_to_file(
    body: Body,
    limit: u64,
    dir: &Path,
    budget: &BodyBudget,
) -> Result<Spooled, ApiError> {
    let dir: PathBuf = dir.to_path_buf();
    let file = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".wasm")
            .tempfile_in(&dir)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&format!("cannot create an upload file: {e}")))?;
    let (file, path) = file.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut held = BodyBudget::none();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        budget.take(&mut held, chunk.len() as u64)?;
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(&format!("cannot write an upload file: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(&format!("cannot write an upload file: {e}")))?;
    Ok(Spooled {
        path,
        size,
        _held: held,
    })
}

fn unreadable() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "the request body could not be read (the connection broke or its chunked encoding is \
         invalid)",
    )
}

/// 413 for a body past `limit`.
pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "the request body is larger than this route's limit of {}; the server's \
         --max-module-size and --max-input-size set the limits",
        crate::units::format_size(limit)
    ))
}

/// 408 for a body that did not arrive in time.
pub(crate) fn timed_out(timeout: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} (the server's --body-timeout); send it \
             faster, or in smaller requests",
            crate::units::format_duration(timeout)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_past_the_budget_is_refused_and_the_budget_comes_back() {
        let budget = BodyBudget::new(100 << 10);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..20).map(|_| Ok(vec![7u8; 10 << 10])).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let refused = read_to_memory(body, 1 << 20, None, &budget)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "busy");
        assert_eq!(budget.permits.available_permits(), 100 << 10, "given back");

        let (bytes, held) = read_to_memory(Body::from(vec![1u8; 50 << 10]), 1 << 20, None, &budget)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 50 << 10);
        assert!(budget.permits.available_permits() <= 50 << 10);
        let second = read_to_memory(
            Body::from(vec![1u8; 60 << 10]),
            1 << 20,
            Some(60 << 10),
            &budget,
        )
        .await
        .unwrap_err();
        assert_eq!(second.code(), "busy", "declared length taken up front");
        drop(held);
        assert_eq!(budget.permits.available_permits(), 100 << 10);
    }
}
