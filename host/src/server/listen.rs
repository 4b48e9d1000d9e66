//! The accept loop: hyper's HTTP/1.1 connections over our own listener, so
//! that the daemon bounds what `axum::serve` cannot:
//!
//! - **A header-read timeout.** A connection whose request line and
//!   headers have not all arrived within [`ServerConfig::header_timeout`]
//!   (an idle keep-alive connection included) is closed; a client that
//!   trickles its headers a byte at a time cannot hold it open.
//! - **A connection limit.** At [`ServerConfig::max_connections`] open
//!   connections the loop stops accepting; new connections wait in the
//!   kernel's backlog until one closes (as Go's `netutil.LimitListener`
//!   does), so the daemon never runs out of file descriptors on clients.
//! - **Accept errors that neither stop nor spin the loop.** A failed
//!   `accept` (EMFILE, ENFILE, ENOBUFS) is logged and retried after a
//!   short, growing pause; errors of one connection are skipped at once.
//! - **JSON for hyper's own answers.** A request hyper cannot parse gets
//!   its automatic 400, 414 or 431 with an empty body; [`JsonErrors`]
//!   rewrites those to the API's JSON error shape on the way out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ServerConfig;

/// The largest buffer hyper keeps per connection, for the request line and
/// headers (past it: 431) and for reading bodies. Small, so that many open
/// connections cost little memory (it grows only as a request needs).
/// Room for a URI up to hyper's own limit (64 KiB, past it: 414).
pub(crate) const MAX_HEADER_BYTES: usize = 96 << 10;

/// The most header fields a request may carry (past it: 431): hyper's
/// default, which keeps the parser's buffer on the stack.
pub(crate) const MAX_HEADERS: usize = 100;

/// The longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and serves `app` on each until
/// `shutdown` completes; then stops accepting, cancels `token` (long polls
/// and event streams end), and waits for the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    token: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let mut pause = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = Duration::ZERO;
                stream
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: nothing to accept
                // with until something closes. Wait instead of spinning.
                pause = (pause * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_PAUSE);
                tracing::warn!(
                    error = %e,
                    pause_ms = pause.as_millis() as u64,
                    "cannot accept a connection; retrying after a pause"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    token.cancel();
    graceful.shutdown().await;
    Ok(())
}

/// An error of one connection (it was reset before it was accepted): the
/// listener itself is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// A connection's stream that rewrites hyper's automatic error answers
/// (400, 414, 431 with an empty body, sent when a request cannot be parsed
/// and the connection closes after) into JSON error answers. Everything
/// else passes through untouched.
#[derive(Debug)]
pub(crate) struct JsonErrors {
    inner: TcpStream,
    /// A rewritten answer still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl JsonErrors {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            pending: None,
        }
    }

    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer standing in for hyper's automatic answer `head`, if it
/// is one: a 400, 414 or 431 head with `content-length: 0` and no
/// `content-type`. The application's own error answers are always JSON,
/// so they never match.
pub(crate) fn rewrite_automatic_error(head: &[u8]) -> Option<Vec<u8>> {
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (status, code, message) = if head.starts_with(b"HTTP/1.1 400 ") {
        (
            "400 Bad Request",
            "invalid_request",
            "the request is not valid HTTP/1.1: its request line or a header could not be parsed"
                .to_string(),
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (
            "414 URI Too Long",
            "uri_too_long",
            "the request's URI is too long: send large data in the body".to_string(),
        )
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            format!(
                "the request's headers are too large: send at most {MAX_HEADERS} header fields \
                 and {} KiB of request line and headers",
                MAX_HEADER_BYTES >> 10
            ),
        )
    } else {
        return None;
    };
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") || text.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for JsonErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_some() {
            // The rewritten answer is the connection's last: hyper closes
            // after an automatic answer. Anything more is dropped.
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        if let Some(answer) = rewrite_automatic_error(buf) {
            this.pending = Some((answer, 0));
            // Written or not yet, the head is taken; the rest is written
            // by the next write, flush or shutdown.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_automatic_error;

    #[test]
    fn hypers_automatic_answers_become_json_and_nothing_else_is_touched() {
        let answer = rewrite_automatic_error(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
              date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n",
        )
        .expect("rewritten");
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");

        // The application's own JSON errors, and successes, pass through.
        assert!(
            rewrite_automatic_error(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                  content-length: 0\r\n\r\n"
            )
            .is_none()
        );
        assert!(rewrite_automatic_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            rewrite_automatic_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n")
                .is_none()
        );
    }
}
