//! Resident memory per queued task in the sled-backed daemon, measured in
//! child processes of the benchmark (so that nothing the other sections
//! allocated hides or adds to it): one submits the tasks, one reopens the
//! data directory as a restarted daemon does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wpool::store::{SledOptions, SledStore};
use wpool::{Pool, PoolConfig, TaskSpec};
use wpool_test_artifacts as programs;

use crate::{Row, Scale};

/// The argument that makes the benchmark a child of this section.
pub(crate) const CHILD: &str = "--queued-memory-child";

/// sled's page cache, as the daemon configures it by default: the goal is
/// counted beyond it.
const SLED_CACHE: u64 = 64 << 20;

pub(crate) fn section(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let queued = scale.n(50_000, 1_000_000);
    let data = crate::rows::tempfile_dir("queued-memory");
    let submitted = child(&data, "submit", queued, cores);
    // The restarted daemon's baseline: the same pool over an empty store.
    let reopened = submitted
        .as_ref()
        .ok()
        .map(|&(idle, _)| child(&data, "reopen", queued, cores).map(|(_, full)| (idle, full)));
    let _ = std::fs::remove_dir_all(&data);
    let submitted = submitted?;
    let reopened = reopened.expect("measured after a submission")?;
    let per_task = |(idle, full): (f64, f64)| (full - idle) * 1024.0 / queued as f64;
    let beyond_cache = |(idle, full): (f64, f64)| {
        ((full - idle) * 1024.0 - SLED_CACHE as f64).max(0.0) / queued as f64
    };
    // What one such task's record takes, serialized: the information itself.
    let record = serde_json::to_vec(&serde_json::json!({
        "module": "0".repeat(64),
        "input": "{\"n\":999999}",
        "state": "scheduled",
        "run_at": 0u64,
        "seq": 0u64,
    }))?
    .len() as f64;
    let note = |(idle, full): (f64, f64)| {
        format!(
            "{queued} tasks; RSS {:.0} → {:.0} MiB, {:.0} B/task in all; goal ≤ 1,024 B beyond \
             sled's {} MiB cache",
            idle / 1024.0,
            full / 1024.0,
            per_task((idle, full)),
            SLED_CACHE >> 20
        )
    };
    Ok(vec![
        Row::new(
            "resident per queued task, sled daemon that submitted them",
            "B",
            beyond_cache(submitted),
            "the task's fields, serialized (JSON)",
            record,
            &note(submitted),
        ),
        Row::new(
            "resident per queued task, sled daemon reopened",
            "B",
            beyond_cache(reopened),
            "the task's fields, serialized (JSON)",
            record,
            &note(reopened),
        ),
    ])
}

/// Runs a child doing `what`; its resident memory (KiB) before and after.
fn child(
    data: &Path,
    what: &str,
    queued: usize,
    cores: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let output = Command::new(std::env::current_exe()?)
        .arg(CHILD)
        .arg(data)
        .arg(what)
        .arg(queued.to_string())
        .arg(cores.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the child measuring queued memory ({what}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(idle)), Some(Ok(full))) => Ok((idle, full)),
        _ => Err(format!("the child measuring queued memory printed {text:?}").into()),
    }
}

/// In the child: prints the resident KiB before and after.
pub(crate) fn run_child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [data, what, queued, cores] = args else {
        return Err(format!("{CHILD} DIR submit|reopen COUNT CORES").into());
    };
    let queued: usize = queued.parse()?;
    let cores: usize = cores.parse()?;
    let before = crate::rows::rss_kib();
    let mut options = SledOptions::new();
    options.cache_capacity(SLED_CACHE);
    let store = SledStore::open(data, &options)?;
    let mut config = PoolConfig::new();
    config.workers(cores).max_queued(queued + 1);
    let pool = Pool::with_store(config, std::sync::Arc::new(store))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let full = match what.as_str() {
        "submit" => {
            let module = pool
                .executor()
                .handle()
                .block_on(pool.register(&crate::rows::read(programs::P1_ECHO)))?;
            std::thread::sleep(Duration::from_millis(200));
            let idle = crate::rows::rss_kib();
            let submitted: wpool::Result<()> = runtime.block_on(async {
                let mut n = 0;
                while n < queued {
                    let batch = (n..queued.min(n + 10_000)).map(|i| {
                        TaskSpec::new(module, format!("{{\"n\":{i}}}").into_bytes())
                            .delay(Duration::from_secs(3600))
                    });
                    for handle in pool.submit_many(batch).await? {
                        handle?;
                    }
                    n = queued.min(n + 10_000);
                }
                Ok(())
            });
            submitted?;
            std::thread::sleep(Duration::from_millis(200));
            (idle, crate::rows::rss_kib())
        }
        _ => {
            // A restarted daemon: everything it holds came from the store.
            let counts = runtime.block_on(pool.stats())?;
            let waiting = counts.counts.get(wpool::TaskState::Scheduled);
            if waiting != queued as u64 {
                return Err(format!("reopened with {waiting} waiting tasks, not {queued}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
            (before, crate::rows::rss_kib())
        }
    };
    println!("{} {}", full.0, full.1);
    // Stop, not close: closing would wait for the delayed tasks to run.
    runtime.block_on(pool.stop())?;
    Ok(())
}
