// Build: cargo build --release --target wasm32-wasip1 (or wasm32-wasip2) --manifest-path examples/rust/Cargo.toml -p fail

//! Fails on purpose, to show how a failure looks and how retries go:
//! `{"fail_until_attempt": K, "attempt": A}` returns the error
//! `attempt A of K: failing on purpose` while `A < K`, and
//! `{"attempt": A}` once `A >= K`.
//!
//! A task sees only its input, so the attempt number is part of it. Submit
//! with `"attempt": 1, "fail_until_attempt": 3` and the task fails: a
//! WASI command module ends with exit code 1 and the message as its log's
//! tail, a component returns the message as `err`; either way the host
//! records the message and, if the task allows more attempts, retries it
//! after its backoff (with the same input, so it fails every time: the
//! failures are what this example shows). With `"attempt": 3` it succeeds.
//!
//! `"how": "panic"` fails by panicking instead: the guest traps, the panic
//! message goes to stderr, and the host records a trap rather than an
//! error.

use serde::{Deserialize, Serialize};

/// How the task fails.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// Return `Err` (the default).
    #[default]
    Error,
    /// Panic: the guest traps.
    Panic,
}

/// The task's input.
#[derive(Debug, Deserialize)]
pub struct Input {
    /// The first attempt that succeeds.
    pub fail_until_attempt: u32,
    /// This attempt's number.
    pub attempt: u32,
    /// How to fail.
    #[serde(default)]
    pub how: How,
}

/// The task's output.
#[derive(Debug, Serialize)]
pub struct Output {
    /// The attempt that succeeded.
    pub attempt: u32,
}

/// Fails while `attempt < fail_until_attempt`.
#[wpool_guest::task]
pub fn run(input: Input) -> Result<Output, String> {
    let Input {
        fail_until_attempt: until,
        attempt,
        how,
    } = input;
    if attempt < until {
        let message = format!("attempt {attempt} of {until}: failing on purpose");
        wpool_guest::log(&format!("about to fail: {message}"));
        match how {
            How::Error => return Err(message),
            How::Panic => panic!("{message}"),
        }
    }
    wpool_guest::log(&format!("attempt {attempt} succeeds"));
    Ok(Output { attempt })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::{Failure, testing};

    #[test]
    fn fails_before_the_given_attempt() {
        let out = testing::run_json(run, r#"{"fail_until_attempt": 3, "attempt": 1}"#);
        assert_eq!(
            out,
            Err(Failure::Task("attempt 1 of 3: failing on purpose".into()))
        );
    }

    #[test]
    fn succeeds_from_the_given_attempt_on() {
        for attempt in [3, 4] {
            let input = format!(r#"{{"fail_until_attempt": 3, "attempt": {attempt}}}"#);
            let out = testing::run_json(run, &input);
            assert_eq!(out, Ok(format!(r#"{{"attempt":{attempt}}}"#)));
        }
    }

    #[test]
    #[should_panic(expected = "attempt 0 of 1: failing on purpose")]
    fn can_fail_by_panicking() {
        let _ = testing::run_json(
            run,
            r#"{"fail_until_attempt": 1, "attempt": 0, "how": "panic"}"#,
        );
    }
}
