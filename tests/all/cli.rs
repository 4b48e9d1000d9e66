//! The client subcommands (`submit`, `status`, `result`, `cancel`, `list`,
//! `stats`, `modules`) against a real `wpool serve`, and `submit` with no
//! server at all.

use std::process::{Command, Output};

use serde_json::Value;
use wpool_test_artifacts as programs;

use crate::server::Server;

pub(crate) fn wpool(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(args)
        .args(["--server", server])
        .env_remove("WPOOL_TOKEN")
        .env_remove("WPOOL_SERVER")
        .output()
        .expect("run wpool")
}

/// `wpool` with no server named: the default address, where no daemon
/// answers on a machine running the tests (nothing may listen on
/// 127.0.0.1:7878 there).
pub(crate) fn wpool_unnamed(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(args)
        .env_remove("WPOOL_TOKEN")
        .env_remove("WPOOL_SERVER")
        .output()
        .expect("run wpool");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("HTTP"),
        "a daemon answers at 127.0.0.1:7878, the default address: stop it to run this test"
    );
    out
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn submit_wait_status_result_list_stats_and_modules() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--workers", "2"]);
    let input = dir.path().join("in.json");
    std::fs::write(&input, "{\"x\": 1}").unwrap();
    let input = input.to_str().unwrap();

    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--input",
            input,
            "--wait",
            "--timeout",
            "5s",
            "--memory",
            "64MiB",
            "--label",
            "team=a",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"x\": 1}",
        "the input's exact bytes, echoed"
    );
    assert!(stderr(&out).contains("succeeded"), "{}", stderr(&out));

    // Without --wait: the id, then `result --wait` and `status`.
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--input",
            input,
            "--label",
            "team=b",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 26, "{id}");
    let out = wpool(&server.url, &["result", &id, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"x\": 1}");
    let out = wpool(&server.url, &["status", &id]);
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
    let out = wpool(&server.url, &["status", &id, "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["task"]["labels"]["team"], "b");

    // The module went up once: the server holds one.
    let out = wpool(&server.url, &["modules", "--json"]);
    let modules: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(modules["modules"].as_array().unwrap().len(), 1);
    let out = wpool(&server.url, &["modules"]);
    assert!(stdout(&out).contains(modules["modules"][0]["hash"].as_str().unwrap()));

    let out = wpool(&server.url, &["list", "--label", "team=b", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(list["tasks"][0]["id"], id.as_str());
    let out = wpool(&server.url, &["list", "--state", "succeeded"]);
    assert_eq!(
        stdout(&out).lines().count(),
        3,
        "header and two tasks: {}",
        stdout(&out)
    );

    let out = wpool(&server.url, &["stats", "--json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["counts"]["succeeded"], 2);
    let out = wpool(&server.url, &["stats"]);
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
}

#[test]
fn cancel_kills_a_running_task_and_failures_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let out = wpool(&server.url, &["submit", programs::P1_SLEEP]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    server.wait_state(&id, "running");
    let out = wpool(&server.url, &["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("killed"), "{}", stderr(&out));
    let out = wpool(&server.url, &["result", &id, "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled task did not succeed"
    );
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    let out = wpool(&server.url, &["cancel", &id]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("wpool: task"), "{}", stderr(&out));

    // A task that fails: exit 1, with the log tail.
    let dir_in = tempfile::tempdir().unwrap();
    let input = dir_in.path().join("n");
    std::fs::write(&input, "3").unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_FLAKY,
            "--input",
            input.to_str().unwrap(),
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failing on attempt 1"),
        "{}",
        stderr(&out)
    );
    // With retries it succeeds.
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_FLAKY,
            "--input",
            input.to_str().unwrap(),
            "--wait",
            "--attempts",
            "3",
            "--backoff",
            "10ms",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "succeeded on attempt 3");

    // Not finished yet: 6. Unknown task: 5. Malformed id: 3. Bad flag: 2.
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_SLEEP,
            "--wait",
            "--wait-timeout",
            "200ms",
        ],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let out = wpool(&server.url, &["status", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = wpool(&server.url, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = wpool(
        &server.url,
        &["submit", programs::P1_ECHO, "--timeout", "5"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = wpool(&server.url, &["submit", "/nonexistent.wasm"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // No server: 4, with a hint.
    let out = wpool("http://127.0.0.1:9", &["stats"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("wpool serve"), "{}", stderr(&out));
}

#[test]
fn batch_submits_jsonl_and_writes_results_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--workers", "2"]);
    let inputs = dir.path().join("inputs.jsonl");
    let lines: Vec<String> = (0..40).map(|i| format!("{{\"n\":{i}}}")).collect();
    std::fs::write(&inputs, lines.join("\n") + "\n").unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            inputs.to_str().unwrap(),
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 40);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["line"], i + 1);
        assert_eq!(result["state"], "succeeded");
        assert_eq!(result["output"], lines[i].as_str());
    }
    // A line that is not JSON is refused before anything is sent.
    std::fs::write(&inputs, "{\"n\":1}\nnot json\n").unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            inputs.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
}

#[test]
fn submit_with_no_server_uses_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "hello").unwrap();
    let input = input.to_str().unwrap();

    // A server named but not answering: an error, and the data directory
    // is not touched.
    let out = wpool(
        "http://127.0.0.1:9",
        &[
            "submit",
            programs::P1_ECHO,
            "--input",
            input,
            "--data-dir",
            data_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no wpool server at http://127.0.0.1:9"),
        "{}",
        stderr(&out)
    );
    assert!(!data.exists());

    // None named: the default address, and with no daemon there, the data
    // directory. Without --wait: queued durably, not run.
    let out = wpool_unnamed(&[
        "submit",
        programs::P1_ECHO,
        "--input",
        input,
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using the data directory"),
        "{}",
        stderr(&out)
    );
    let queued = stdout(&out).trim().to_string();

    // What was queued there can be read there, with no daemon.
    let out = wpool_unnamed(&["status", &queued, "--data-dir", data_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("state     queued"),
        "{}",
        stdout(&out)
    );
    let out = wpool_unnamed(&["result", &queued, "--data-dir", data_arg]);
    assert_eq!(out.status.code(), Some(6), "not run yet: {}", stderr(&out));
    let out = wpool_unnamed(&[
        "list",
        "--state",
        "queued",
        "--limit",
        "1",
        "--data-dir",
        data_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&queued), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("more: wpool list --state queued --limit 1 --data-dir"),
        "the next page keeps the filters: {}",
        stderr(&out)
    );

    // With --wait: an embedded pool runs it.
    let out = wpool_unnamed(&[
        "submit",
        programs::P1_ECHO,
        "--input",
        input,
        "--data-dir",
        data_arg,
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("embedded"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");
    let out = wpool_unnamed(&[
        "list",
        "--state",
        "succeeded",
        "--data-dir",
        data_arg,
        "--json",
    ]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = list["tasks"][0]["id"].as_str().unwrap().to_string();
    let out = wpool_unnamed(&["result", &done, "--data-dir", data_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");

    // A daemon on the directory finds the queued task and runs it.
    let server = Server::start(&data, &["--workers", "1"]);
    let out = wpool(&server.url, &["result", &queued, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");
}

/// `--data-dir` on a directory that cannot be opened says why: a daemon
/// is named only when the directory is held, not for a store a newer
/// wpool wrote.
#[test]
fn a_data_dir_that_cannot_be_opened_names_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("wpool-store"), "wpool store schema 99\n").unwrap();
    let out = wpool_unnamed(&["list", "--data-dir", newer.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("schema version 99"), "{message}");
    assert!(message.contains("written by a newer wpool"), "{message}");
    assert!(!message.contains("wpool serve"), "{message}");

    let held = dir.path().join("held");
    let store = wpool::store::SledStore::open(&held, &wpool::store::SledOptions::new()).unwrap();
    let out = wpool_unnamed(&["list", "--data-dir", held.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("is in use"), "{message}");
    assert!(
        message.contains("ask that daemon with --server"),
        "{message}"
    );
    drop(store);
}
