//! The operator's everyday actions over HTTP: retry, delete and purge of
//! final tasks, pause and resume of the queue, the worker count of a
//! running daemon, a task's input, its attempts and its live progress.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wpool_test_artifacts as programs;

use crate::server::{Server, agent};

fn put(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let mut response = agent()
        .put(format!("{}{path}", server.url))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn raw(server: &Server, path: &str) -> (u16, Vec<u8>) {
    let mut response = agent().get(format!("{}{path}", server.url)).call().unwrap();
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, bytes)
}

/// Submits and waits (up to 60 s) for the task's end; its answer.
fn run(server: &Server, task: Value) -> Value {
    let (status, body) = server.post("/v1/tasks?wait=60s", &task);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn retry_runs_a_copy_and_keeps_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    let flaky = server.upload(programs::P1_FLAKY);
    // Succeeds from its second attempt on ("2"); one attempt allowed, so it
    // fails.
    let failed = run(
        &server,
        json!({"module": flaky, "input_base64": "Mg==", "max_attempts": 1, "labels": {"team": "a"},
               "idempotency_key": "first"}),
    );
    let id = failed["task"]["id"].as_str().unwrap().to_string();
    assert_eq!(failed["result"]["state"], "failed", "{failed}");
    let history = failed["result"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["number"], 1);
    assert_eq!(history[0]["outcome"]["kind"], "exit", "{failed}");

    let (status, answer) = server.post(&format!("/v1/tasks/{id}/retry"), &json!({}));
    assert_eq!(status, 201, "{answer}");
    let copy = answer["task"]["id"].as_str().unwrap().to_string();
    assert_ne!(copy, id);
    assert_eq!(
        answer["task"]["labels"],
        json!({"team": "a", "retry_of": id})
    );
    assert!(answer["task"].get("idempotency_key").is_none(), "{answer}");
    // The copy runs as its own task, from its first attempt.
    let (status, result) = server.get(&format!("/v1/tasks/{copy}/result?wait=60s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(result["attempts"], 1);
    // The original is as it ended.
    let (_, original) = server.get(&format!("/v1/tasks/{id}"));
    assert_eq!(original["task"]["state"], "failed");

    // Not final: refused, with what to do.
    let sleep = server.upload(programs::P1_SLEEP);
    let (_, running) = server.post("/v1/tasks", &json!({"module": sleep, "input": "60000"}));
    let running = running["task"]["id"].as_str().unwrap().to_string();
    let (status, body) = server.post(&format!("/v1/tasks/{running}/retry"), &json!({}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_finished");
    let (status, body) = server.post(&format!("/v1/tasks/{running}/delete"), &json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancel it first"),
        "{body}"
    );
    assert_eq!(server.delete(&format!("/v1/tasks/{running}")).0, 200);
}

#[test]
fn delete_and_purge_remove_final_tasks_and_their_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let echo = server.upload(programs::P1_ECHO);
    let big = "x".repeat(200 << 10); // kept as files: input and output
    let done = run(&server, json!({"module": echo, "input": big}));
    let id = done["task"]["id"].as_str().unwrap().to_string();
    assert_eq!(done["task"]["input_size"], big.len() + 2); // a JSON string
    let (status, input) = raw(&server, &format!("/v1/tasks/{id}/input"));
    assert_eq!(status, 200);
    assert_eq!(input, json!(big).to_string().into_bytes());
    let files = || {
        std::fs::read_dir(dir.path().join("payloads"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 2);

    let (status, body) = server.post(&format!("/v1/tasks/{id}/delete"), &json!({}));
    assert_eq!(status, 204, "{body}");
    assert_eq!(server.get(&format!("/v1/tasks/{id}")).0, 404);
    assert_eq!(raw(&server, &format!("/v1/tasks/{id}/input")).0, 404);
    assert_eq!(files(), 0);
    let (status, _) = server.post(&format!("/v1/tasks/{id}/delete"), &json!({}));
    assert_eq!(status, 404);

    for (team, n) in [("a", 3), ("b", 2)] {
        for _ in 0..n {
            run(
                &server,
                json!({"module": echo, "input": team, "labels": {"team": team}}),
            );
        }
    }
    let (status, body) = server.post("/v1/tasks:purge", &json!({"labels": {"team": "a"}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], 3);
    let (_, list) = server.get("/v1/tasks?label=team=b");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2);
    // Only an object is a filter: `[]` would otherwise read as one with
    // every field at its default, and purge everything.
    let (status, body) = server.post("/v1/tasks:purge", &json!([]));
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post("/v1/tasks:purge", &json!({"state": "queued"}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only final tasks"),
        "{body}"
    );
    let (status, body) = server.post("/v1/tasks:purge", &json!({"state": "succeeded"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], 2);
    assert_eq!(server.get("/v1/stats").1["total"], 0);
}

#[test]
fn a_paused_queue_starts_nothing_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    let echo = server.upload(programs::P1_ECHO);
    let (status, body) = server.post("/v1/queue/pause", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true);
    let (_, answer) = server.post("/v1/tasks", &json!({"module": echo, "input": "hi"}));
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        server.get(&format!("/v1/tasks/{id}")).1["task"]["state"],
        "queued"
    );
    let (_, stats) = server.get("/v1/stats");
    assert_eq!(stats["paused"], true);
    assert_eq!(stats["busy"], 0);

    let (status, body) = server.post("/v1/queue/resume", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], false);
    let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait=30s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "succeeded");
}

#[test]
fn the_worker_count_changes_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--max-workers", "4"]);
    let sleep = server.upload(programs::P1_SLEEP);
    for _ in 0..3 {
        server.post("/v1/tasks", &json!({"module": sleep, "input": "60000"}));
    }
    let busy = || server.get("/v1/stats").1["busy"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(busy(), 1);

    let (status, body) = put(&server, "/v1/workers", &json!({"workers": 3}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"workers": 3, "max_workers": 4}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy() < 3 {
        assert!(
            Instant::now() < deadline,
            "three workers never ran three tasks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.get("/v1/stats").1["workers"], 3);

    for bad in [
        json!({"workers": 0}),
        json!({"workers": 5}),
        json!({"workers": "two"}),
    ] {
        let (status, body) = put(&server, "/v1/workers", &bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (_, body) = put(&server, "/v1/workers", &json!({"workers": 5}));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from 1 to 4"),
        "{body}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args([
            "serve",
            "--workers",
            "4",
            "--max-workers",
            "2",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-workers (2) is below --workers (4)")
    );
}

#[test]
fn a_running_task_shows_its_live_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    let progress = server.upload(programs::P1_PROGRESS);
    let (_, answer) = server.post("/v1/tasks", &json!({"module": progress, "input": "3000"}));
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server.get(&format!("/v1/tasks/{id}"));
        let task = &body["task"];
        if task["state"] == "running" && task["progress"] == json!([4, 4]) {
            assert_eq!(task["history"].as_array().unwrap().len(), 1);
            assert!(task["history"][0].get("outcome").is_none(), "{task}");
            break;
        }
        assert_ne!(
            task["state"], "succeeded",
            "ended before its progress was seen: {task}"
        );
        assert!(Instant::now() < deadline, "no live progress: {task}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_sets_the_default_limits_of_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--workers",
            "1",
            "--default-timeout",
            "200ms",
            "--default-max-output",
            "1KiB",
        ],
    );
    let sleep = server.upload(programs::P1_SLEEP);
    let done = run(&server, json!({"module": sleep, "input": "5000"}));
    assert_eq!(done["result"]["outcome"]["kind"], "timeout", "{done}");
    assert_eq!(done["task"]["timeout_ms"], 200);
    // A task's own limit still wins.
    let done = run(
        &server,
        json!({"module": sleep, "input_base64": "MzAw", "timeout": "5s"}),
    );
    assert_eq!(done["result"]["state"], "succeeded", "{done}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["serve", "--default-memory", "2GiB", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the default task limits") && stderr.contains("ask for less"),
        "{stderr}"
    );
}

/// The most memory a task may ask for, from the OpenAPI document: the
/// integer maximum, and the pattern of sizes with a unit.
fn documented_max_memory(server: &Server) -> (u64, regex_automata::meta::Regex) {
    let (status, doc) = server.get("/v1/openapi.json");
    assert_eq!(status, 200);
    let memory = &doc["components"]["schemas"]["SubmitTask"]["properties"]["memory"]["oneOf"][0];
    let pattern = memory["oneOf"][1]["pattern"].as_str().unwrap();
    (
        memory["oneOf"][0]["maximum"].as_u64().unwrap(),
        regex_automata::meta::Regex::new(pattern).unwrap(),
    )
}

fn serve_output(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .env_remove("WPOOL_STORE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The refusal of a memory limit above the pool's maximum advises a
/// setting that exists; issue 14 found it pointing at none.
#[test]
fn the_daemon_sets_the_most_memory_a_task_may_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("flag"),
        &["--workers", "1", "--max-memory", "2GiB"],
    );
    let echo = server.upload(programs::P1_ECHO);
    let done = run(
        &server,
        json!({"module": echo, "input": 1, "memory": "1.5GiB"}),
    );
    assert_eq!(done["result"]["state"], "succeeded", "{done}");
    assert_eq!(done["task"]["memory"], 3u64 << 29);
    let (status, body) = server.post("/v1/tasks", &json!({"module": echo, "memory": "3GiB"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_limit");
    let message = body["error"]["message"].as_str().unwrap();
    for setting in ["--max-memory", "WPOOL_MAX_MEMORY", "max_memory", "2 GiB"] {
        assert!(message.contains(setting), "{message}");
    }
    // A client that checks the schema sees the same limit.
    let (max, pattern) = documented_max_memory(&server);
    assert_eq!(max, 2 << 30);
    assert!(pattern.is_match("2GiB") && pattern.is_match("1536MiB"));
    assert!(!pattern.is_match("3GiB") && !pattern.is_match("2049MiB"));
    drop(server);

    // The variable, and the config file.
    let server = Server::start_with(&dir.path().join("env"), &["--workers", "1"], |mut c| {
        c.env("WPOOL_MAX_MEMORY", "512MiB");
        c
    });
    assert_eq!(documented_max_memory(&server).0, 512 << 20);
    let echo = server.upload(programs::P1_ECHO);
    let (status, body) = server.post("/v1/tasks", &json!({"module": echo, "memory": "1GiB"}));
    assert_eq!(status, 400, "{body}");
    drop(server);
    let config = dir.path().join("wpool.toml");
    std::fs::write(&config, "max_memory = \"3GiB\"\n").unwrap();
    let server = Server::start(
        &dir.path().join("file"),
        &["--workers", "1", "--config", config.to_str().unwrap()],
    );
    let (max, pattern) = documented_max_memory(&server);
    assert_eq!(max, 3 << 30);
    assert!(pattern.is_match("3GiB") && !pattern.is_match("4GiB"));
    drop(server);
    // Without the setting, the default of 1 GiB.
    let server = Server::start(&dir.path().join("default"), &["--workers", "1"]);
    assert_eq!(documented_max_memory(&server).0, 1 << 30);
    drop(server);

    // Values the engine cannot give a task are refused, naming the setting.
    let other = dir.path().join("other");
    for (args, env) in [
        (&["--max-memory", "5GiB"][..], &[][..]),
        (&["--max-memory", "1KiB"][..], &[][..]),
        (&[][..], &[("WPOOL_MAX_MEMORY", "100GiB")][..]),
    ] {
        let (code, stderr) = serve_output(&other, args, env);
        assert_eq!(code, 3, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("--max-memory"), "{stderr}");
    }
    let (code, stderr) = serve_output(&other, &["--max-memory", "5GiB"], &[]);
    assert_eq!(code, 3);
    assert!(
        stderr.contains("4 GiB") && stderr.contains("address space"),
        "{stderr}"
    );
    let (code, stderr) = serve_output(&other, &["--max-memory", "lots"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-memory"), "{stderr}");
    std::fs::write(&config, "max_memory = \"8GiB\"\n").unwrap();
    let (code, stderr) = serve_output(&other, &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("max_memory"), "{stderr}");
    // A default above the maximum is refused too.
    let (code, stderr) = serve_output(
        &other,
        &["--max-memory", "256MiB", "--default-memory", "512MiB"],
        &[],
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--max-memory"), "{stderr}");
}
