//! Prometheus metrics: counts per state, queue depth and worker use from
//! the pool's stats at scrape time; task durations, fuel and outcomes
//! collected from the pool's events as tasks finish.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::{EventKind, EventsError, Pool, Stats, TaskState};

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// What the collector accumulates.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Finished tasks per (state, outcome kind).
    /// Keyed by names, not owned strings: a finished task allocates nothing.
    outcomes: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// Cumulative bucket counts, one per [`BUCKETS`] bound.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    fuel: AtomicU64,
    lagged: AtomicU64,
}

impl Metrics {
    fn observe(
        &self,
        state: TaskState,
        outcome: &'static str,
        duration_us: u64,
        fuel: Option<u64>,
    ) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((state.as_str(), outcome))
            .or_insert(0) += 1;
        let secs = duration_us as f64 / 1e6;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(duration_us, Ordering::Relaxed);
        if let Some(fuel) = fuel {
            self.fuel.fetch_add(fuel, Ordering::Relaxed);
        }
    }
}

/// Follows the pool's events until `shutdown`, recording every finished
/// task. Does nothing outside a tokio runtime.
///
/// The collector runs on the pool's own threads, where the events of
/// runs are sent: on the server's threads, each start and end of a task
/// woke a server thread from another runtime, a context switch taken from
/// the connections.
pub(crate) fn spawn_collector(
    pool: &Pool,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut events = pool.subscribe();
    let runtime = pool.executor().handle().clone();
    let pool = pool.clone();
    runtime.spawn(async move {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = shutdown.cancelled() => return,
            };
            match event {
                Ok(event) => {
                    let finished = matches!(
                        event.kind,
                        EventKind::Succeeded
                            | EventKind::Failed { .. }
                            | EventKind::Cancelled
                            | EventKind::Expired
                    );
                    if !finished {
                        continue;
                    }
                    // The record, not the result: the output (possibly a
                    // file of the store's) is not needed here.
                    if let Ok(record) = pool.status(event.id).await
                        && record.state.is_final()
                    {
                        let outcome = record.outcome.as_ref().map_or("none", |o| o.kind());
                        metrics.observe(
                            record.state,
                            outcome,
                            record.attempts.iter().map(|a| a.duration_us).sum(),
                            record
                                .attempts
                                .iter()
                                .filter_map(|a| a.fuel_consumed)
                                .reduce(u64::saturating_add),
                        );
                    }
                }
                Err(EventsError::Lagged(n)) => {
                    metrics.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(_) => return,
            }
        }
    });
}

/// The `# HELP` and `# TYPE` lines of a metric.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text of `stats` and `metrics`.
pub(crate) fn render(stats: &Stats, metrics: &Metrics) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "wpool_tasks",
        "Tasks in the store, by state.",
        "gauge",
    );
    for state in TaskState::ALL {
        let _ = writeln!(
            out,
            "wpool_tasks{{state=\"{state}\"}} {}",
            stats.counts.get(state)
        );
    }
    let depth = stats.counts.get(TaskState::Queued) + stats.counts.get(TaskState::Scheduled);
    header(
        &mut out,
        "wpool_queue_depth",
        "Tasks waiting to run (queued and scheduled).",
        "gauge",
    );
    let _ = writeln!(out, "wpool_queue_depth {depth}");
    header(
        &mut out,
        "wpool_workers",
        "Workers allowed to take tasks.",
        "gauge",
    );
    let _ = writeln!(out, "wpool_workers {}", stats.workers);
    header(
        &mut out,
        "wpool_workers_busy",
        "Workers running a task now.",
        "gauge",
    );
    let _ = writeln!(out, "wpool_workers_busy {}", stats.busy);
    let utilisation = if stats.workers == 0 {
        0.0
    } else {
        stats.busy as f64 / stats.workers as f64
    };
    header(
        &mut out,
        "wpool_worker_utilisation",
        "Busy workers over workers, 0 to 1.",
        "gauge",
    );
    let _ = writeln!(out, "wpool_worker_utilisation {utilisation}");
    header(
        &mut out,
        "wpool_tasks_finished_total",
        "Tasks finished since the server started, by state and outcome.",
        "counter",
    );
    for ((state, outcome), n) in metrics
        .outcomes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "wpool_tasks_finished_total{{state=\"{state}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        &mut out,
        "wpool_task_duration_seconds",
        "Wall time of finished tasks, all attempts.",
        "histogram",
    );
    for (bound, bucket) in BUCKETS.iter().zip(&metrics.buckets) {
        let _ = writeln!(
            out,
            "wpool_task_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Ordering::Relaxed)
        );
    }
    let count = metrics.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "wpool_task_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "wpool_task_duration_seconds_sum {}",
        metrics.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "wpool_task_duration_seconds_count {count}");
    header(
        &mut out,
        "wpool_fuel_consumed_total",
        "Fuel consumed by finished tasks.",
        "counter",
    );
    let _ = writeln!(
        out,
        "wpool_fuel_consumed_total {}",
        metrics.fuel.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "wpool_tasks_per_second",
        "Tasks finished per second over the last 10 s.",
        "gauge",
    );
    let _ = writeln!(out, "wpool_tasks_per_second {}", stats.finished_per_sec);
    header(
        &mut out,
        "wpool_metrics_events_missed_total",
        "Events the metrics collector missed (it fell behind).",
        "counter",
    );
    let _ = writeln!(
        out,
        "wpool_metrics_events_missed_total {}",
        metrics.lagged.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "wpool_uptime_seconds",
        "Seconds since the server started.",
        "gauge",
    );
    let _ = writeln!(out, "wpool_uptime_seconds {}", stats.uptime_secs);
    out
}
