//! The task's stdio: input from memory, output capped, log kept as a tail.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError};

use crate::ProgressFn;

/// Largest write permit handed to a guest at once.
const MAX_PERMIT: usize = 64 << 10;

/// The error a guest's write past its output limit traps with.
#[derive(Debug)]
pub(crate) struct OutputLimitExceeded;

impl std::fmt::Display for OutputLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the task wrote more output than its limit")
    }
}

impl std::error::Error for OutputLimitExceeded {}

#[derive(Debug)]
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

/// The task's stdout: a buffer that never holds more than `cap` bytes. A
/// write past the cap traps the guest, so a task cannot make the host
/// allocate without bound.
#[derive(Clone, Debug)]
pub(crate) struct CappedOutput(Arc<Mutex<Capped>>);

impl CappedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Capped {
            buf: Vec::new(),
            cap,
            overflowed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capped> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().buf)
    }

    pub(crate) fn write_bytes(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut state = self.lock();
        if bytes.len() > state.cap - state.buf.len() {
            state.overflowed = true;
            return Err(OutputLimitExceeded);
        }
        state.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn permit(&self) -> Result<usize, OutputLimitExceeded> {
        let state = self.lock();
        let room = state.cap - state.buf.len();
        // Full: saying "0, wait" would make the guest wait forever, and
        // refusing here would fail a task that wrote exactly `cap` bytes and
        // then asks to write nothing (a flush at exit). Permit one byte: the
        // write of a byte is what passes the limit, and is refused.
        Ok(room.clamp(1, MAX_PERMIT))
    }
}

#[async_trait::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.permit()
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.permit() {
            Ok(room) => buf.len().min(room),
            Err(e) => return Poll::Ready(Err(io::Error::other(e))),
        };
        Poll::Ready(
            self.write_bytes(&buf[..n])
                .map(|()| n)
                .map_err(io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// The longest stderr line that is checked for the progress protocol.
const MAX_PROGRESS_LINE: usize = 128;

/// The prefix of a progress line on a command module's stderr:
/// `wpool:progress DONE TOTAL`.
pub(crate) const PROGRESS_PREFIX: &[u8] = b"wpool:progress ";

struct LogState {
    tail: VecDeque<u8>,
    cap: usize,
    /// The start of the current line, while it may still be a progress line.
    pending: Vec<u8>,
    /// The current line is longer than any progress line: stream it.
    in_long_line: bool,
    progress: Option<(u64, u64)>,
    on_progress: Option<ProgressFn>,
}

impl std::fmt::Debug for LogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogState")
            .field("tail_len", &self.tail.len())
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl LogState {
    fn keep(&mut self, bytes: &[u8]) {
        if self.cap == 0 {
            return;
        }
        let bytes = if bytes.len() > self.cap {
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let excess = (self.tail.len() + bytes.len()).saturating_sub(self.cap);
        self.tail.drain(..excess);
        self.tail.extend(bytes);
    }

    fn report(&mut self, done: u64, total: u64) {
        self.progress = Some((done, total));
        if let Some(on_progress) = &self.on_progress {
            on_progress(done, total);
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.pending);
        if let Some((done, total)) = parse_progress(&line) {
            self.report(done, total);
        } else {
            self.keep(&line);
            self.keep(b"\n");
        }
    }

    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends_line) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if self.in_long_line {
                self.keep(chunk);
                if ends_line {
                    self.keep(b"\n");
                }
            } else {
                self.pending.extend_from_slice(chunk);
                if self.pending.len() > MAX_PROGRESS_LINE
                    || !PROGRESS_PREFIX
                        .starts_with(&self.pending[..self.pending.len().min(PROGRESS_PREFIX.len())])
                {
                    // Not a progress line: stop holding it back.
                    let pending = std::mem::take(&mut self.pending);
                    self.keep(&pending);
                    self.in_long_line = true;
                    if ends_line {
                        self.keep(b"\n");
                    }
                } else if ends_line {
                    self.end_line();
                }
            }
            if ends_line {
                self.in_long_line = false;
            }
            bytes = rest;
        }
    }
}

fn parse_progress(line: &[u8]) -> Option<(u64, u64)> {
    let rest = std::str::from_utf8(line.strip_prefix(PROGRESS_PREFIX)?).ok()?;
    let mut parts = rest.trim_end_matches('\r').split(' ');
    let done = parts.next()?.parse().ok()?;
    let total = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((done, total))
}

/// The task's log: stderr of a command, stderr and `log` calls of a
/// component. Only the last `cap` bytes are kept; writing more never fails.
/// Progress lines are taken out and reported.
#[derive(Clone, Debug)]
pub(crate) struct LogSink(Arc<Mutex<LogState>>);

impl LogSink {
    pub(crate) fn new(cap: usize, on_progress: Option<ProgressFn>) -> Self {
        Self(Arc::new(Mutex::new(LogState {
            tail: VecDeque::new(),
            cap,
            pending: Vec::new(),
            in_long_line: false,
            progress: None,
            on_progress,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self, bytes: &[u8]) {
        self.lock().write(bytes);
    }

    /// A whole line from a component's `log` call.
    pub(crate) fn line(&self, line: &str) {
        let mut state = self.lock();
        state.keep(line.as_bytes());
        state.keep(b"\n");
    }

    pub(crate) fn progress(&self, done: u64, total: u64) {
        self.lock().report(done, total);
    }

    /// The kept tail, lossily decoded, and the last progress reported;
    /// the tail is taken (the run has ended: nothing writes any more).
    /// Valid UTF-8 (as most logs are, and an empty one) is not copied.
    pub(crate) fn finish(&self) -> (String, Option<(u64, u64)>) {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            let pending = std::mem::take(&mut state.pending);
            state.keep(&pending);
        }
        let bytes = Vec::from(std::mem::take(&mut state.tail));
        let log = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (log, state.progress)
    }
}

#[async_trait::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        LogSink::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_PERMIT)
    }
}

impl AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        LogSink::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_tail_and_takes_out_progress() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let log = LogSink::new(
            16,
            Some(Arc::new(move |d, t| seen2.lock().unwrap().push((d, t)))),
        );
        log.write(b"hello\nwpool:progress 1 10\nwpool:pro");
        log.write(b"gress 2 10\nworld\n");
        let (tail, progress) = log.finish();
        assert_eq!(tail, "hello\nworld\n");
        assert_eq!(progress, Some((2, 10)));
        assert_eq!(*seen.lock().unwrap(), vec![(1, 10), (2, 10)]);

        let log = LogSink::new(8, None);
        log.write(b"0123456789abcdef\nxy");
        let (tail, _) = log.finish();
        assert_eq!(tail, "bcdef\nxy");
    }

    #[test]
    fn malformed_progress_lines_stay_in_the_log() {
        let log = LogSink::new(1024, None);
        log.write(b"wpool:progress one 2\nwpool:progress 1 2 3\n");
        let (tail, progress) = log.finish();
        assert_eq!(progress, None);
        assert_eq!(tail, "wpool:progress one 2\nwpool:progress 1 2 3\n");
    }

    #[test]
    fn a_log_that_is_not_utf8_is_decoded_lossily() {
        let log = LogSink::new(8, None);
        log.write(b"abcdef\xffgh");
        let (tail, _) = log.finish();
        assert_eq!(tail, "bcdef\u{fffd}gh");
    }

    #[test]
    fn output_is_capped() {
        let out = CappedOutput::new(4);
        assert_eq!(out.permit().unwrap(), 4);
        out.write_bytes(b"abc").unwrap();
        assert!(out.write_bytes(b"de").is_err());
        assert!(out.overflowed());
        assert_eq!(out.take(), b"abc");
    }
}
