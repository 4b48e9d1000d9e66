//! wpool's figures next to their baselines, measured in one run on one
//! machine. Prints one table and writes the same as JSON
//! (`target/bench/results.json`).
//!
//! ```sh
//! cargo run --release -p wpool-bench            # the full run the README quotes
//! cargo run --release -p wpool-bench -- --quick # under a minute; CI runs it
//! ```

mod queued;
mod rows;

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
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(queued::CHILD) {
        if let Err(e) = queued::run_child(&args[2..]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = Scale { quick };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wpool benchmark ({}), {} cores, {}",
        if quick { "quick" } else { "full" },
        cores,
        std::env::consts::ARCH
    );
    let mut rows = Vec::new();
    for section in rows::ALL {
        let started = std::time::Instant::now();
        match section(scale, cores) {
            Ok(new) => {
                for row in &new {
                    print_row(row);
                }
                rows.extend(new);
            }
            Err(e) => {
                eprintln!("wpool-bench: a section failed: {e}");
                std::process::exit(1);
            }
        }
        eprintln!("  (section took {:.1} s)", started.elapsed().as_secs_f64());
    }
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
    let path = dir.join(if quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).expect("write results");
    println!("\nwritten to {}", path.display());
    if !missing.is_empty() {
        eprintln!("wpool-bench: rows without a number: {missing:?}");
        std::process::exit(1);
    }
}

fn print_row(row: &Row) {
    println!(
        "| {:<46} | {:>12.1} {:<7} | {:<30} {:>12.1} | {:>6.2}× | {}",
        row.name, row.wpool, row.unit, row.baseline_name, row.baseline, row.ratio, row.note
    );
}
