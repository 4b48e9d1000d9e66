//! What a hostile client cannot do to `wpool serve`: hold connections with
//! trickled headers, open more connections than allowed, exhaust memory
//! with concurrent uploads, wait forever, or get an answer that is not
//! JSON. The real binary on `127.0.0.1:0`, driven over raw TCP.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wpool_test_artifacts as programs;

use crate::server::Server;

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` (which should say `Connection: close`) and reads the
/// answer to the end, within 20 s.
fn raw(addr: &str, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Raw {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head,
        body: bytes[split + 4..].to_vec(),
    }
}

/// The daemon's resident memory now and at its peak, in KiB, from
/// `/proc/PID/status`.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time the process has used, from `/proc/PID/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn trickled_headers_are_closed_after_the_header_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--header-timeout", "1s"]);

    // One client sends its headers a byte every 100 ms, forever; another
    // connects and sends nothing.
    let addr = server.addr.clone();
    let trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream
            .write_all(b"GET /v1/stats HTTP/1.1\r\nX-Slow: ")
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        while started.elapsed() < Duration::from_secs(20) {
            match stream.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some(started.elapsed()),
            }
            if stream.write_all(b"a").is_err() {
                return Some(started.elapsed());
            }
        }
        None
    });
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    // Meanwhile, everyone else is served.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut served = 0;
    while Instant::now() < deadline {
        assert_eq!(server.get("/healthz").0, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served > 0);

    let closed_after = trickler.join().unwrap();
    let closed_after = closed_after.expect("the trickling connection was never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed by the timeout, not at once: {closed_after:?}"
    );
    let mut buf = [0u8; 16];
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("an idle connection is closed too, not {other:?}"),
    }
    assert_eq!(server.get("/healthz").0, 200, "still serving");
}

#[test]
fn the_connection_limit_holds_new_connections_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--workers",
            "1",
            "--max-connections",
            "4",
            "--header-timeout",
            "60s",
        ],
    );
    // Four keep-alive connections, each answered once: all four are open.
    let mut open: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            stream
        })
        .collect();

    // A fifth is not served while they are open...
    let mut fifth = TcpStream::connect(&server.addr).unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 512];
    match fifth.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a fifth connection was served past the limit of 4: {other:?}"),
    }

    // ...and is, once one of them closes.
    drop(open.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn the_daemon_keeps_answering_when_file_descriptors_run_short() {
    let dir = tempfile::tempdir().unwrap();
    // A file-descriptor limit of 128, and a connection limit above it: the
    // accept loop meets EMFILE for real.
    let server = Server::start_with(
        dir.path(),
        &[
            "--workers",
            "1",
            "--max-connections",
            "1000",
            "--header-timeout",
            "2s",
        ],
        |command| {
            let mut wrapped = Command::new("prlimit");
            wrapped
                .arg("--nofile=128:128")
                .arg("--")
                .arg(command.get_program())
                .args(command.get_args());
            wrapped
        },
    );
    assert!(
        server.log().contains("more than the file-descriptor limit"),
        "{}",
        server.log()
    );
    let pid = server.pid();
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&server.addr).ok())
        .collect();
    assert!(idle.len() >= 150, "only {} connections", idle.len());

    // While descriptors are exhausted, the loop waits instead of spinning.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 50,
        "the daemon used {used} ticks of CPU in 1 s with nothing to do but wait"
    );

    // The idle connections are closed by the header timeout, and the
    // daemon answers again: nothing died.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = agent_get(&server, "/healthz");
        if answered == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after the idle connections timed out; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.log().contains("cannot accept"), "{}", server.log());
    drop(idle);
    assert_eq!(server.get("/healthz").0, 200);
}

/// A GET that gives up after 5 s instead of panicking.
fn agent_get(server: &Server, path: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(format!("{}{path}", server.url))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn wait_is_cut_to_the_servers_longest_wait() {
    let dir = tempfile::tempdir().unwrap();
    // The limits from a config file, as an operator would set them.
    let config = dir.path().join("wpool.toml");
    std::fs::write(
        &config,
        "max_wait = \"1s\"\nheader_timeout = \"5s\"\nmax_connections = 64\n\
         max_body_bytes_in_flight = \"8MiB\"\n",
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--workers", "1", "--config", config.to_str().unwrap()],
    );
    let sleep = server.upload(programs::P1_SLEEP);
    let started = Instant::now();
    let (status, answer) = server.post(
        "/v1/tasks?wait=9999999h",
        &json!({"module": sleep, "input": 60000}),
    );
    assert_eq!(status, 202, "not finished within the cut wait: {answer}");
    let id = answer["task"]["id"].as_str().unwrap().to_string();
    let (status, body) = server.get(&format!("/v1/tasks/{id}/result?wait=100d"));
    assert_eq!(status, 202, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waits were cut to 1s: {:?}",
        started.elapsed()
    );
    let bad = server.get(&format!("/v1/tasks/{id}/result?wait="));
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert_eq!(server.delete(&format!("/v1/tasks/{id}")).0, 200);
}

#[test]
fn every_error_status_has_a_json_body_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--workers",
            "1",
            "--token",
            "s3cret",
            "--body-timeout",
            "1s",
            "--max-input-size",
            "1MiB",
            "--max-queued",
            "1",
            "--max-body-bytes-in-flight",
            "1MiB",
        ],
    );
    let auth = "Authorization: bearer s3cret\r\n";
    let echo = {
        let wasm = std::fs::read(programs::P1_ECHO).unwrap();
        let mut request = format!(
            "POST /v1/modules HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/wasm\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            wasm.len()
        )
        .into_bytes();
        request.extend_from_slice(&wasm);
        let answer = raw(&server.addr, &request);
        assert_eq!(
            answer.status, 201,
            "lower-case `bearer` is accepted: {answer:?}"
        );
        answer.json()["hash"].as_str().unwrap().to_string()
    };
    let get = |path: &str, extra: &str| {
        raw(
            &server.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let post = |path: &str, content_type: &str, body: &str| {
        raw(
            &server.addr,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };

    // A delayed task fills the queue of one.
    let delayed = post(
        "/v1/tasks",
        "application/json",
        &json!({"module": echo, "delay": "1h"}).to_string(),
    );
    assert_eq!(delayed.status, 201, "{delayed:?}");
    let delayed_id = delayed.json()["task"]["id"].as_str().unwrap().to_string();
    let queue_full_answer = post(
        "/v1/tasks",
        "application/json",
        &json!({"module": echo}).to_string(),
    );
    let cancel = || {
        raw(
            &server.addr,
            format!(
                "DELETE /v1/tasks/{delayed_id} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    assert_eq!(cancel().status, 200);

    let cases: Vec<(u16, &str, Raw)> =
        vec![
        (400, "invalid_request", get("/v1/tasks/not-an-id", "")),
        (400, "invalid_request", get("/v1/tasks/%FF%FE", "")),
        (400, "invalid_request", get(&format!("/v1/modules/{}", "zz"), "")),
        (
            400,
            "malformed_json",
            post("/v1/tasks", "application/json", "{\"module\": "),
        ),
        (
            401,
            "unauthorized",
            raw(
                &server.addr,
                b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ),
        ),
        (404, "not_found", get("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", "")),
        (404, "not_found", get("/nowhere", "")),
        (
            405,
            "method_not_allowed",
            raw(
                &server.addr,
                format!("PATCH /v1/tasks HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
                    .as_bytes(),
            ),
        ),
        (
            408,
            "body_timeout",
            raw(
                &server.addr,
                format!(
                    "POST /v1/tasks HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
                     Content-Length: 100\r\nConnection: close\r\n\r\n{{\"module\""
                )
                .as_bytes(),
            ),
        ),
        (409, "already_finished", cancel()),
        // Past the route's limit (~1.4 MiB for an input limit of 1 MiB):
        // refused on the declared length, before the body is read.
        (
            413,
            "too_large",
            raw(
                &server.addr,
                format!(
                    "POST /v1/tasks HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
                     Content-Length: 2000000\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            ),
        ),
        (
            414,
            "uri_too_long",
            get(&format!("/v1/tasks?cursor={}", "a".repeat(70_000)), ""),
        ),
        (
            415,
            "unsupported_media_type",
            post("/v1/tasks", "text/plain", &json!({"module": echo}).to_string()),
        ),
        (
            415,
            "unsupported_media_type",
            post("/v1/modules", "application/x-www-form-urlencoded", "abc"),
        ),
        (429, "queue_full", queue_full_answer),
        (
            431,
            "headers_too_large",
            get("/v1/stats", &format!("X-Big: {}\r\n", "b".repeat(300_000))),
        ),
        (
            431,
            "headers_too_large",
            get("/v1/stats", &"X-Many: 1\r\n".repeat(150)),
        ),
        // Within the route's limit, past the budget of 1 MiB in flight.
        (
            503,
            "busy",
            raw(
                &server.addr,
                format!(
                    "POST /v1/tasks HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
                     Content-Length: 1200000\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            ),
        ),
    ];
    for (status, code, answer) in &cases {
        let body = answer.json();
        assert_eq!(answer.status, *status, "{code}: {answer:?}");
        assert_eq!(
            answer.header("content-type").as_deref(),
            Some("application/json"),
            "{code}: {answer:?}"
        );
        assert_eq!(body["error"]["code"], *code, "{status}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.len() > 10, "{status} {code}: a message: {body}");
    }
    let busy = &cases.last().unwrap().2;
    assert_eq!(busy.header("retry-after").as_deref(), Some("1"), "{busy:?}");
    let not_allowed = &cases[7].2;
    assert!(
        not_allowed
            .header("allow")
            .is_some_and(|a| a.contains("POST")),
        "{not_allowed:?}"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn validation_agrees_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    let echo = server.upload(programs::P1_ECHO);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let eleven_years_ms = 11 * 365 * 24 * 3600 * 1000u64;
    for (body, code, says) in [
        (
            json!({"module": echo, "run_at": now_ms + eleven_years_ms}),
            "invalid_task",
            "ten years",
        ),
        (
            json!({"module": echo, "run_at": u64::MAX}),
            "invalid_task",
            "ten years",
        ),
        (
            json!({"module": echo, "expire_at": now_ms + eleven_years_ms}),
            "invalid_task",
            "ten years",
        ),
        (
            json!({"module": echo, "fuel": 1u64 << 63}),
            "invalid_limit",
            "too large",
        ),
        (
            json!({"module": echo, "labels": {"a=b": "c"}}),
            "invalid_task",
            "contains `=`",
        ),
    ] {
        let (status, answer) = server.post("/v1/tasks", &body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // The largest values allowed are accepted.
    let (status, answer) = server.post(
        "/v1/tasks",
        &json!({"module": echo, "fuel": i64::MAX, "run_at": now_ms + 3_600_000,
                "backoff": {"initial": "10m"}, "input_base64": "AB=="}),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["task"]["fuel"], i64::MAX);

    // JSON does not tell 5 from 5.0, and JSON Schema calls both integers:
    // whole numbers written with a fraction are accepted, others are not.
    let (status, answer) = server.post(
        "/v1/tasks",
        &json!({"module": echo, "priority": 5.0, "max_attempts": 2.0, "memory": 70000.0,
                "run_at": 1.0, "timeout": 5000.0}),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["task"]["priority"], 5);
    assert_eq!(answer["task"]["memory"], 70000);
    let (status, answer) = server.post("/v1/tasks", &json!({"module": echo, "priority": 5.5}));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a whole number"),
        "{answer}"
    );
    let (status, list) = server.get("/v1/tasks?limit=2.0");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2);
}

#[test]
fn the_openapi_document_describes_binary_uploads_enums_patterns_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--token", "t"]);
    let doc = {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(format!("{}/v1/openapi.json", server.url))
            .header("Authorization", "Bearer t")
            .call()
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let upload = &doc["paths"]["/v1/modules"]["post"];
    let body = &upload["requestBody"]["content"]["application/wasm"]["schema"];
    let body = match body.get("$ref") {
        Some(r) => &doc["components"]["schemas"][r.as_str().unwrap().rsplit('/').next().unwrap()],
        None => body,
    };
    assert_eq!(body["type"], "string", "{body}");
    assert_eq!(body["format"], "binary", "{body}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(upload["security"], json!([{"bearer": []}]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["TaskState"]["enum"].as_array().unwrap().len() == 7);
    assert!(
        schemas["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("busy"))
    );
    let kinds = schemas["OutcomeKind"]["enum"].as_array().unwrap();
    assert_eq!(kinds.len(), 12);
    assert!(kinds.contains(&json!("interrupted")));
    let get_task = &doc["paths"]["/v1/tasks/{id}"]["get"];
    assert!(
        get_task["parameters"][0]["schema"]["pattern"]
            .as_str()
            .is_some()
    );
    for status in ["400", "401", "404", "413", "503"] {
        assert!(
            get_task["responses"].get(status).is_some(),
            "{status} undocumented"
        );
    }
    for status in ["400", "401", "404", "413", "415", "429", "503"] {
        assert!(
            doc["paths"]["/v1/tasks"]["post"]["responses"]
                .get(status)
                .is_some(),
            "{status} undocumented on submit"
        );
    }
}

#[test]
fn concurrent_chunked_uploads_past_the_limits_keep_the_daemons_memory_bounded() {
    // 32 clients at once, each streaming a body past its route's limit,
    // without a Content-Length: 16 task submissions of 2 MiB (the limit
    // is ~1.4 MiB) and 16 module uploads of 10 MiB (the limit is 8 MiB),
    // 192 MiB in all against a budget of 32 MiB in flight.
    const BUDGET_MIB: u64 = 32;
    // What the daemon may add over its start: the budget, plus room for
    // per-connection buffers, thread stacks and allocator slack.
    const BOUND_MIB: u64 = BUDGET_MIB + 64;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--workers",
            "1",
            "--max-input-size",
            "1MiB",
            "--max-module-size",
            "8MiB",
            "--max-body-bytes-in-flight",
            &format!("{BUDGET_MIB}MiB"),
        ],
    );
    let echo = server.upload(programs::P1_ECHO);
    assert_eq!(server.get("/v1/stats").0, 200);
    let pid = server.pid();
    let (start_kib, _) = rss_kib(pid);

    let addr = server.addr.clone();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..32)
            .map(|i| {
                let addr = addr.clone();
                scope.spawn(move || {
                    let (path, content_type, total) = if i % 2 == 0 {
                        ("/v1/tasks", "application/json", 2usize << 20)
                    } else {
                        ("/v1/modules", "application/wasm", 10usize << 20)
                    };
                    let mut stream = TcpStream::connect(&addr).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    stream
                        .set_write_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let _ = write!(
                        stream,
                        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
                         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    );
                    let chunk = vec![b' '; 64 << 10];
                    let mut sent = 0;
                    while sent < total {
                        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
                            || stream.write_all(&chunk).is_err()
                            || stream.write_all(b"\r\n").is_err()
                        {
                            break;
                        }
                        sent += chunk.len();
                    }
                    let _ = stream.write_all(b"0\r\n\r\n");
                    let mut answer = Vec::new();
                    let _ = stream.read_to_end(&mut answer);
                    if answer.is_empty() {
                        return 0;
                    }
                    parse(&answer).status
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let (end_kib, peak_kib) = rss_kib(pid);
    let rise_mib = peak_kib.saturating_sub(start_kib) / 1024;
    eprintln!(
        "daemon RSS: {} MiB at start, peak {} MiB (+{rise_mib} MiB), {} MiB after; \
         answers: {statuses:?}",
        start_kib / 1024,
        peak_kib / 1024,
        end_kib / 1024
    );
    // Each is refused as too large (413) or over the budget (503); a
    // client still writing when the server closes may see a reset instead.
    for status in &statuses {
        assert!(
            [0, 413, 503].contains(status),
            "every upload is refused: {statuses:?}"
        );
    }
    assert!(
        statuses.iter().any(|s| *s != 0),
        "some refusals are read: {statuses:?}"
    );
    assert!(
        rise_mib <= BOUND_MIB,
        "the daemon's RSS rose by {rise_mib} MiB, more than {BOUND_MIB} MiB"
    );
    // No upload file is left behind, and the daemon still works.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (status, answer) = server.post(
        "/v1/tasks?wait=20s",
        &json!({"module": echo, "input": "after"}),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_module_upload_is_streamed_to_the_data_directory_and_registered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1"]);
    // Chunked, without a length, in small pieces.
    let wasm = std::fs::read(programs::P1_ECHO).unwrap();
    let mut request = b"POST /v1/modules HTTP/1.1\r\nHost: x\r\nContent-Type: application/wasm\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for piece in wasm.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(&server.addr, &request);
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.json()["size"], wasm.len());
    let hash = answer.json()["hash"].as_str().unwrap().to_string();
    let (status, result) = server.post(
        "/v1/tasks?wait=20s",
        &json!({"module": hash, "input": "streamed"}),
    );
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["result"]["output"], "\"streamed\"");
    let leftovers = std::fs::read_dir(dir.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "the upload file is removed once registered");
}
