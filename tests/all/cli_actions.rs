//! The operator's commands against a real `wpool serve`: retry, delete,
//! purge, pause, resume, workers, events, modules rm; completions and the
//! manual page; an example in every command's help.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wpool_test_artifacts as programs;

use crate::cli::wpool;
use crate::server::Server;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn retry_delete_purge_pause_resume_and_workers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--max-workers", "3"]);
    let url = server.url.as_str();
    let input = dir.path().join("in");
    std::fs::write(&input, "7").unwrap();
    let input = input.to_str().unwrap();

    // A failed task, retried: a new id on stdout.
    let out = wpool(
        url,
        &[
            "submit",
            programs::P1_EXIT_WITH,
            "--input",
            input,
            "--wait",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = failed["id"].as_str().unwrap().to_string();
    let out = wpool(url, &["retry", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let copy = text(&out.stdout).trim().to_string();
    assert_ne!(copy, id);
    assert!(text(&out.stderr).contains(&format!("wpool result {copy} --wait")));
    let out = wpool(url, &["result", &copy, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "the copy fails the same way");
    // Its status tells when, and how each attempt ended.
    let out = wpool(url, &["status", &copy]);
    let status = text(&out.stdout);
    assert!(
        status.contains("submitted ") && status.contains(" ago"),
        "{status}"
    );
    assert!(status.contains("finished  "), "{status}");
    assert!(status.contains("attempt 1 exited with code 7"), "{status}");

    // Delete: a finished task goes; a missing one is 5.
    let out = wpool(url, &["delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(wpool(url, &["status", &id]).status.code(), Some(5));
    assert_eq!(wpool(url, &["delete", &id]).status.code(), Some(5));

    // Purge needs a filter or --yes.
    let out = wpool(url, &["purge"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    let out = wpool(url, &["purge", "--state", "running"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = wpool(url, &["purge", "--state", "failed"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 finished task(s) deleted"),
        "{}",
        text(&out.stderr)
    );

    // Pause: a submitted task waits; resume: it runs.
    assert_eq!(wpool(url, &["pause"]).status.code(), Some(0));
    let out = wpool(url, &["submit", programs::P1_ECHO, "--input", input]);
    let waiting = text(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_millis(1200));
    let out = wpool(url, &["status", &waiting, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["task"]["state"], "queued", "{status}");
    assert_eq!(wpool(url, &["resume"]).status.code(), Some(0));
    let out = wpool(url, &["result", &waiting, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"7");

    // Workers: shown, set, and refused past the maximum.
    let out = wpool(url, &["workers"]);
    assert_eq!(text(&out.stdout).trim(), "1");
    let out = wpool(url, &["workers", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&wpool(url, &["workers"]).stdout).trim(), "3");
    let out = wpool(url, &["workers", "9"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("from 1 to 3"),
        "{}",
        text(&out.stderr)
    );

    // modules rm: deleted, and a second time not found.
    let echo_hash = {
        let out = wpool(url, &["modules", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["hash"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(echo_hash.len(), 2);
    let out = wpool(url, &["modules", "rm", &echo_hash[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = wpool(url, &["modules", "rm", &echo_hash[0]]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
}

#[test]
fn events_follow_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    let mut events = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["events", "--server", &server.url])
        .env_remove("WPOOL_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = wpool(&server.url, &["submit", programs::P1_PROGRESS, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = {
        let out = wpool(&server.url, &["list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["tasks"][0]["id"].as_str().unwrap().to_string()
    };
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let done = line.contains("succeeded");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(kinds.first(), Some(&"submitted"), "{seen:?}");
    assert!(
        kinds.contains(&"started") && kinds.contains(&"progress"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|l| l.contains(&id)), "{seen:?}");
    assert!(seen.iter().any(|l| l.ends_with("progress 4/4")), "{seen:?}");
}

#[test]
fn completions_man_page_and_examples_in_every_help() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("wpool"), "{shell}");
        assert!(
            text(&out.stdout).contains("retry"),
            "{shell}: every command is completed"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("man")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains(".TH wpool 1"),
        "{}",
        text(&out.stdout)
    );

    let help = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("--help")
        .output()
        .unwrap();
    let commands: Vec<String> = text(&help.stdout)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 18, "{commands:?}");
    for command in &commands {
        let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
            .args([command.as_str(), "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout);
        assert!(
            help.contains("Example:") || help.contains("Examples:"),
            "`wpool {command} --help` shows no example:\n{help}"
        );
        assert!(
            help.contains("\n  wpool "),
            "`wpool {command} --help`: {help}"
        );
    }
}

#[test]
fn the_daemon_logs_each_transition_and_request_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(
        dir.path(),
        &["--workers", "1", "--log-format", "json"],
        |mut c| {
            c.env("WPOOL_LOG", "debug");
            c
        },
    );
    let hash = server.upload(programs::P1_ECHO);
    let (status, body) = server.post(
        "/v1/tasks?wait=30s",
        &serde_json::json!({"module": hash, "input": "hi"}),
    );
    assert_eq!(status, 200, "{body}");
    let id = body["task"]["id"].as_str().unwrap().to_string();
    assert_eq!(server.get("/v1/nothing-here").0, 404);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.terminate(Duration::from_secs(30)), Some(0));
    let log = server.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of_task: Vec<&str> = lines
        .iter()
        .filter(|l| l["fields"]["task"] == id.as_str())
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for message in ["task submitted", "task started", "task succeeded"] {
        assert!(
            of_task.contains(&message),
            "no `{message}` for {id}: {of_task:?}"
        );
    }
    let access = lines
        .iter()
        .find(|l| l["target"] == "wpool::access" && l["fields"]["status"] == 404)
        .unwrap_or_else(|| panic!("no access line for the 404:\n{log}"));
    assert_eq!(access["fields"]["path"], "/v1/nothing-here");
    // `WPOOL_LOG=debug` is wpool's debug: no dependency floods the log.
    let foreign = lines
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or("");
            !target.starts_with("wpool") && l["level"] != "WARN" && l["level"] != "ERROR"
        })
        .count();
    assert_eq!(foreign, 0, "dependencies logged below warn:\n{log}");
    assert!(
        lines.len() < 200,
        "{} lines for one task:\n{log}",
        lines.len()
    );
}

#[test]
fn a_batch_waits_for_room_in_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--max-queued", "10"]);
    let inputs = dir.path().join("inputs.jsonl");
    std::fs::write(&inputs, "20\n".repeat(60)).unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_SLEEP,
            "--inputs",
            inputs.to_str().unwrap(),
            "--wait",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("60 of 60 tasks submitted"), "{stderr}");
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 60);
    assert!(lines.iter().all(|l| l["state"] == "succeeded"), "{lines:?}");
}

#[test]
fn a_submission_refused_past_retry_for_gives_up_with_exit_7() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--max-queued", "1"]);
    // A task an hour away fills the queue of one, and stays.
    let out = wpool(&server.url, &["submit", programs::P1_ECHO, "--delay", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let inputs = dir.path().join("inputs.jsonl");
    std::fs::write(&inputs, "1\n2\n3\n").unwrap();

    // A batch: retried with backoff for 2 s, then every line is named as
    // still refused, nothing was stored, and the exit is 7 (refused).
    let started = std::time::Instant::now();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            inputs.to_str().unwrap(),
            "--retry-for",
            "2s",
        ],
    );
    let waited = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}");
    assert!(stderr.contains("0 of 3 tasks submitted"), "{stderr}");
    assert!(
        stderr.contains("still refused after 2.00 s of retries (--retry-for)"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "a line for each input");
    for (line, n) in lines.iter().zip(1..) {
        assert_eq!(line["line"], n, "{line}");
        assert!(
            line["error"].as_str().unwrap().contains("queue is full"),
            "{line}"
        );
        assert!(line.get("id").is_none_or(|id| id.is_null()), "{line}");
    }

    // A single submission the same, and `--retry-for 0s` gives up at once.
    let out = wpool(
        &server.url,
        &["submit", programs::P1_ECHO, "--retry-for", "1s"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("still refused after 1.00 s"), "{stderr}");
    assert!(stderr.contains("queue is full"), "{stderr}");
    let out = wpool(
        &server.url,
        &["submit", programs::P1_ECHO, "--retry-for", "0s"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = wpool(&server.url, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(1),
        "only the delayed task is stored: {listed}"
    );
}
