//! Write a [wpool](https://example.invalid/wpool) task in Rust as one
//! function.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct In {
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     words: usize,
//! }
//!
//! #[wpool_guest::task]
//! fn run(input: In) -> Result<Out, String> {
//!     wpool_guest::log("counting");
//!     wpool_guest::progress(1, 1);
//!     Ok(Out { words: input.text.split_whitespace().count() })
//! }
//!
//! // Natively the function stays a plain function, and the `testing`
//! // helpers run it through the same JSON codec the host uses:
//! assert_eq!(run(In { text: "a b".into() }).unwrap().words, 2);
//! let output = wpool_guest::testing::run_json(run, r#"{"text": "a b c"}"#)?;
//! assert_eq!(output, r#"{"words":3}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate needs `serde` (with `derive`) and `wpool-guest` as
//! dependencies, under those names (the macro refers to `::wpool_guest`),
//! and a library that is both a `cdylib` (the WASM module) and an `rlib`
//! (so native tests and benchmarks can call the function):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//! ```
//!
//! Build the same source for either ABI:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1   # a WASI command module
//! cargo build --release --target wasm32-wasip2   # a wpool:task component
//! ```
//!
//! and find the task at `target/wasm32-wasip1/release/<crate>.wasm` (or
//! `wasm32-wasip2`). The host tells the two apart by their bytes.
//!
//! # The task function
//!
//! [`#[task]`](macro@task) goes on one function per crate, of the form
//!
//! ```text
//! fn NAME(input: I) -> Result<O, E>
//! ```
//!
//! - `I: serde::de::DeserializeOwned`: the input, decoded from JSON.
//! - `O: serde::Serialize`: the output, encoded as compact JSON.
//! - `E: std::fmt::Display`: the error; its `Display` text is the task's
//!   error message, unchanged. `String`, `&'static str`, `anyhow::Error` or
//!   your own error type all work, and so does a `Result` alias such as
//!   `anyhow::Result<O>`.
//!
//! Not `async`, not generic, no `self`, exactly one argument: the macro says
//! so at compile time, showing the expected form.
//!
//! **Raw bytes.** `#[task(raw)]` skips the codec: `I` is `Vec<u8>` (any
//! bytes) or `String` (UTF-8 required), `O` is `Vec<u8>`, `String`,
//! `&'static str` or `&'static [u8]`, written as they are (see
//! [`RawInput`], [`RawOutput`]):
//!
//! ```
//! #[wpool_guest::task(raw)]
//! fn reverse(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!     Ok(input.into_iter().rev().collect())
//! }
//! assert_eq!(wpool_guest::testing::run_raw(reverse, "abc")?, b"cba");
//! # Ok::<(), wpool_guest::Failure>(())
//! ```
//!
//! # How a run ends
//!
//! | outcome | [`Failure`] | WASI command (p1) | component (p2) |
//! |---|---|---|---|
//! | `Ok(output)` | | output on stdout, exit 0 | `ok(output)` |
//! | `Err(e)` | [`Failure::Task`] | `e` on stderr, exit 1 | `err(e)` |
//! | input does not decode | [`Failure::Input`] | message on stderr, exit 2 | `err(message)` |
//! | output does not encode, stdio fails | [`Failure::Output`] | message on stderr, exit 3 | `err(message)` |
//!
//! An input error names the expected type and serde's error, e.g.
//! ``invalid input: expected JSON for `hello::In`: missing field `text` at
//! line 1 column 2``. A panic is a trap (the message goes to stderr), which
//! the host records as such.
//!
//! # The two ABIs
//!
//! **WASI command module** (`--target wasm32-wasip1`, selected by
//! `cfg(all(target_os = "wasi", target_env = "p1"))`). The macro exports
//! `_start` from the cdylib, which the linker then treats as a command: the
//! module exports `memory` and `_start` (wrapped to run static constructors
//! and destructors around it) and no `_initialize`; a host that follows the
//! reactor convention calls `_initialize` first only where a module has one.
//! `_start` reads all of stdin as the input, runs the function and writes
//! the output to stdout. stderr is the task's log: [`log`] writes the line
//! and a newline to it.
//!
//! A command module has no channel for progress but stderr, so
//! [`progress`] writes a line of its own there, exactly
//!
//! ```text
//! wpool:progress DONE TOTAL\n
//! ```
//!
//! with `DONE` and `TOTAL` in decimal. The host reads such lines out of
//! stderr as progress reports rather than log lines. Any WASI program, in any
//! language, can report progress the same way. (A log line of that exact
//! form is read as progress too.)
//!
//! **Component** (`--target wasm32-wasip2`, selected by
//! `cfg(all(target_os = "wasi", target_env = "p2"))`). A wasm32-wasip2
//! cdylib is a component; the macro makes it implement the world `task` of
//! the WIT package `wpool:task@0.1.0` (`wit/task.wit` in the repository):
//! it exports `run: func(input: list<u8>) -> result<list<u8>, string>`, and
//! [`log`] and [`progress`] call the host's imports `wpool:task/host.log`
//! and `wpool:task/host.progress`.
//!
//! **Native** (any other target). Nothing is exported: the function stays a
//! plain Rust function for `#[test]`s and benchmarks. [`log`] and
//! [`progress`] print to stderr in the command module's form (through
//! `eprintln!`, which the test harness captures), and
//! [`testing::capture`] records them so a test can assert on them.
//!
//! # Testing
//!
//! See [`testing`]: [`testing::run_json`] and [`testing::run_raw`] run the
//! function through the very codec the ABIs use, so a native `cargo test`
//! checks the JSON a deployed task reads and writes.

#![doc(html_root_url = "https://docs.rs/wpool-guest/0.1.0")]

// Lets the generated component bindings name this crate as `::wpool_guest`,
// the same path user crates see.
extern crate self as wpool_guest;

mod abi;
mod codec;
mod failure;
pub mod testing;

pub use codec::{RawInput, RawOutput};
pub use failure::Failure;

/// Turns `fn NAME(input: I) -> Result<O, E>` into the task of this crate.
///
/// `#[task]` decodes the input from JSON and encodes the output as JSON;
/// `#[task(raw)]` passes bytes through. See the [crate docs](crate) for the
/// accepted signatures and what is generated for each target. Use it on one
/// function per crate: a WASM module has one entry point.
pub use wpool_guest_macros::task;

/// Appends one line to the task's log.
///
/// On wasm32-wasip1 the line and a newline are written to stderr; on
/// wasm32-wasip2 the host import `wpool:task/host.log` is called; natively
/// the line is printed to stderr, and recorded by an active
/// [`testing::capture`] on every target. Logging never fails the task.
pub fn log(line: &str) {
    testing::record(|c| c.logs.push(line.to_owned()));
    abi::log(line);
}

/// Reports progress: `done` units of `total` (`total` may be 0 when not yet
/// known).
///
/// On wasm32-wasip1 the line `wpool:progress DONE TOTAL` is written to
/// stderr, where the host picks it out; on wasm32-wasip2 the host import
/// `wpool:task/host.progress` is called; natively the same line is printed
/// to stderr, and recorded by an active [`testing::capture`] on every
/// target. Progress is advisory and never fails the task.
pub fn progress(done: u64, total: u64) {
    testing::record(|c| c.progress.push((done, total)));
    abi::progress(done, total);
}

/// What the code generated by [`task`] calls. Not a public API: it changes
/// with the macro, which is always the same version as this crate.
#[doc(hidden)]
pub mod __private {
    use std::fmt::Display;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::Failure;
    use crate::codec::{RawInput, RawOutput};

    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    pub use crate::abi::p2::bindings;
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    pub use wit_bindgen;

    /// Runs a `#[task]` function on input bytes.
    pub fn call_json<I, O, E, F>(task: F, input: Vec<u8>) -> Result<Vec<u8>, Failure>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Display,
        F: FnOnce(I) -> Result<O, E>,
    {
        crate::codec::call_json(task, &input)
    }

    /// Runs a `#[task(raw)]` function on input bytes.
    pub fn call_raw<I, O, E, F>(task: F, input: Vec<u8>) -> Result<Vec<u8>, Failure>
    where
        I: RawInput,
        O: RawOutput,
        E: Display,
        F: FnOnce(I) -> Result<O, E>,
    {
        crate::codec::call_raw(task, input)
    }

    /// The body of the `_start` export of a WASI command module.
    #[cfg(all(target_os = "wasi", target_env = "p1"))]
    pub fn start(task: fn(Vec<u8>) -> Result<Vec<u8>, Failure>) {
        crate::abi::p1::start(task);
    }

    /// The `run` export of a component: a failure becomes its message.
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    pub fn run_component(
        task: fn(Vec<u8>) -> Result<Vec<u8>, Failure>,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        task(input).map_err(|failure| failure.to_string())
    }
}
