//! `wpool serve`, driven over raw HTTP: the real binary on `127.0.0.1:0`
//! in a temp dir, killed by a guard if a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wpool_test_artifacts as programs;

/// A running `wpool serve`; killed when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) url: String,
    pub(crate) addr: String,
    /// Everything it wrote to stderr.
    pub(crate) log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `wpool serve` on `dir`, a free port, and `extra` flags.
    pub(crate) fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::start_with(dir, extra, |command| command)
    }

    /// Like [`Server::start`], with the command changed by `wrap` first
    /// (e.g. run under `prlimit`).
    pub(crate) fn start_with(
        dir: &Path,
        extra: &[&str],
        wrap: impl FnOnce(Command) -> Command,
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wpool"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            // The embedded store unless a test asks otherwise.
            .env_remove("WPOOL_STORE");
        let mut child = wrap(command)
            .env_remove("WPOOL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wpool serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut server = Server {
            child: Some(child),
            url: String::new(),
            addr: String::new(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => {
                server.url = format!("http://{addr}");
                server.addr = addr;
            }
            Err(_) => panic!(
                "the server did not say where it listens; its log:\n{}",
                server.log.lock().unwrap()
            ),
        }
        server
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub(crate) fn terminate(&mut self, within: Duration) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit within {within:?} of SIGTERM; its log:\n{}",
                    self.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client that hands back every status.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A status and a JSON body (`Value::Null` when the body is not JSON).
pub(crate) type Reply = (u16, Value);

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("request");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

impl Server {
    pub(crate) fn get(&self, path: &str) -> Reply {
        reply(agent().get(format!("{}{path}", self.url)).call())
    }

    pub(crate) fn get_text(&self, path: &str) -> (u16, String) {
        let mut response = agent().get(format!("{}{path}", self.url)).call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    pub(crate) fn delete(&self, path: &str) -> Reply {
        reply(agent().delete(format!("{}{path}", self.url)).call())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Reply {
        reply(
            agent()
                .post(format!("{}{path}", self.url))
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    pub(crate) fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        reply(agent().post(format!("{}{path}", self.url)).send(body))
    }

    /// Uploads a module; returns its hash.
    pub(crate) fn upload(&self, path: &str) -> String {
        let (status, body) = self.post_raw("/v1/modules", &std::fs::read(path).unwrap());
        assert!(status == 201 || status == 200, "{status} {body}");
        body["hash"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) until the task is in `state`.
    pub(crate) fn wait_state(&self, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/v1/tasks/{id}"));
            assert_eq!(status, 200, "{body}");
            if body["task"]["state"] == state {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} never {state}: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn code(reply: &Reply) -> &str {
    reply.1["error"]["code"].as_str().unwrap_or("")
}

fn message(reply: &Reply) -> &str {
    reply.1["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn http_submit_wait_result_and_cancel_a_running_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    assert_eq!(server.get("/healthz").0, 200);

    let bytes = std::fs::read(programs::P1_ECHO).unwrap();
    let (status, first) = server.post_raw("/v1/modules", &bytes);
    assert_eq!(status, 201, "{first}");
    let (status, again) = server.post_raw("/v1/modules", &bytes);
    assert_eq!(status, 200, "uploading twice is idempotent: {again}");
    assert_eq!(first["hash"], again["hash"]);
    let echo = first["hash"].as_str().unwrap();
    assert_eq!(server.get(&format!("/v1/modules/{echo}")).0, 200);

    // Submit and long-poll in one call.
    let (status, answer) = server.post(
        "/v1/tasks?wait=20s",
        &json!({"module": echo, "input": {"x": 1}, "timeout": "5s", "memory": "64MiB",
                "fuel": "10M", "priority": 3, "labels": {"team": "a"}}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["state"], "succeeded");
    assert_eq!(answer["result"]["output"], r#"{"x":1}"#);
    assert_eq!(answer["task"]["priority"], 3);
    assert_eq!(answer["task"]["timeout_ms"], 5000);
    assert_eq!(answer["task"]["memory"], 64 << 20);
    assert_eq!(answer["task"]["fuel"], 10_000_000);
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    let (status, result) = server.get(&format!("/v1/tasks/{id}/result"));
    assert_eq!(status, 200);
    assert_eq!(result["output"], r#"{"x":1}"#);
    assert!(result["fuel_consumed"].as_u64().unwrap() > 0);

    // Raw bytes in, and a submit without wait answers 201 at once.
    let (status, answer) = server.post(
        "/v1/tasks",
        &json!({"module": echo, "input_base64": "AAEC/w=="}),
    );
    assert_eq!(status, 201, "{answer}");
    let raw_id = answer["task"]["id"].as_str().unwrap();
    let (status, result) = server.get(&format!("/v1/tasks/{raw_id}/result?wait=20s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["output_base64"], "AAEC/w==");
    assert!(result.get("output").is_none(), "not UTF-8: no text form");

    // Idempotency key: the second submit returns the first task.
    let spec = json!({"module": echo, "input": 1, "idempotency_key": "order-42"});
    let (s1, a1) = server.post("/v1/tasks", &spec);
    let (s2, a2) = server.post("/v1/tasks", &spec);
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a1["task"]["id"], a2["task"]["id"]);
    assert_eq!(a2["created"], false);

    // Cancel a running task: it is killed, and its result says so.
    let sleep = server.upload(programs::P1_SLEEP);
    let (status, answer) = server.post("/v1/tasks", &json!({"module": sleep}));
    assert_eq!(status, 201, "{answer}");
    let sleeper = answer["task"]["id"].as_str().unwrap().to_string();
    server.wait_state(&sleeper, "running");
    let (status, cancelled) = server.delete(&format!("/v1/tasks/{sleeper}"));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancel"], "killed");
    let started = Instant::now();
    let (status, result) = server.get(&format!("/v1/tasks/{sleeper}/result?wait=20s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed promptly"
    );
    let again = server.delete(&format!("/v1/tasks/{sleeper}"));
    assert_eq!(again.0, 409, "{}", again.1);
    assert_eq!(code(&again), "already_finished");

    // A result not ready yet: 202 with the task.
    let (_, answer) = server.post("/v1/tasks", &json!({"module": sleep, "input": 60000}));
    let waiting = answer["task"]["id"].as_str().unwrap();
    let (status, body) = server.get(&format!("/v1/tasks/{waiting}/result?wait=50ms"));
    assert_eq!(status, 202, "{body}");
    assert_eq!(server.delete(&format!("/v1/tasks/{waiting}")).0, 200);

    // Unknown ids.
    let missing = server.get("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(missing.0, 404);
    assert_eq!(code(&missing), "not_found");
    assert_eq!(server.get("/v1/nope").0, 404);

    // A module in use cannot be deleted; an unused one can.
    let (_, answer) = server.post("/v1/tasks", &json!({"module": sleep}));
    let busy = answer["task"]["id"].as_str().unwrap();
    let conflict = server.delete(&format!("/v1/modules/{sleep}"));
    assert_eq!(conflict.0, 409, "{}", conflict.1);
    assert_eq!(code(&conflict), "module_in_use");
    assert_eq!(server.delete(&format!("/v1/tasks/{busy}")).0, 200);
    let trivial = server.upload(programs::P1_TRIVIAL);
    assert_eq!(server.delete(&format!("/v1/modules/{trivial}")).0, 204);
    assert_eq!(server.get(&format!("/v1/modules/{trivial}")).0, 404);
}

#[test]
fn bad_input_gets_the_right_status_and_message_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--workers",
            "1",
            "--max-module-size",
            "1MiB",
            "--max-input-size",
            "1KiB",
            "--body-timeout",
            "1s",
        ],
    );
    let echo = server.upload(programs::P1_ECHO);

    let malformed = server.post_raw("/v1/tasks", b"{\"module\": ");
    assert_eq!(malformed.0, 400);
    assert_eq!(code(&malformed), "malformed_json");

    let wrong_type = server.post("/v1/tasks", &json!({"module": echo, "priority": "high"}));
    assert_eq!(wrong_type.0, 400);
    assert_eq!(code(&wrong_type), "invalid_request");
    assert!(
        message(&wrong_type).contains("invalid type"),
        "{}",
        wrong_type.1
    );

    let unknown = server.post("/v1/tasks", &json!({"module": echo, "colour": "red"}));
    assert_eq!(unknown.0, 400);
    assert!(
        message(&unknown).contains("unknown field `colour`"),
        "{}",
        unknown.1
    );

    let base64 = server.post("/v1/tasks", &json!({"module": echo, "input_base64": "%%%"}));
    assert_eq!(base64.0, 400);
    assert_eq!(code(&base64), "invalid_base64");

    let both = server.post(
        "/v1/tasks",
        &json!({"module": echo, "input": 1, "input_base64": "AA=="}),
    );
    assert_eq!(both.0, 400);

    let no_module = server.post("/v1/tasks", &json!({"module": "ab".repeat(32)}));
    assert_eq!(no_module.0, 404, "{}", no_module.1);
    assert_eq!(code(&no_module), "unknown_module");
    assert!(message(&no_module).contains("POST /v1/modules"));

    let bad_hash = server.post("/v1/tasks", &json!({"module": "nope"}));
    assert_eq!(bad_hash.0, 400);
    assert!(
        message(&bad_hash).contains("64 hexadecimal digits"),
        "{}",
        bad_hash.1
    );

    let not_wasm = server.post_raw("/v1/modules", b"this is not wasm");
    assert_eq!(not_wasm.0, 400);
    assert_eq!(code(&not_wasm), "invalid_module");
    assert_eq!(server.post_raw("/v1/modules", b"").0, 400);

    // A module past the limit, streamed without a length: 413 once the
    // limit is crossed (the server may stop reading before the end).
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(
        stream,
        "POST /v1/modules HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..32 {
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let big_input = server.post(
        "/v1/tasks",
        &json!({"module": echo, "input": "x".repeat(2000)}),
    );
    assert_eq!(big_input.0, 413, "{}", big_input.1);

    // Absurd limits: negative, zero, overflowing, out of range.
    for (field, value, expected) in [
        ("timeout", json!(-5), "invalid_request"),
        ("timeout", json!("0s"), "invalid_limit"),
        ("timeout", json!("400d"), "invalid_limit"),
        ("memory", json!("1KiB"), "invalid_limit"),
        (
            "memory",
            json!("99999999999999999999999"),
            "invalid_request",
        ),
        ("fuel", json!(1.5), "invalid_request"),
        ("fuel", json!(0), "invalid_limit"),
        ("max_attempts", json!(0), "invalid_task"),
        ("max_attempts", json!(1000), "invalid_task"),
        ("max_attempts", json!(-1), "invalid_request"),
        ("priority", json!(1u64 << 40), "invalid_request"),
        ("delay", json!("5"), "invalid_request"),
    ] {
        let reply = server.post("/v1/tasks", &json!({"module": echo, field: value}));
        assert_eq!(reply.0, 400, "{field}={value}: {}", reply.1);
        assert_eq!(code(&reply), expected, "{field}={value}: {}", reply.1);
        assert!(!message(&reply).is_empty());
    }

    let bad_query = server.get("/v1/tasks?state=sleeping");
    assert_eq!(bad_query.0, 400);
    assert!(message(&bad_query).contains("not a task state"));
    assert_eq!(server.get("/v1/tasks?colour=red").0, 400);
    assert_eq!(server.get("/v1/tasks/not-an-id").0, 400);

    // A body that never finishes: 408 after the body timeout, not a hang.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"module\""
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A Content-Length past the limit is refused before the body is read.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /v1/modules HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Many connections at once, half of them idle: still serving.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let (status, answer) = server.post(
        "/v1/tasks?wait=20s",
        &json!({"module": echo, "input": "ok"}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["output"], "\"ok\"");
    drop(idle);

    // Nothing was lost or half-made: every stored task is the one good one.
    let (_, stats) = server.get("/v1/stats");
    assert_eq!(stats["total"], 1, "{stats}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn a_token_is_required_off_loopback_and_checked_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("WPOOL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{stderr}"
    );

    let server = Server::start(dir.path(), &["--token", "s3cret", "--workers", "1"]);
    assert_eq!(server.get("/healthz").0, 200, "health needs no token");
    let missing = server.get("/v1/stats");
    assert_eq!(missing.0, 401);
    assert_eq!(code(&missing), "unauthorized");
    assert!(message(&missing).contains("bearer token"));
    let wrong = reply(
        agent()
            .get(format!("{}/v1/stats", server.url))
            .header("Authorization", "Bearer guess")
            .call(),
    );
    assert_eq!(wrong.0, 401);
    let right = reply(
        agent()
            .get(format!("{}/v1/stats", server.url))
            .header("Authorization", "Bearer s3cret")
            .call(),
    );
    assert_eq!(right.0, 200, "{}", right.1);
    // An upload without the token is refused before its body is read.
    assert_eq!(server.post_raw("/v1/modules", b"\0asm").0, 401);
}

#[test]
fn list_filters_stats_events_metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let echo = server.upload(programs::P1_ECHO);
    let progress = server.upload(programs::P1_PROGRESS);

    // Subscribe before submitting.
    let mut events = TcpStream::connect(&server.addr).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(events, "GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut events = BufReader::new(events);
    let mut status_line = String::new();
    events.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");

    let mut ids = Vec::new();
    for (i, team) in ["a", "b", "b"].iter().enumerate() {
        let (status, answer) = server.post(
            "/v1/tasks?wait=20s",
            &json!({"module": echo, "input": i, "labels": {"team": team}}),
        );
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["task"]["id"].as_str().unwrap().to_string());
    }
    let (status, answer) = server.post("/v1/tasks?wait=20s", &json!({"module": progress}));
    assert_eq!(status, 200, "{answer}");
    let progress_id = answer["task"]["id"].as_str().unwrap().to_string();

    // Events of the progress task, in order.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut line = String::new();
        if events.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        let event: Value = serde_json::from_str(data).unwrap();
        if event["id"] == progress_id.as_str() {
            seen.push(event["event"].as_str().unwrap().to_string());
            if event["event"] == "succeeded" {
                break;
            }
        }
    }
    assert_eq!(
        seen,
        [
            "submitted",
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "succeeded"
        ],
        "events of one task arrive in order"
    );

    let (_, list) = server.get("/v1/tasks?label=team=b");
    let listed: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()], "newest first");
    let (_, list) = server.get("/v1/tasks?state=succeeded&label=team%3Da");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
    let (_, list) = server.get("/v1/tasks?state=failed");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 0);

    // Pages.
    let (_, page1) = server.get("/v1/tasks?limit=3");
    assert_eq!(page1["tasks"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = server.get(&format!("/v1/tasks?limit=3&cursor={cursor}"));
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(page2["tasks"][0]["id"], ids[0].as_str());
    assert!(page2.get("next_cursor").is_none());

    let (_, stats) = server.get("/v1/stats");
    assert_eq!(stats["counts"]["succeeded"], 4, "{stats}");
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["workers"], 2);

    // Metrics parse as Prometheus text and agree with the stats.
    let (status, text) = server.get_text("/metrics");
    assert_eq!(status, 200);
    let mut metrics = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad line {line}"));
        metrics.insert(name.to_string(), value);
    }
    assert_eq!(metrics["wpool_tasks{state=\"succeeded\"}"], 4.0);
    assert_eq!(metrics["wpool_queue_depth"], 0.0);
    assert_eq!(metrics["wpool_workers"], 2.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = server.get_text("/metrics");
        if text.contains("wpool_task_duration_seconds_count 4") {
            assert!(
                text.contains(
                    "wpool_tasks_finished_total{state=\"succeeded\",outcome=\"success\"} 4"
                )
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, doc) = server.get("/v1/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/result",
        "/v1/modules",
        "/v1/events",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("SubmitTask").is_some());
}

#[test]
fn sigterm_with_tasks_running_exits_0_and_a_restart_finishes_every_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--workers", "2", "--stop-grace", "300ms"]);
    let sleep = server.upload(programs::P1_SLEEP);
    let mut ids = Vec::new();
    // Two long ones (killed at the grace period), then short ones queued.
    for ms in [5000, 5000, 100, 100, 100, 100] {
        let (status, answer) = server.post("/v1/tasks", &json!({"module": sleep, "input": ms}));
        assert_eq!(status, 201, "{answer}");
        ids.push(answer["task"]["id"].as_str().unwrap().to_string());
    }
    server.wait_state(&ids[0], "running");
    server.wait_state(&ids[1], "running");
    assert_eq!(
        server.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("unfinished tasks kept"),
        "{}",
        server.log()
    );

    let server = Server::start(dir.path(), &["--workers", "2"]);
    for id in &ids {
        let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait=30s"));
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["state"], "succeeded", "{result}");
        // A graceful stop is neither an attempt nor an interruption.
        assert_eq!(result["attempts"], 1, "{result}");
        assert_eq!(result["interruptions"], 0, "{result}");
    }
    let (_, stats) = server.get("/v1/stats");
    assert_eq!(stats["total"], 6, "no task lost or duplicated: {stats}");
    assert_eq!(stats["counts"]["succeeded"], 6, "{stats}");
}

/// A host killed with SIGKILL is not its tasks' failure: with default
/// options (one attempt) they run again after the restart and succeed,
/// each showing one interruption and one attempt.
#[test]
fn sigkill_with_tasks_running_and_a_restart_runs_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let sleep = server.upload(programs::P1_SLEEP);
    let mut ids = Vec::new();
    for ms in [3000, 3000, 50] {
        let (status, answer) = server.post("/v1/tasks", &json!({"module": sleep, "input": ms}));
        assert_eq!(status, 201, "{answer}");
        ids.push(answer["task"]["id"].as_str().unwrap().to_string());
    }
    server.wait_state(&ids[0], "running");
    server.wait_state(&ids[1], "running");
    drop(server); // SIGKILL

    let server = Server::start(dir.path(), &["--workers", "2"]);
    for (i, id) in ids.iter().enumerate() {
        let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait=30s"));
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["state"], "succeeded", "{result}");
        assert_eq!(result["attempts"], 1, "{result}");
        let interrupted = if i < 2 { 1 } else { 0 };
        assert_eq!(result["interruptions"], interrupted, "{result}");
        let (_, task) = server.get(&format!("/v1/tasks/{id}"));
        assert_eq!(task["task"]["interruptions"], interrupted, "{task}");
        assert_eq!(task["task"]["max_interruptions"], 3, "{task}");
    }
}

#[test]
fn load_thousands_of_concurrent_http_submissions_all_finish() {
    const TASKS: usize = 2000;
    const CONNECTIONS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let echo = server.upload(programs::P1_TRIVIAL);
    let url = server.url.clone();
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let url = url.clone();
                let echo = echo.clone();
                scope.spawn(move || {
                    let agent = agent();
                    let mut ids = Vec::new();
                    for i in (c..TASKS).step_by(CONNECTIONS) {
                        let (status, answer) = reply(
                            agent
                                .post(format!("{url}/v1/tasks"))
                                .header("Content-Type", "application/json")
                                .send(json!({"module": echo, "input": i}).to_string().as_bytes()),
                        );
                        assert_eq!(status, 201, "{answer}");
                        ids.push(answer["task"]["id"].as_str().unwrap().to_string());
                    }
                    ids
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let submit_time = started.elapsed();
    assert_eq!(ids.len(), TASKS);
    eprintln!(
        "{TASKS} HTTP submissions over {CONNECTIONS} connections in {submit_time:?}: {:.0}/s",
        TASKS as f64 / submit_time.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stats) = server.get("/v1/stats");
        if stats["counts"]["succeeded"] == TASKS {
            assert_eq!(stats["total"], TASKS);
            break;
        }
        assert!(Instant::now() < deadline, "not all finished: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in ids.iter().step_by(97) {
        let (status, result) = server.get(&format!("/v1/tasks/{id}/result"));
        assert_eq!(status, 200);
        assert_eq!(result["state"], "succeeded");
    }
    assert!(started.elapsed() < Duration::from_secs(90));
}
