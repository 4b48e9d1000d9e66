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
    /// `true` when the line's idempotency key named an existing task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) existing: Option<bool>,
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

/// A progress bar for `len` tasks of a batch, named `what`: the rate in
/// whole tasks per second and an ETA from the recent rate (see
/// [`RecentRate`]), not from the first burst.
pub(crate) fn batch_bar(len: usize, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressState, ProgressStyle};
    use std::sync::{Arc, Mutex};
    let bar = ProgressBar::new(len as u64);
    let recent = Arc::new(Mutex::new(RecentRate::default()));
    let rate = recent.clone();
    let style = ProgressStyle::with_template(BATCH_TEMPLATE)
        .map(|style| {
            style
                .with_key(
                    "tasks_per_sec",
                    move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let mut rate = rate.lock().unwrap_or_else(|e| e.into_inner());
                        rate.record(state.elapsed(), state.pos());
                        let per_sec = rate.per_sec().unwrap_or_else(|| state.per_sec());
                        let _ = w.write_str(&format_rate(per_sec));
                    },
                )
                .with_key(
                    "recent_eta",
                    move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                        recent.record(state.elapsed(), state.pos());
                        let eta = recent.eta(state.len().unwrap_or(0));
                        let _ = w.write_str(&format_eta(eta));
                    },
                )
                .progress_chars("=> ")
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// The line of a batch's bar; `tasks_per_sec` and `recent_eta` are ours
/// (see [`batch_bar`]), not indicatif's `{per_sec}` and `{eta}`.
const BATCH_TEMPLATE: &str = "{prefix:>10} [{bar:40}] {pos}/{len} {tasks_per_sec} {recent_eta}";

/// A rate as the bars show it: whole tasks per second (`2082/s`, not
/// `2,082.3542/s`).
pub(crate) fn format_rate(per_sec: f64) -> String {
    if per_sec.is_finite() && per_sec >= 0.0 {
        format!("{per_sec:.0}/s")
    } else {
        "0/s".to_string()
    }
}

/// An ETA as the bars show it: `eta 1m 5s`, or `eta -` while none is
/// meaningful yet.
pub(crate) fn format_eta(eta: Option<Duration>) -> String {
    match eta {
        Some(eta) => {
            let secs = eta.as_secs_f64().ceil() as u64;
            match (secs / 3600, secs / 60 % 60, secs % 60) {
                (0, 0, s) => format!("eta {s}s"),
                (0, m, s) => format!("eta {m}m{s:02}s"),
                (h, m, _) => format!("eta {h}h{m:02}m"),
            }
        }
        None => "eta -".to_string(),
    }
}

/// The rate of a batch over its last [`RecentRate::WINDOW`], from the
/// bar's position sampled as it is drawn. Its ETA is shown only once
/// meaningful: after [`RecentRate::SETTLE`] of work, over a window of at
/// least [`RecentRate::MIN_SPAN`]; so that a first burst (a chunk
/// answered at once, then a wait for room) does not promise the rest in
/// seconds.
#[derive(Debug, Default)]
pub(crate) struct RecentRate {
    /// `(elapsed, position)`, oldest first, over the last window.
    samples: std::collections::VecDeque<(Duration, u64)>,
}

impl RecentRate {
    /// How far back the rate looks.
    pub(crate) const WINDOW: Duration = Duration::from_secs(10);
    /// No ETA before this much time has passed.
    pub(crate) const SETTLE: Duration = Duration::from_secs(3);
    /// No ETA from samples spanning less than this.
    pub(crate) const MIN_SPAN: Duration = Duration::from_secs(2);

    /// Notes the position `pos` at `elapsed` since the start.
    pub(crate) fn record(&mut self, elapsed: Duration, pos: u64) {
        if self
            .samples
            .back()
            .is_some_and(|&(t, p)| t == elapsed && p == pos)
        {
            return;
        }
        self.samples.push_back((elapsed, pos));
        // Keep one sample at or before the window's start, so the window
        // is spanned whole.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| elapsed.saturating_sub(t) >= Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Tasks per second over the window, if it spans any time.
    pub(crate) fn per_sec(&self) -> Option<f64> {
        let (&(t0, p0), &(t1, p1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0).as_secs_f64();
        (span > 0.0).then(|| p1.saturating_sub(p0) as f64 / span)
    }

    /// The time left for `len` tasks at the recent rate, once meaningful.
    pub(crate) fn eta(&self, len: u64) -> Option<Duration> {
        let (&(t0, _), &(t1, pos)) = (self.samples.front()?, self.samples.back()?);
        if pos >= len {
            return Some(Duration::ZERO);
        }
        if t1 < Self::SETTLE || t1.saturating_sub(t0) < Self::MIN_SPAN {
            return None;
        }
        let rate = self.per_sec().filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(
            ((len - pos) as f64 / rate).min(1e9),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_eta_waits_until_meaningful_and_follows_the_recent_rate() {
        let mut rate = RecentRate::default();
        // A first burst: 1000 of 10,000 in a tenth of a second.
        rate.record(secs(0.0), 0);
        rate.record(secs(0.1), 1000);
        assert_eq!(rate.eta(10_000), None, "not from the first burst");
        assert_eq!(format_eta(rate.eta(10_000)), "eta -");
        // Then 100 per second for 20 s: the burst leaves the window.
        for i in 1..=200u32 {
            rate.record(secs(0.1 + f64::from(i) * 0.1), 1000 + u64::from(i) * 10);
        }
        let per_sec = rate.per_sec().unwrap();
        assert!((per_sec - 100.0).abs() < 1.0, "{per_sec}");
        let eta = rate.eta(10_000).unwrap();
        // 10,000 - 3,000 left at 100/s.
        assert!((eta.as_secs_f64() - 70.0).abs() < 1.0, "{eta:?}");
        assert_eq!(format_eta(Some(eta)), "eta 1m10s");
    }

    #[test]
    fn no_eta_before_the_settling_time_and_zero_when_done() {
        let mut rate = RecentRate::default();
        rate.record(secs(0.0), 0);
        rate.record(secs(2.5), 50);
        assert_eq!(rate.eta(100), None, "before 3 s");
        rate.record(secs(3.0), 60);
        assert!(rate.eta(100).is_some());
        rate.record(secs(3.5), 100);
        assert_eq!(rate.eta(100), Some(Duration::ZERO));
    }

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_shows_a_whole_rate_and_no_eta_from_the_first_burst() {
        assert!(indicatif::ProgressStyle::with_template(BATCH_TEMPLATE).is_ok());
        let screen = Screen::default();
        let bar = batch_bar(10_000, "submitted");
        bar.set_draw_target(indicatif::ProgressDrawTarget::term_like(Box::new(
            screen.clone(),
        )));
        bar.inc(500);
        bar.tick();
        let drawn = screen.0.lock().unwrap().clone();
        assert!(drawn.contains(" submitted ["), "{drawn}");
        assert!(drawn.contains("500/10000 "), "{drawn}");
        assert!(drawn.contains("eta -"), "no ETA yet: {drawn}");
        let rate = drawn
            .split_whitespace()
            .find(|w| w.ends_with("/s"))
            .unwrap_or_else(|| panic!("a rate: {drawn}"));
        assert!(
            rate.trim_end_matches("/s")
                .bytes()
                .all(|b| b.is_ascii_digit()),
            "whole tasks per second: {drawn}"
        );
    }

    #[test]
    fn rates_are_whole_tasks_per_second() {
        assert_eq!(format_rate(2082.3542), "2082/s");
        assert_eq!(format_rate(0.4), "0/s");
        assert_eq!(format_rate(f64::NAN), "0/s");
    }
}
