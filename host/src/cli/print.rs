//! Printing for the commands: results, JSON, JSON lines, and stdout that
//! treats a closed pipe (`wpool ... | head`) as success.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use anyhow::anyhow;

use super::client::Client;
use super::{Failure, exit};
use crate::server::types::ResultView;
use crate::units::format_duration;

/// Writes to stdout, treating a closed pipe (`wpool ... | head`) as success.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::internal(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}

/// Prints a result: its output on stdout and a summary on stderr (or the
/// whole result as JSON); the exit code says whether it succeeded.
///
/// An output too large to be carried in the result is streamed from the
/// server (`client`) to stdout.
pub(crate) fn print_result(
    result: &ResultView,
    json: bool,
    client: Option<&Client>,
) -> Result<u8, Failure> {
    if json {
        print_json(result)?;
    } else {
        let last = match (result.output_bytes(), &result.output_url, client) {
            (Some(bytes), _, _) => {
                write_stdout(&bytes)?;
                bytes.last().copied()
            }
            (None, Some(url), Some(client)) => {
                let mut out = LastByte(std::io::stdout().lock(), None);
                client
                    .get_to(url, &mut out)
                    .map_err(|e| e.into_failure(client.base()))?;
                out.flush().map_err(Failure::internal)?;
                out.1
            }
            (None, _, _) => {
                return Err(Failure::internal(anyhow!(
                    "the result of task {} carries no output and says nowhere to read it",
                    result.id
                )));
            }
        };
        // On a terminal, the summary below starts on a line of its own.
        if last.is_some_and(|b| b != b'\n') && std::io::stdout().is_terminal() {
            write_stdout(b"\n")?;
        }
        let fuel = result
            .fuel_consumed
            .map(|f| format!(", fuel {f}"))
            .unwrap_or_default();
        let interrupted = match result.interruptions {
            0 => String::new(),
            n => format!(" (its host stopped while it ran {n} time(s); it ran again)"),
        };
        let how = result
            .outcome
            .as_ref()
            .map_or_else(|| result.state.clone(), |o| o.message.clone());
        eprintln!(
            "wpool: task {} {} in {}{fuel}{interrupted}",
            result.id,
            how,
            format_duration(Duration::from_micros(result.duration_us))
        );
        if result.state != "succeeded" && !result.log.is_empty() {
            eprintln!("wpool: log tail:\n{}", result.log.trim_end());
        }
    }
    Ok(if result.state == "succeeded" {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut json = serde_json::to_vec_pretty(value).map_err(Failure::internal)?;
    json.push(b'\n');
    write_stdout(&json)
}

pub(crate) fn write_line(
    out: &mut impl Write,
    line: &impl serde::Serialize,
) -> Result<(), Failure> {
    let mut json = serde_json::to_vec(line).map_err(Failure::internal)?;
    json.push(b'\n');
    match out.write_all(&json) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::internal(anyhow!(e).context("writing to stdout"))),
    }
}

/// One line of batch output.
#[derive(Debug, serde::Serialize)]
pub(crate) struct BatchLine<'a> {
    /// 1-based line of the inputs file.
    pub(crate) line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<&'a ResultView>,
}

/// A writer that remembers the last byte written through it.
struct LastByte<W: Write>(W, Option<u8>);

impl<W: Write> Write for LastByte<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        if n > 0 {
            self.1 = Some(buf[n - 1]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
