//! Testing a task natively, with plain `cargo test` and no WASM tooling.
//!
//! [`run_json`] and [`run_raw`] run a task function through exactly the codec
//! the WASI command and component ABIs use (the same functions, not a copy):
//! the input is decoded from bytes, the output encoded to bytes, and a
//! failure comes back as the [`Failure`] whose exit code or message the host
//! would see. [`capture`] records what a task reports through
//! [`log`](crate::log) and [`progress`](crate::progress).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wpool_guest::{Failure, testing};
//!
//! #[derive(Deserialize)]
//! struct In { n: u32 }
//! #[derive(Serialize)]
//! struct Out { double: u32 }
//!
//! #[wpool_guest::task]
//! fn run(input: In) -> Result<Out, String> {
//!     wpool_guest::log("doubling");
//!     input.n.checked_mul(2).map(|double| Out { double }).ok_or_else(|| "too big".to_string())
//! }
//!
//! let (out, seen) = testing::capture(|| testing::run_json(run, r#"{"n": 21}"#));
//! assert_eq!(out, Ok(r#"{"double":42}"#.to_string()));
//! assert_eq!(seen.logs, ["doubling"]);
//! assert_eq!(testing::run_json(run, r#"{"n": 4000000000}"#), Err(Failure::Task("too big".into())));
//! assert_eq!(testing::run_json(run, "{}").unwrap_err().exit_code(), 2);
//! ```

use std::cell::RefCell;
use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Failure;
use crate::codec::{RawInput, RawOutput, call_json, call_raw};

/// Runs a `#[task]` function on JSON `input` the way the host would, and
/// returns its JSON output as text.
///
/// # Errors
/// [`Failure::Input`] when `input` does not decode into the function's input
/// type, [`Failure::Task`] when the function returns `Err`,
/// [`Failure::Output`] when its output does not encode.
pub fn run_json<I, O, E, F>(task: F, input: &str) -> Result<String, Failure>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let output = call_json(task, input.as_bytes())?;
    // serde_json writes UTF-8 only.
    String::from_utf8(output).map_err(|e| Failure::Output(e.to_string()))
}

/// Runs a `#[task(raw)]` function on `input` the way the host would, and
/// returns its output bytes.
///
/// # Errors
/// [`Failure::Input`] when the function takes a `String` and `input` is not
/// UTF-8, [`Failure::Task`] when the function returns `Err`.
pub fn run_raw<I, O, E, F>(task: F, input: impl Into<Vec<u8>>) -> Result<Vec<u8>, Failure>
where
    I: RawInput,
    O: RawOutput,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    call_raw(task, input.into())
}

/// What a task reported through [`log`](crate::log) and
/// [`progress`](crate::progress) during a [`capture`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// Every `log` line, in order.
    pub logs: Vec<String>,
    /// Every `progress(done, total)` call, in order.
    pub progress: Vec<(u64, u64)>,
}

thread_local! {
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Runs `f` and returns its result with everything it logged and reported as
/// progress on this thread.
///
/// Reports still go where they go on the target (stderr natively, which the
/// test harness captures per test); `capture` records them as well. Captures
/// nest: an inner capture takes what is reported while it runs, and the
/// outer one carries on afterwards. Each test runs on its own thread, so
/// tests running in parallel never see each other's reports.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Captured) {
    /// Puts the outer capture back even if `f` panics.
    struct Restore(Option<Captured>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            CAPTURE.with(|c| *c.borrow_mut() = outer);
        }
    }

    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Captured::default()));
    let restore = Restore(outer);
    let result = f();
    let captured = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (result, captured)
}

/// Records a report if a [`capture`] is active on this thread.
pub(crate) fn record(event: impl FnOnce(&mut Captured)) {
    CAPTURE.with(|c| {
        if let Some(captured) = c.borrow_mut().as_mut() {
            event(captured);
        }
    });
}
