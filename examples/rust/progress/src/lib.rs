// Build: cargo build --release --target wasm32-wasip1 (or wasm32-wasip2) --manifest-path examples/rust/Cargo.toml -p progress

//! Reports progress: `{"steps": N}` → `{"steps": N}`, after reporting
//! `progress(0, N)`, then `progress(i, N)` and a log line at every step
//! `i`. An optional `"sleep_ms"` (default 0) sleeps that long in each step,
//! to watch the progress arrive (or to give the host a guest that is
//! blocked in a host call when a timeout or cancel comes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The task's input.
#[derive(Debug, Deserialize)]
pub struct Input {
    /// How many steps to take.
    pub steps: u64,
    /// Milliseconds to sleep in each step.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// The task's output.
#[derive(Debug, Serialize)]
pub struct Output {
    /// The steps taken.
    pub steps: u64,
}

/// Takes `input.steps` steps, reporting each.
#[wpool_guest::task]
pub fn run(input: Input) -> Result<Output, String> {
    let total = input.steps;
    wpool_guest::progress(0, total);
    for step in 1..=total {
        if input.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(input.sleep_ms));
        }
        wpool_guest::log(&format!("step {step} of {total}"));
        wpool_guest::progress(step, total);
    }
    Ok(Output { steps: total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::testing;

    #[test]
    fn reports_every_step() {
        let (output, seen) = testing::capture(|| testing::run_json(run, r#"{"steps": 3}"#));
        assert_eq!(output.unwrap(), r#"{"steps":3}"#);
        assert_eq!(seen.progress, [(0, 3), (1, 3), (2, 3), (3, 3)]);
        assert_eq!(seen.logs, ["step 1 of 3", "step 2 of 3", "step 3 of 3"]);
    }

    #[test]
    fn zero_steps_reports_zero_of_zero() {
        let (output, seen) = testing::capture(|| testing::run_json(run, r#"{"steps": 0}"#));
        assert_eq!(output.unwrap(), r#"{"steps":0}"#);
        assert_eq!(seen.progress, [(0, 0)]);
        assert!(seen.logs.is_empty());
    }

    #[test]
    fn sleeps_in_each_step() {
        let start = std::time::Instant::now();
        testing::run_json(run, r#"{"steps": 2, "sleep_ms": 20}"#).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
    }
}
