//! Large outputs: kept in files beside the database, read back as a
//! stream, removed with their tasks; an `output_too_large` failure keeps a
//! small tail; a pool-wide bound on stored output bytes; and a daemon whose
//! memory does not grow with the results its tasks produce.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wpool::store::{SledOptions, SledStore, Store};
use wpool::{LimitOverrides, Payload, Pool, PoolConfig, TaskId, TaskSpec, TaskState};
use wpool_test_artifacts as programs;

use crate::server::Server;
use crate::util::{executor, read, run_wasm};

/// What `output_sized` writes for `SIZE SEED`.
fn expected_output(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let mut chunk = Vec::with_capacity(64 << 10);
        while chunk.len() < 64 << 10 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        let n = (size - out.len()).min(chunk.len());
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// The files in the data directory's `outputs/`, with their sizes.
fn output_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("payloads"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_live_in_files_and_leave_with_their_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), &SledOptions::new()).unwrap());
    let mut config = PoolConfig::new();
    config.workers(2);
    let pool = Pool::with_store(config.clone(), store.clone()).unwrap();
    let module = pool
        .register(&read(programs::P1_OUTPUT_SIZED))
        .await
        .unwrap();
    let submit = |size: usize, seed: u64| {
        let pool = pool.clone();
        async move {
            pool.submit(TaskSpec::new(module, format!("{size} {seed}").into_bytes()))
                .await
                .unwrap()
                .wait()
                .await
                .unwrap()
        }
    };

    let big = submit(1 << 20, 7).await;
    assert_eq!(big.state, TaskState::Succeeded, "{}", big.log);
    assert_eq!(big.output, expected_output(1 << 20, 7));
    let small = submit(100, 8).await;
    assert_eq!(small.output, expected_output(100, 8));

    // The record names a file; the small output stays in its record.
    let record = pool.status(big.id).await.unwrap();
    let Payload::File { token, len } = record.output else {
        panic!(
            "a 1 MiB output is kept in a file, not {:?}",
            record.output.len()
        );
    };
    assert_eq!(len, 1 << 20);
    let name = format!("{}-{token:016x}", big.id);
    assert_eq!(output_files(dir.path()), [(name.clone(), 1 << 20)]);
    assert!(matches!(
        pool.status(small.id).await.unwrap().output,
        Payload::Inline(_)
    ));
    assert_eq!(store.stored_output_bytes(), 1 << 20);

    // Across a restart: the output is still there, and files no record
    // names (a crash between writing and recording, a half-written file)
    // are removed when the store opens.
    pool.stop().await.unwrap();
    drop(pool);
    while Arc::strong_count(&store) > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(store);
    let orphan = format!("{}-{:016x}", TaskId::new(), 1);
    std::fs::write(dir.path().join("payloads").join(&orphan), b"left behind").unwrap();
    std::fs::write(
        dir.path().join("payloads").join(format!("{name}.tmp")),
        b"cut",
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("payloads")
            .join(format!("{}-{:016x}", big.id, token + 1)),
        b"an earlier attempt's",
    )
    .unwrap();
    let store = Arc::new(SledStore::open(dir.path(), &SledOptions::new()).unwrap());
    assert_eq!(output_files(dir.path()), [(name, 1 << 20)]);
    let pool = Pool::with_store(config, store.clone()).unwrap();
    assert_eq!(
        pool.result(big.id).await.unwrap().unwrap().output,
        expected_output(1 << 20, 7)
    );

    // Retention removes the task and its file.
    assert_eq!(store.purge_finished(u64::MAX, None).unwrap(), 2);
    assert_eq!(output_files(dir.path()), []);
    assert_eq!(store.stored_output_bytes(), 0);
    pool.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_inputs_live_in_files_until_their_task_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), &SledOptions::new()).unwrap());
    let mut config = PoolConfig::new();
    config.workers(1);
    let pool = Pool::with_store(config, store.clone()).unwrap();
    let echo = pool.register(&read(programs::P1_ECHO)).await.unwrap();
    let input = expected_output(300 << 10, 3);

    // Stored but not run yet: the record, and the queue's index, hold the
    // input's size; the bytes are in the task's input file.
    let delayed = pool
        .submit(TaskSpec::new(echo, input.clone()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let record = pool.status(delayed.id()).await.unwrap();
    assert_eq!(
        record.input,
        Payload::File {
            token: 0,
            len: 300 << 10
        }
    );
    assert_eq!(
        output_files(dir.path()),
        [(format!("{}.input", delayed.id()), 300 << 10)]
    );

    // Run: the guest gets the whole input, and echoes it back.
    let result = pool
        .submit(TaskSpec::new(echo, input.clone()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(result.state, TaskState::Succeeded, "{}", result.log);
    assert_eq!(result.output, input);
    assert_eq!(
        output_files(dir.path()).len(),
        3,
        "{:?}",
        output_files(dir.path())
    );

    // A submission whose idempotency key is taken stores nothing, and
    // leaves no file.
    let keyed = || TaskSpec::new(echo, input.clone()).idempotency_key("once");
    let first = pool.submit(keyed()).await.unwrap();
    first.wait().await.unwrap();
    assert_eq!(output_files(dir.path()).len(), 5);
    let again = pool.submit(keyed()).await.unwrap();
    assert_eq!(again.id(), first.id());
    assert_eq!(output_files(dir.path()).len(), 5);

    // Retention takes each finished task's files with it; the waiting
    // task keeps its input.
    assert_eq!(store.purge_finished(u64::MAX, None).unwrap(), 2);
    assert_eq!(
        output_files(dir.path()),
        [(format!("{}.input", delayed.id()), 300 << 10)]
    );
    pool.stop().await.unwrap();
}

#[test]
fn output_too_large_keeps_only_a_small_tail() {
    let report = run_wasm(
        &executor(1),
        &read(programs::P1_OUTPUT_FLOOD),
        b"",
        LimitOverrides {
            max_output: Some(1 << 20),
            ..LimitOverrides::default()
        },
    );
    assert_eq!(report.outcome, wpool::Outcome::OutputTooLarge);
    assert_eq!(report.output.len(), wpool::TOO_LARGE_TAIL);
    assert!(report.output.iter().all(|&b| b == b'x'));
    assert!(
        report.log.contains("kept its last 4096 of"),
        "{}",
        report.log
    );
}

/// The daemon's resident memory in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The bytes under `dir`, which the daemon changes meanwhile: a file
/// listed, then removed (retention) before it is measured, counts as gone.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = entry.unwrap();
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", entry.path().display()),
        };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The bound the daemon's resident memory stays within over its start,
/// whatever its tasks take in and put out: sled's page cache (64 MiB), and
/// for each of the two workers a run in flight (its input, its output and
/// a copy of each while they are recorded, and its linear memory until it
/// is given back, about 64 MiB for these tasks), and 64 MiB of allocator
/// slack. (Measured: about 100 MiB over the start on glibc alone, 114 MiB
/// on `wpool::alloc::Allocator`, which the binary runs on.)
const RSS_BOUND_MIB: u64 = 64 + 2 * 64 + 64;

#[test]
fn a_stream_of_maximum_outputs_keeps_the_daemon_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--workers", "2", "--retention", "4s"]);
    let start = rss_kib(server.pid());
    let hash = server.upload(programs::P1_OUTPUT_SIZED);
    let max = 16usize << 20; // the default `max_output`
    // Each task also writes a log of 64 KiB.
    let log = 64 << 10;
    let submit = |seed: u64| {
        let (status, body) = server.post(
            "/v1/tasks",
            &serde_json::json!({
                "module": hash,
                "input": format!("{max} {seed} {log}"),
                "max_log": "64KiB",
            }),
        );
        assert_eq!(status, 201, "{body}");
        body["task"]["id"].as_str().unwrap().to_string()
    };
    let wait = |id: &str| {
        let (status, body) = server.get(&format!("/v1/tasks/{id}/result?wait=120s"));
        assert_eq!(status, 200, "{body}");
        body
    };

    // Warm up: the pooled instances and caches are in place.
    for seed in 0..4 {
        wait(&submit(seed));
    }

    let started = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut half = 0;
    let mut peak = start;
    // Submitted ten at a time, each ten waited for before the next: with a
    // retention of 4 s, a result finished long before its turn to be read
    // could be gone (404) by then.
    let mut ids: Vec<String> = Vec::new();
    for i in 0..200 {
        if i % 10 == 0 {
            ids.extend((100 + i as u64..110 + i as u64).map(submit));
        }
        let id = &ids[i];
        let result = wait(id);
        assert_eq!(result["state"], "succeeded", "{result}");
        assert_eq!(result["output_size"], max as u64);
        assert_eq!(
            result["log"].as_str().unwrap().len(),
            log,
            "the log's tail is kept"
        );
        // Carried by reference, not inline: the answer is small.
        assert!(result.get("output_base64").is_none(), "{result}");
        if i % 50 == 0 {
            // The whole output, streamed back.
            let mut response = crate::server::agent()
                .get(format!(
                    "{}{}",
                    server.url,
                    result["output_url"].as_str().unwrap()
                ))
                .call()
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let bytes = response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .unwrap();
            assert_eq!(bytes, expected_output(max, 100 + i as u64));
        }
        peak = peak.max(rss_kib(server.pid()));
        elapsed = started.elapsed();
        if i == 99 {
            half = rss_kib(server.pid());
        }
    }
    let full = rss_kib(server.pid());
    eprintln!(
        "RSS after 100 of the 200 tasks: {} MiB, after 200: {} MiB",
        half >> 10,
        full >> 10
    );
    // Memory does not grow with the number of results.
    assert!(
        full.saturating_sub(half) < 64 << 10,
        "RSS grew from {} MiB to {} MiB over the second hundred tasks",
        half >> 10,
        full >> 10
    );
    eprintln!("200 tasks of 16 MiB output in {elapsed:.1?}");
    // And 30 echo tasks of 8 MiB input (and so output) each.
    let echo = server.upload(programs::P1_ECHO);
    let echo_started = Instant::now();
    for seed in 0..30u64 {
        use base64::Engine as _;
        let input = expected_output(8 << 20, seed);
        let (status, body) = server.post(
            "/v1/tasks?wait=120s",
            &serde_json::json!({
                "module": echo,
                "input_base64": base64::engine::general_purpose::STANDARD.encode(&input),
            }),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["state"], "succeeded", "{body}");
        assert_eq!(body["result"]["output_size"], 8 << 20);
        peak = peak.max(rss_kib(server.pid()));
    }
    eprintln!("30 echo tasks of 8 MiB in {:.1?}", echo_started.elapsed());
    let end = rss_kib(server.pid());
    eprintln!(
        "200 tasks of {} MiB output and 64 KiB log: RSS {} MiB at start, {} MiB at most, {} MiB at the end",
        max >> 20,
        start >> 10,
        peak >> 10,
        end >> 10
    );
    assert!(
        peak.saturating_sub(start) < RSS_BOUND_MIB << 10,
        "RSS grew from {} MiB to {} MiB, more than {RSS_BOUND_MIB} MiB",
        start >> 10,
        peak >> 10
    );

    // Retention (4 s here) takes the results, and their files, away.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outputs = dir_bytes(&data.join("payloads"));
        if outputs == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output files still hold {outputs} bytes a minute after retention"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let total = dir_bytes(&data);
    eprintln!(
        "after retention: the data directory holds {} MiB",
        total >> 20
    );
    assert!(
        total < 128 << 20,
        "the data directory still holds {} MiB after retention",
        total >> 20
    );
}

#[test]
fn stored_outputs_are_bounded_and_the_cli_streams_a_large_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--workers",
            "1",
            "--max-stored-output",
            "1MiB",
            "--retention",
            "2s",
        ],
    );
    let hash = server.upload(programs::P1_OUTPUT_SIZED);
    let size = 3usize << 19; // 1.5 MiB
    let (status, body) = server.post(
        "/v1/tasks?wait=60s",
        &serde_json::json!({"module": hash, "input": format!("{size} 5")}),
    );
    assert_eq!(status, 200, "{body}");
    let id = body["task"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        body["result"]["output_url"],
        format!("/v1/tasks/{id}/output")
    );

    // The CLI streams it to stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["result", &id, "--server", &server.url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, expected_output(size, 5));

    // Past the bound, submissions are refused with what to do, and taken
    // again once retention removed the result.
    let submit = || {
        crate::server::agent()
            .post(format!("{}/v1/tasks", server.url))
            .header("Content-Type", "application/json")
            .send(
                serde_json::json!({"module": hash, "input": "10 1"})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap()
    };
    let mut refused = submit();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&refused.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "storage_full", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_stored_output"),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while submit().status().as_u16() != 201 {
        assert!(Instant::now() < deadline, "still refused after retention");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The removed task's output is gone with it.
    let (status, _) = server.get(&format!("/v1/tasks/{id}/output"));
    assert_eq!(status, 404);
}
