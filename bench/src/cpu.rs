//! The CPU-bound guest (`examples/rust/hash`, iterated SHA-256) through
//! the `Pool`, next to the same function compiled for the host twice: as
//! the host workspace builds it (sha2 picks the CPU's SHA instructions when
//! it has them, which wasm cannot use), and with sha2's portable code only
//! (`bench/native-hash`, built into its own target directory), the
//! comparable baseline: the same instructions a wasm build can express.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use wpool::{Pool, PoolConfig, TaskSpec};
use wpool_test_artifacts as programs;

use crate::rows::{engine_config, pool_rate, read, register};
use crate::{Row, Scale};

pub(crate) fn section(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let wasm = read(programs::EXAMPLE_P1_HASH);
    let rounds = scale.n(20_000, 200_000) as u64;
    let tasks = scale.n(cores * 2, cores * 8);
    let input = serde_json::to_vec(&serde_json::json!({ "data": "wpool", "rounds": rounds }))?;
    let expected = hex::encode(hash::sha256_rounds(b"wpool", rounds).expect("rounds > 0"));

    let portable_binary = build_portable()?;
    let pools = [(false, "epochs only"), (true, "epochs + fuel")]
        .into_iter()
        .map(|(fuel, name)| {
            let mut config = PoolConfig::new();
            config.engine(engine_config(cores, fuel));
            let pool = Pool::new(config)?;
            check_output(&pool, &wasm, &input, &expected)?;
            Ok((pool, name))
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    // Interleaved and repeated, the best of each kept: on a shared machine
    // a burst of other work then lowers one repetition, not one side.
    let mut native = 0f64;
    let mut portable = 0f64;
    let mut wasm_rates = vec![0f64; pools.len()];
    for _ in 0..scale.n(1, 3) {
        native = native.max(native_rate(rounds, tasks, cores));
        portable = portable.max(portable_rate(
            &portable_binary,
            rounds,
            tasks,
            cores,
            &expected,
        )?);
        for ((pool, _), best) in pools.iter().zip(&mut wasm_rates) {
            *best = best.max(pool_rate(pool, &wasm, tasks, &input));
        }
    }

    let mut rows = Vec::new();
    for ((_, name), rate) in pools.iter().zip(wasm_rates) {
        rows.push(Row::new(
            &format!("sha256 ×{rounds}, Pool, {name}"),
            "tasks/s",
            rate,
            "same function, native, portable sha2",
            portable,
            "the comparable baseline: no SHA instructions",
        ));
        rows.push(Row::new(
            &format!("sha256 ×{rounds}, Pool, {name}, vs SHA instructions"),
            "tasks/s",
            rate,
            "same function, native, sha2 as built",
            native,
            "native sha2 uses the CPU's SHA instructions when present",
        ));
    }
    Ok(rows)
}

/// The function as the workspace builds it, on `threads` threads.
fn native_rate(rounds: u64, tasks: usize, threads: usize) -> f64 {
    let per_thread = tasks.div_ceil(threads);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    std::hint::black_box(hash::sha256_rounds(
                        std::hint::black_box(b"wpool"),
                        rounds,
                    ));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    (per_thread * threads) as f64 / started.elapsed().as_secs_f64()
}

/// Builds `bench/native-hash` (release, its own target directory) and
/// returns its binary.
fn build_portable() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("../target/native-hash");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("native-hash/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo to build bench/native-hash: {e}"))?;
    if !status.success() {
        return Err(format!("building bench/native-hash failed ({status})").into());
    }
    Ok(target.join("release/native-hash"))
}

/// Tasks per second of the portable build, which must compute `expected`.
fn portable_rate(
    binary: &Path,
    rounds: u64,
    tasks: usize,
    threads: usize,
    expected: &str,
) -> Result<f64, Box<dyn std::error::Error>> {
    let out = Command::new(binary)
        .args([rounds.to_string(), tasks.to_string(), threads.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (rate, digest) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| format!("native-hash printed {text:?} ({})", out.status))?;
    if digest != expected {
        return Err(format!("native-hash computed {digest}, not {expected}").into());
    }
    Ok(rate.parse()?)
}

/// One task through the pool: it must compute the same digest.
fn check_output(
    pool: &Pool,
    wasm: &[u8],
    input: &[u8],
    expected: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let module = register(pool, wasm)?;
    let result = pool.executor().handle().block_on(async {
        pool.submit(TaskSpec::new(module, input.to_vec()))
            .await?
            .wait()
            .await
    })?;
    let output: serde_json::Value = serde_json::from_slice(&result.output)?;
    if output["sha256"] != expected {
        return Err(format!(
            "the wasm task computed {}, not {expected}",
            output["sha256"]
        )
        .into());
    }
    Ok(())
}
