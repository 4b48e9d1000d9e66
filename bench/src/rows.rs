//! The benchmark's sections; each returns its rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wpool::backend::{Backend, EmbeddedBackend};
use wpool::store::{MemoryStore, SledOptions, SledStore, Store as _};
use wpool::{
    EngineConfig, Executor, Job, LimitOverrides, Limits, ModuleHash, Pool, PoolConfig, TaskId,
    TaskRecord, TaskSpec, TaskState,
};
use wpool_test_artifacts as programs;

pub(crate) use crate::overhead::{pool_rate, register};
use crate::{Row, Scale};

type Section = fn(Scale, usize) -> Result<Vec<Row>, Box<dyn std::error::Error>>;

/// Every section, by the name `--only` takes. Memory first: its "before"
/// figure is then the bare process.
pub(crate) const ALL: &[(&str, Section)] = &[
    ("memory", memory),
    ("queued_memory", crate::queued::section),
    ("overhead", crate::overhead::section),
    ("durable_submit", crate::durable::durable_submit),
    ("durable_end_to_end", crate::durable::durable_end_to_end),
    ("sled_flush", crate::durable::sled_flush),
    ("lease_renewal", lease_renewal),
    ("cpu_bound", crate::cpu::section),
    ("spawn_per_task", spawn_per_task),
    ("kill_latency", kill_latency),
    ("cold_start", cold_start),
    ("recovery", recovery),
    ("http_submit", crate::http::section),
    ("postgres_hosts", crate::postgres::hosts),
    ("postgres_wake", crate::postgres::wake),
];

pub(crate) fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn engine_config(workers: usize, fuel: bool) -> EngineConfig {
    let mut config = EngineConfig::new();
    config.workers(workers).fuel_metering(fuel);
    config
}

fn spawn_per_task(scale: Scale, _cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let wasm_path = programs::P1_TRIVIAL;
    let exe = std::env::current_exe()?;
    let bin = exe.parent().unwrap().join("wpool");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it first (cargo build -p wpool --bin wpool, with the same profile)",
            bin.display()
        )
        .into());
    }
    let count = scale.n(20, 100);
    let started = Instant::now();
    for _ in 0..count {
        let out = std::process::Command::new(&bin)
            .args(["run", wasm_path])
            .output()?;
        assert!(out.status.success());
    }
    let spawned = count as f64 / started.elapsed().as_secs_f64();
    let mut config = PoolConfig::new();
    config.workers(1);
    let pool = Pool::new(config)?;
    let pooled = pool_rate(&pool, &read(wasm_path), scale.n(2_000, 20_000), b"");
    Ok(vec![Row::new(
        "trivial task, Pool, 1 worker",
        "tasks/s",
        pooled,
        "`wpool run` process per task",
        spawned,
        "why a pool exists (wasmtime CLI not installed here)",
    )])
}

/// Of the rounds of `rates`, the one whose ratio to `baselines` of the
/// same round is the median: its rate, its baseline's, and a note with
/// every round's ratio. Both figures of a row thus come from the same
/// minutes; a median of each list on its own could pair a baseline
/// measured while the machine ran fast with a subject measured while it
/// ran slow.
pub(crate) fn median_round(rates: &[f64], baselines: &[f64]) -> (f64, f64, String) {
    let median = median_of((0..rates.len()).collect(), rates, baselines);
    let ratios: Vec<String> = (0..rates.len())
        .map(|i| format!("{:.2}", rates[i] / baselines[i]))
        .collect();
    let rounds = if rates.len() == 1 {
        "1 round".to_string()
    } else {
        format!(
            "the round of median ratio of {} interleaved, whose ratios were {}× \
             (rates {})",
            rates.len(),
            ratios.join(", "),
            whole_numbers(rates)
        )
    };
    (rates[median], baselines[median], rounds)
}

/// Of the rounds `indices`, the one whose ratio of `rates` to
/// `baselines` is the median.
fn median_of(mut indices: Vec<usize>, rates: &[f64], baselines: &[f64]) -> usize {
    indices.sort_by(|&a, &b| (rates[a] / baselines[a]).total_cmp(&(rates[b] / baselines[b])));
    indices[indices.len() / 2]
}

/// `values` rounded to whole numbers, separated by commas.
fn whole_numbers(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How far apart the raw loop's two measurements around a subject may be,
/// relative to the larger, for the round to count as steady in
/// [`median_bracketed`].
const STEADY: f64 = 0.10;

/// Like [`median_round`], for rounds whose baseline was measured just
/// before (`before`) and just after (`after`) the subject: each round's
/// baseline is the mean of the two, and the round is *steady* when they
/// agree within [`STEADY`]. The median is taken over the steady rounds
/// when they are a majority, else over all of them (and the note says
/// so): a round in which the machine changed speed sets the subject
/// against a baseline of another moment, and its ratio says nothing
/// about either. The note marks each unsteady round's ratio with `*`.
pub(crate) fn median_bracketed(rates: &[f64], before: &[f64], after: &[f64]) -> (f64, f64, String) {
    assert!(
        rates.len() == before.len() && rates.len() == after.len() && !rates.is_empty(),
        "one rate and two baselines a round"
    );
    let baselines: Vec<f64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| (b + a) / 2.0)
        .collect();
    let steady: Vec<bool> = before
        .iter()
        .zip(after)
        .map(|(b, a)| (b - a).abs() <= STEADY * b.max(*a))
        .collect();
    let steady_count = steady.iter().filter(|s| **s).count();
    let majority = steady_count * 2 > rates.len();
    let counted = (0..rates.len())
        .filter(|&i| steady[i] || !majority)
        .collect();
    let median = median_of(counted, rates, &baselines);
    let ratios: Vec<String> = (0..rates.len())
        .map(|i| {
            let mark = if steady[i] { "" } else { "*" };
            format!("{:.2}{mark}", rates[i] / baselines[i])
        })
        .collect();
    let rounds = if rates.len() == 1 {
        "1 round".to_string()
    } else if majority {
        format!(
            "the round of median ratio of the {steady_count} steady of {} interleaved",
            rates.len()
        )
    } else {
        format!(
            "the round of median ratio of all {} interleaved (only {steady_count} steady)",
            rates.len()
        )
    };
    let legend = if steady_count < rates.len() {
        "* unsteady; "
    } else {
        ""
    };
    let note = format!(
        "{rounds}, the raw loop measured just before and after the subject (steady: the \
         two within {:.0}%); ratios {}× ({legend}rates {}; raw loop {})",
        STEADY * 100.0,
        ratios.join(", "),
        whole_numbers(rates),
        before
            .iter()
            .zip(after)
            .map(|(b, a)| format!("{b:.0}/{a:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (rates[median], baselines[median], note)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn kill_latency(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let timeout = Duration::from_millis(20);
    let count = scale.n(30, 200);
    let executor = Executor::new(&engine_config(cores, true))?;
    let limits = executor.limits(&LimitOverrides {
        timeout: Some(timeout),
        ..Default::default()
    })?;

    // Baseline: how late a plain timer of the same length fires here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut timer: Vec<f64> = (0..count)
        .map(|_| {
            runtime.block_on(async {
                let started = Instant::now();
                tokio::time::sleep(timeout).await;
                (started.elapsed().as_secs_f64() - timeout.as_secs_f64()) * 1e3
            })
        })
        .collect();
    timer.sort_by(f64::total_cmp);

    let mut rows = Vec::new();
    for (program, input, what) in [
        (programs::P1_SPIN, &b""[..], "spinning in wasm"),
        (programs::P1_SLEEP, &b""[..], "blocked in a host call"),
    ] {
        let module = executor.register(&read(program))?;
        let mut late: Vec<f64> = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(cores) {
            let runs: Vec<_> = chunk
                .iter()
                .map(|_| {
                    executor.spawn(Job {
                        module: module.clone(),
                        input: input.to_vec(),
                        limits: limits.clone(),
                        on_progress: None,
                        env: Vec::new(),
                    })
                })
                .collect();
            for run in runs {
                let report = run.wait_blocking();
                assert_eq!(report.outcome, wpool::Outcome::Timeout);
                late.push((report.duration.as_secs_f64() - timeout.as_secs_f64()) * 1e3);
            }
        }
        late.sort_by(f64::total_cmp);
        for (label, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            rows.push(Row::new(
                &format!("kill latency, {what}, {label}"),
                "ms",
                percentile(&late, p),
                "tokio timer overshoot",
                percentile(&timer, p),
                "deadline → slot free; lower is better",
            ));
        }
    }
    Ok(rows)
}

pub(crate) fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn memory(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let before = rss_kib();
    let mut config = PoolConfig::new();
    config.workers(cores);
    let pool = Pool::new(config)?;
    let echo = register(&pool, &read(programs::P1_ECHO))?;
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib();
    let queued = scale.n(20_000, 100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for i in 0..queued {
            pool.submit(
                TaskSpec::new(echo, format!("{{\"n\":{i}}}").into_bytes())
                    .delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        }
    });
    let full = rss_kib();
    let per_100k = (full - idle) * 100_000.0 / queued as f64;
    // What the same records take serialized: the information itself.
    let record = serde_json::to_vec(&queued_record(echo, 1))?.len() as f64;
    Ok(vec![
        Row::new(
            &format!("resident memory, pool with {cores} idle workers"),
            "MiB",
            (idle - before) / 1024.0,
            "process before the pool",
            before / 1024.0,
            "pooling allocator reserves address space, not memory",
        ),
        Row::new(
            "resident memory per 100,000 queued tasks",
            "MiB",
            per_100k / 1024.0,
            "their records, serialized (JSON)",
            record * 100_000.0 / (1 << 20) as f64,
            "memory store: index + store copy",
        ),
    ])
}

/// `concurrency` concurrent submitters share `count` tasks; each submits
/// one, and with `wait` waits for its result before the next. Tasks per
/// second.
pub(crate) fn submitters(
    pool: &Pool,
    hash: ModuleHash,
    count: usize,
    concurrency: usize,
    wait: bool,
) -> f64 {
    submitters_of(pool, hash, &[], count, concurrency, wait)
}

/// [`submitters`], each task given `input`.
pub(crate) fn submitters_of(
    pool: &Pool,
    hash: ModuleHash,
    input: &[u8],
    count: usize,
    concurrency: usize,
    wait: bool,
) -> f64 {
    let input: Arc<[u8]> = input.into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let per = count / concurrency;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let pool = pool.clone();
                let input = input.clone();
                tokio::spawn(async move {
                    for _ in 0..per {
                        let task = pool
                            .submit(TaskSpec::new(hash, input.to_vec()))
                            .await
                            .unwrap();
                        if wait {
                            let result = task.wait().await.unwrap();
                            assert!(result.is_success(), "{:?}", result.outcome);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (per * concurrency) as f64 / started.elapsed().as_secs_f64()
    })
}

/// What a heartbeat costs: renewing the leases of running tasks, per
/// lease, next to claiming and completing a task (the work a lease
/// guards).
fn lease_renewal(scale: Scale, _cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let tasks = scale.n(1_000, 10_000);
    let rounds = scale.n(20, 100);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let wasm = read(programs::P1_TRIVIAL);
    let hash = ModuleHash::of(&wasm);
    let (renew_us, claim_us) = runtime.block_on(async {
        let backend = EmbeddedBackend::open(Arc::new(MemoryStore::new()))?;
        backend.put_module(&hash, &wasm).await?;
        let ttl = Duration::from_secs(30);
        let records: Vec<TaskRecord> = (0..tasks as u64).map(|n| queued_record(hash, n)).collect();
        backend.enqueue(records).await?;
        let started = Instant::now();
        let claim = backend.claim(tasks, ttl).await?;
        let claim_us = started.elapsed().as_secs_f64() * 1e6 / tasks as f64;
        let leases: Vec<_> = claim.claimed.iter().map(|(_, lease)| *lease).collect();
        let started = Instant::now();
        for _ in 0..rounds {
            let states = backend.renew(&leases, ttl).await?;
            assert_eq!(states.len(), leases.len());
        }
        let renew_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * tasks) as f64;
        Ok::<_, wpool::Error>((renew_us, claim_us))
    })?;
    Ok(vec![Row::new(
        "renew a lease (heartbeat), embedded backend",
        "µs/lease",
        renew_us,
        "claim a task under a lease",
        claim_us,
        "one renewal per running task every lease_ttl/3 (10 s by default)",
    )])
}

pub(crate) fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wpool-bench-{what}-{}-{}",
        std::process::id(),
        TaskId::new()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn queued_record(module: ModuleHash, seq: u64) -> TaskRecord {
    let input = format!("{{\"n\":{seq}}}").into_bytes();
    let mut record = TaskRecord::new(
        TaskSpec::new(module, input),
        module,
        Limits::default(),
        wpool::now_millis(),
    );
    record.seq = seq;
    record
}

fn recovery(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let count = scale.n(10_000, 100_000);
    let dir = tempfile_dir("recovery");
    let wasm = read(programs::P1_ECHO);
    let hash = ModuleHash::of(&wasm);
    let first = {
        let store = SledStore::open(&dir, &SledOptions::new())?;
        store.put_module(&hash, &wasm)?;
        let mut first = None;
        for _ in 0..count {
            let record = queued_record(hash, store.next_seq()?);
            first.get_or_insert(record.id);
            store.insert(std::slice::from_ref(&record))?;
        }
        store.flush_blocking()?;
        first.unwrap()
    };

    // The limit: open the same database and read every record, no decoding.
    let raw = {
        let started = Instant::now();
        let db = sled::open(dir.join("sled"))?;
        let mut n = 0usize;
        for name in db.tree_names() {
            for entry in db.open_tree(name)?.iter() {
                std::hint::black_box(entry?);
                n += 1;
            }
        }
        assert!(n >= count);
        started.elapsed().as_secs_f64() * 1e3
    };

    let started = Instant::now();
    let mut config = PoolConfig::new();
    config.workers(cores);
    let pool = Pool::open(config, &dir)?;
    loop {
        let state = pool.executor().handle().block_on(pool.status(first))?.state;
        if state != TaskState::Queued {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let reopen = started.elapsed().as_secs_f64() * 1e3;
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![Row::new(
        &format!("reopen a data dir with {count} queued tasks → first start"),
        "ms",
        reopen,
        "sled open + read every record",
        raw,
        "lower is better; includes compiling the module",
    )])
}

fn cold_start(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    // The full run uses the Python component (tens of MB); the quick one a
    // Rust component, to stay within a minute.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (name, wasm, input) = if scale.quick {
        (
            "Rust wordfreq component",
            read(programs::EXAMPLE_P2_WORDFREQ),
            br#"{"text": "a b a"}"#.to_vec(),
        )
    } else {
        let path = root.join("target/examples/python/wordfreq.wasm");
        if !path.exists() {
            let status = std::process::Command::new("bash")
                .arg(root.join("examples/python/build.sh"))
                .status()?;
            if !status.success() {
                return Err("examples/python/build.sh failed".into());
            }
        }
        (
            "Python wordfreq component",
            std::fs::read(&path)?,
            br#"{"text": "a b a"}"#.to_vec(),
        )
    };
    let size_mib = wasm.len() as f64 / (1 << 20) as f64;
    let dir = tempfile_dir("artifacts");
    let hash = ModuleHash::of(&wasm);
    #[derive(Clone, Copy, PartialEq)]
    enum Cache {
        /// No artifact directory: compiled.
        None,
        /// From the disk cache, by `Executor::register` (hashes the bytes).
        Disk,
        /// From the disk cache, by `Executor::register_known` (a pool
        /// loading a module from its store under its hash).
        DiskKnown,
    }
    /// One fresh executor's first task: register (with the artifact
    /// cache's check and load times), its first run, and the run of a
    /// second task of the module already registered (what every task after
    /// the first costs: a pool registers a module once).
    struct First {
        register: f64,
        check: f64,
        load: f64,
        first: f64,
        next: f64,
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let first_task = |cache: Cache| -> Result<First, Box<dyn std::error::Error>> {
        let mut config = engine_config(cores, true);
        if cache != Cache::None {
            config.artifact_dir(&dir);
        }
        let executor = Executor::new(&config)?;
        let limits = executor.limits(&LimitOverrides {
            memory: Some(512 << 20),
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })?;
        let started = Instant::now();
        let module = match cache {
            Cache::DiskKnown => executor.register_known(&hash, &wasm)?,
            _ => executor.register(&wasm)?,
        };
        let register = ms(started.elapsed());
        let stats = executor.artifact_stats().unwrap_or_default();
        let run = || -> f64 {
            let started = Instant::now();
            let report = executor
                .spawn(Job {
                    module: module.clone(),
                    input: input.clone(),
                    limits: limits.clone(),
                    on_progress: None,
                    env: Vec::new(),
                })
                .wait_blocking();
            assert!(
                report.outcome.is_success(),
                "{:?}: {}",
                report.outcome,
                report.log
            );
            ms(started.elapsed())
        };
        let first = run();
        let next = run();
        Ok(First {
            register,
            check: ms(stats.check_time),
            load: ms(stats.load_time),
            first,
            next,
        })
    };
    let uncached = first_task(Cache::None)?;
    let _ = first_task(Cache::Disk)?; // fills the disk cache
    // A fresh executor each time, the file in the page cache (as after a
    // restart of the process, not of the machine): the median of 5.
    let median = |cache: Cache| -> Result<First, Box<dyn std::error::Error>> {
        let mut runs = (0..5)
            .map(|_| first_task(cache))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by(|a, b| (a.register + a.first).total_cmp(&(b.register + b.first)));
        Ok(runs.swap_remove(2))
    };
    let disk = median(Cache::Disk)?;
    let known = median(Cache::DiskKnown)?;
    // The hash on its own, as `register` computes it (median of 5).
    let mut hashing: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(ModuleHash::of(std::hint::black_box(&wasm)));
            ms(started.elapsed())
        })
        .collect();
    hashing.sort_by(f64::total_cmp);
    let hash_ms = hashing[2];
    let _ = std::fs::remove_dir_all(&dir);
    let compile_total = uncached.register + uncached.first;
    let breakdown = |f: &First, hash_ms: f64| {
        format!(
            "register {:.1} ms (hash {hash_ms:.1} + open and check {:.1} + wasmtime load {:.1} \
             + prepare {:.1}) + first run {:.1} ms; next run {:.1} ms",
            f.register,
            f.check,
            f.load,
            (f.register - hash_ms - f.check - f.load).max(0.0),
            f.first,
            f.next
        )
    };
    let note = format!(
        "{}; uncached: compile {:.0} ms + run {:.1} ms",
        breakdown(&disk, hash_ms),
        uncached.register,
        uncached.first
    );
    Ok(vec![
        Row::new(
            &format!("first task, {name} ({size_mib:.1} MiB), disk cache"),
            "ms",
            disk.register + disk.first,
            "first task, no cache (compile)",
            compile_total,
            &note,
        ),
        Row::new(
            &format!("first task, {name}, disk cache, hash known (pool store)"),
            "ms",
            known.register + known.first,
            "first task, no cache (compile)",
            compile_total,
            &breakdown(&known, 0.0),
        ),
        Row::new(
            &format!("next task, {name}, in-memory cache"),
            "ms",
            uncached.next,
            "first task, no cache (compile)",
            compile_total,
            "instantiate + run, the module registered",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::median_bracketed;

    #[test]
    fn a_round_whose_baseline_moved_is_left_out_of_the_median() {
        // Round 1 is unsteady (the raw loop went from 200 to 400 around
        // the subject): with it, the median of the five would be 0.82.
        let rates = [80.0, 150.0, 84.0, 86.0, 82.0];
        let before = [100.0, 200.0, 100.0, 100.0, 100.0];
        let after = [100.0, 400.0, 100.0, 100.0, 100.0];
        let (rate, baseline, note) = median_bracketed(&rates, &before, &after);
        assert_eq!((rate, baseline), (84.0, 100.0), "{note}");
        assert!(note.contains("of the 4 steady"), "{note}");
        assert!(note.contains("0.80, 0.50*, 0.84"), "{note}");
        assert!(note.contains("200/400"), "{note}");
    }

    #[test]
    fn with_too_few_steady_rounds_every_round_counts() {
        let rates = [80.0, 90.0, 100.0];
        let before = [100.0, 100.0, 100.0];
        let after = [100.0, 150.0, 150.0];
        let (rate, baseline, note) = median_bracketed(&rates, &before, &after);
        // Ratios 0.80, 0.72, 0.80: the median of all three is a 0.80.
        assert_eq!(rate / baseline, 0.8, "{note}");
        assert!(
            note.contains("of all 3 interleaved (only 1 steady)"),
            "{note}"
        );
    }
}
