//! wpool's figures next to their baselines, measured in one run on one
//! machine. Prints one table and writes the same as JSON
//! (`target/bench/results.json`).
//!
//! ```sh
//! cargo run --release -p wpool-bench            # the full run the README quotes
//! cargo run --release -p wpool-bench -- --quick # under a minute; CI runs it
//! cargo run --release -p wpool-bench -- --only postgres_hosts,postgres_wake
//! ```
//!
//! The PostgreSQL rows use the server named by `WPOOL_BENCH_POSTGRES` (or
//! `WPOOL_TEST_POSTGRES`), creating a database for each measurement;
//! without one they start a throwaway cluster (`scripts/pg-cluster.sh`)
//! and stop it at the end.

/// The `wpool` binary's allocator, so that the figures are the daemon's
/// (the raw loop and the other baselines run on it too).
#[global_allocator]
static ALLOCATOR: wpool::alloc::Allocator = wpool::alloc::Allocator;

mod cpu;
mod durable;
mod http;
mod overhead;
mod postgres;
mod queued;
mod rows;
mod threads;

use std::time::Duration;

use serde::Serialize;

/// One line of the table: wpool's figure, the baseline's, their ratio.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    unit: String,
    wpool: f64,
    baseline_name: String,
    baseline: f64,
    /// wpool / baseline.
    ratio: f64,
    note: String,
}

impl Row {
    fn new(
        name: &str,
        unit: &str,
        wpool: f64,
        baseline_name: &str,
        baseline: f64,
        note: &str,
    ) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            wpool,
            baseline_name: baseline_name.into(),
            baseline,
            ratio: if baseline == 0.0 {
                f64::NAN
            } else {
                wpool / baseline
            },
            note: note.into(),
        }
    }
}

/// How much work each row does.
#[derive(Clone, Copy, Debug)]
struct Scale {
    quick: bool,
}

impl Scale {
    fn n(&self, quick: usize, full: usize) -> usize {
        if self.quick { quick } else { full }
    }

    fn time(&self, quick: Duration, full: Duration) -> Duration {
        if self.quick { quick } else { full }
    }
}

fn main() {
    wpool::alloc::tune_system_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(queued::CHILD) {
        if let Err(e) = queued::run_child(&args[1..]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> =
        args.iter()
            .position(|a| a == "--only")
            .map(|at| match args.get(at + 1) {
                Some(names) => names.split(',').map(str::to_string).collect(),
                None => fail("--only takes section names, comma-separated"),
            });
    if let Some(only) = &only {
        for name in only {
            if !rows::ALL.iter().any(|(known, _)| known == name) {
                let known: Vec<&str> = rows::ALL.iter().map(|(known, _)| *known).collect();
                fail(&format!(
                    "no section `{name}`; the sections: {}",
                    known.join(", ")
                ));
            }
        }
    }
    let scale = Scale { quick };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wpool benchmark ({}), {} cores, {}",
        if quick { "quick" } else { "full" },
        cores,
        std::env::consts::ARCH
    );
    let mut rows = Vec::new();
    for (name, section) in rows::ALL {
        if only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == name))
        {
            continue;
        }
        let started = std::time::Instant::now();
        // A panic ends the run too, but not before a PostgreSQL cluster
        // this run started is stopped.
        match std::panic::catch_unwind(|| section(scale, cores)) {
            Ok(Ok(new)) => {
                for row in &new {
                    print_row(row);
                }
                rows.extend(new);
            }
            Ok(Err(e)) => fail(&format!("the section {name} failed: {e}")),
            Err(_) => fail(&format!("the section {name} panicked")),
        }
        eprintln!("  ({name} took {:.1} s)", started.elapsed().as_secs_f64());
    }
    postgres::stop();
    let missing: Vec<&str> = rows
        .iter()
        .filter(|r| !(r.wpool.is_finite() && r.baseline.is_finite()))
        .map(|r| r.name.as_str())
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let json = serde_json::json!({
        "quick": quick,
        "cores": cores,
        "rows": rows,
    });
    let path = dir.join(match (quick, only.is_some()) {
        (true, _) => "results-quick.json",
        (false, true) => "results-only.json",
        (false, false) => "results.json",
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).expect("write results");
    println!("\nwritten to {}", path.display());
    if !missing.is_empty() {
        eprintln!("wpool-bench: rows without a number: {missing:?}");
        std::process::exit(1);
    }
}

/// Stops what the run started, says why, and exits 1.
fn fail(message: &str) -> ! {
    postgres::stop();
    eprintln!("wpool-bench: {message}");
    std::process::exit(1);
}

fn print_row(row: &Row) {
    println!(
        "| {:<46} | {:>12.1} {:<7} | {:<30} {:>12.1} | {:>6.2}× | {}",
        row.name, row.wpool, row.unit, row.baseline_name, row.baseline, row.ratio, row.note
    );
}
