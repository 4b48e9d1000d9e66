//! The WASI command ABI (wasm32-wasip1): input on stdin, output on stdout,
//! log and progress lines on stderr, the outcome in the exit code.

use std::io::{Read, Write};

use crate::Failure;

/// The body of the exported `_start`: reads stdin to its end, runs `task`,
/// writes its output to stdout, or its failure to stderr and exits with the
/// failure's code.
pub(crate) fn start(task: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, Failure>) {
    let mut input = Vec::new();
    let outcome = match std::io::stdin().lock().read_to_end(&mut input) {
        Ok(_) => task(input),
        Err(e) => Err(Failure::Output(format!(
            "could not read the input from stdin: {e}"
        ))),
    };
    let outcome = outcome.and_then(|output| {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&output)
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::Output(format!("could not write the output to stdout: {e}")))
    });
    if let Err(failure) = outcome {
        log(failure.message());
        std::process::exit(failure.exit_code());
    }
}

/// Writes `line` and a newline to stderr in one write, so that lines from
/// `log` and `progress` never interleave.
pub(crate) fn log(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    // Logging is advisory: a task does not fail because its log is closed
    // or full (the host caps the log it keeps).
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

pub(crate) fn progress(done: u64, total: u64) {
    let line = super::progress_line(done, total);
    // Advisory, like `log`.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
