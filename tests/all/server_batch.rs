//! `POST /v1/tasks:batch` and `wpool submit --inputs` over it: the real
//! binary, real HTTP, real WASM.

use serde_json::{Value, json};
use wpool_test_artifacts as programs;

use crate::cli::{stderr, stdout, wpool, wpool_unnamed};
use crate::server::{Reply, Server, agent};

/// POSTs `body` to the batch endpoint with `content_type`.
fn batch(server: &Server, content_type: &str, body: &[u8]) -> Reply {
    let (status, answer, _) = batch_with_headers(server, content_type, body);
    (status, answer)
}

/// Like [`batch`], with the `Retry-After` header of the answer.
fn batch_with_headers(
    server: &Server,
    content_type: &str,
    body: &[u8],
) -> (u16, Value, Option<String>) {
    let mut response = agent()
        .post(format!("{}/v1/tasks:batch", server.url))
        .header("Content-Type", content_type)
        .send(body)
        .expect("request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        retry_after,
    )
}

fn total_tasks(server: &Server) -> u64 {
    let (status, stats) = server.get("/v1/stats");
    assert_eq!(status, 200, "{stats}");
    stats["total"].as_u64().unwrap()
}

#[test]
fn an_array_batch_answers_each_item_in_order_with_key_hits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let module = server.upload(programs::P1_ECHO);
    let unknown = "0".repeat(64);
    let body = json!([
        {"module": module, "input": {"n": 0}},
        {"module": module, "input": {"n": 1}, "idempotency_key": "k1"},
        {"module": module, "priority": "high"},
        5,
        {"module": unknown},
        {"module": module, "input": {"n": 5}, "idempotency_key": "k1"},
        {"module": module, "input_base64": "!!"},
    ]);
    let (status, answer) = batch(&server, "application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "{answer}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"], i, "{item}");
        assert!(item.get("line").is_none(), "no lines in an array: {item}");
    }
    assert_eq!(items[0]["created"], true);
    assert_eq!(items[1]["created"], true);
    let error = |i: usize| {
        (
            items[i]["error"]["code"].as_str().unwrap_or("").to_string(),
            items[i]["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    let (code, message) = error(2);
    assert_eq!(code, "invalid_request", "{answer}");
    assert!(message.starts_with("item 2: "), "{message}");
    let (code, message) = error(3);
    assert_eq!(code, "invalid_request");
    assert_eq!(message, "item 3: a task must be a JSON object");
    let (code, message) = error(4);
    assert_eq!(code, "unknown_module", "{answer}");
    assert!(message.starts_with("item 4: unknown module"), "{message}");
    // The same key twice in one batch: the second names the first.
    assert_eq!(items[5]["created"], false);
    assert_eq!(items[5]["id"], items[1]["id"]);
    assert_eq!(error(6).0, "invalid_base64");
    assert!(items[2..=4].iter().all(|i| i.get("id").is_none()));
    assert_eq!(answer["created"], 2);
    assert_eq!(answer["existing"], 1);
    assert_eq!(answer["failed"], 4);
    assert_eq!(total_tasks(&server), 2, "only the valid items were stored");

    // The key again, in another batch: the same task.
    let again = json!([{"module": module, "idempotency_key": "k1"}]);
    let (status, answer) = batch(&server, "application/json", again.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["items"][0]["created"], false);
    assert_eq!(answer["items"][0]["id"], items[1]["id"]);
    assert_eq!(answer["existing"], 1);

    // The tasks run.
    let id = items[0]["id"].as_str().unwrap();
    let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait=30s"));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "succeeded");
    assert_eq!(result["output"], "{\"n\":0}");
}

#[test]
fn a_json_lines_batch_names_lines_counting_blank_ones_and_bad_batches_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "2"]);
    let module = server.upload(programs::P1_ECHO);
    let task = |n: u32| json!({"module": module, "input": n}).to_string();
    let body = format!("\n{}\n\n  \n{{\"module\": \n{}\r\n", task(1), task(2));
    for media in ["application/x-ndjson", "application/jsonl"] {
        let (status, answer) = batch(&server, media, body.as_bytes());
        assert_eq!(status, 200, "{answer}");
        let items = answer["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{answer}");
        assert_eq!(items[0]["line"], 2);
        assert_eq!(items[0]["created"], true);
        assert_eq!(items[1]["line"], 5);
        assert_eq!(items[1]["index"], 1);
        assert_eq!(items[1]["error"]["code"], "malformed_json");
        let message = items[1]["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("line 5: "), "{message}");
        assert_eq!(items[2]["line"], 6);
        assert_eq!(items[2]["created"], true);
    }
    assert_eq!(total_tasks(&server), 4);

    // Refused whole, nothing stored: an empty batch, in either form; not
    // an array; more than 10000 tasks; a type the route does not take.
    let refused = |media: &str, body: &[u8], status: u16, code: &str, says: &str| {
        let (got, answer) = batch(&server, media, body);
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    };
    refused(
        "application/json",
        b"[]",
        400,
        "invalid_request",
        "no tasks",
    );
    refused(
        "application/x-ndjson",
        b"\n \n",
        400,
        "invalid_request",
        "no tasks",
    );
    refused(
        "application/json",
        task(1).as_bytes(),
        400,
        "invalid_request",
        "JSON array",
    );
    refused(
        "application/json",
        b"[{",
        400,
        "malformed_json",
        "not valid JSON",
    );
    // JSON Lines sent as JSON: the message says which type to send.
    refused(
        "application/json",
        body.trim_start().as_bytes(),
        400,
        "malformed_json",
        "application/x-ndjson",
    );
    let many = Value::Array(vec![json!({"module": module}); 10_001]);
    refused(
        "application/json",
        many.to_string().as_bytes(),
        413,
        "too_large",
        "10000",
    );
    refused(
        "text/plain",
        b"[]",
        415,
        "unsupported_media_type",
        "application/x-ndjson",
    );
    assert_eq!(total_tasks(&server), 4, "nothing stored by a refused batch");
}

#[test]
fn a_full_queue_refuses_the_whole_batch_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--workers", "1", "--max-queued", "5"]);
    let module = server.upload(programs::P1_SLEEP);
    // An hour's sleep each: the queue stays as filled.
    let tasks = |n: usize| Value::Array(vec![json!({"module": module}); n]).to_string();
    let (status, answer) = batch(&server, "application/json", tasks(3).as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["created"], 3);
    // 2 or 3 waiting (one may have started): 4 more do not fit in 5.
    let (status, answer, retry_after) =
        batch_with_headers(&server, "application/json", tasks(4).as_bytes());
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "queue_full");
    assert!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok()),
        "Retry-After"
    );
    assert_eq!(
        total_tasks(&server),
        3,
        "nothing of the refused batch stored"
    );
    // 2 more fit.
    let (status, answer) = batch(&server, "application/json", tasks(2).as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["created"], 2);
    assert_eq!(total_tasks(&server), 5);
}

/// An inputs file with blank lines: at the start, between, and at the end.
fn inputs_with_blank_lines(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("inputs.jsonl");
    std::fs::write(&path, "\n{\"n\":1}\n\n\n{\"n\":2}\n   \n{\"n\":3}\n\n").unwrap();
    path
}

#[test]
fn submit_inputs_uses_the_batch_endpoint_with_the_files_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--workers", "2", "--max-input-size", "1KiB"],
    );
    let inputs = inputs_with_blank_lines(dir.path());
    let inputs = inputs.to_str().unwrap();
    let out = wpool(
        &server.url,
        &["submit", programs::P1_ECHO, "--inputs", inputs, "--wait"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 5, 7], "the file's own line numbers");
    for (line, n) in lines.iter().zip(1..) {
        assert_eq!(line["state"], "succeeded", "{line}");
        assert_eq!(line["output"], format!("{{\"n\":{n}}}"));
    }
    // One request for the three lines, not one per line.
    let log = server.log();
    assert!(log.contains("/v1/tasks:batch"), "{log}");
    assert!(
        !log.contains("path=/v1/tasks status"),
        "no single submissions: {log}"
    );

    // A line past the server's input limit is refused alone, named by its
    // line; the others go in; exit 3.
    let mixed = dir.path().join("mixed.jsonl");
    let big = format!("\"{}\"", "x".repeat(2000));
    std::fs::write(&mixed, format!("1\n\n{big}\n2\n")).unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            mixed.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    assert_eq!(lines[0]["line"], 1);
    assert!(lines[0]["id"].is_string());
    assert_eq!(lines[1]["line"], 3);
    let error = lines[1]["error"].as_str().unwrap();
    assert!(error.contains("more than the limit"), "{error}");
    assert!(
        !error.contains("item "),
        "the file's line, not the request's item: {error}"
    );
    assert_eq!(lines[2]["line"], 4);
    assert!(lines[2]["id"].is_string());
    assert!(
        stderr(&out).contains("mixed.jsonl line 3: the input is"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("2 of 3 tasks submitted"),
        "{}",
        stderr(&out)
    );

    // A line that is not JSON: refused before anything is sent, by its
    // line counting the blank ones.
    std::fs::write(&mixed, "1\n\n\nnot json\n").unwrap();
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            mixed.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 4: not JSON"),
        "{}",
        stderr(&out)
    );

    // One key for every line: the first line creates the task, the others
    // name it.
    let out = wpool(
        &server.url,
        &[
            "submit",
            programs::P1_ECHO,
            "--inputs",
            inputs,
            "--key",
            "same",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].get("existing").is_none(), "{}", lines[0]);
    assert!(
        lines[1..].iter().all(|l| l["existing"] == true),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["id"] == lines[0]["id"]), "{lines:?}");

    // No server at the address named: exit 4, nothing submitted.
    let out = wpool(
        "http://127.0.0.1:9",
        &["submit", programs::P1_ECHO, "--inputs", inputs],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn submit_inputs_with_no_server_numbers_lines_as_the_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let inputs = inputs_with_blank_lines(dir.path());
    let inputs = inputs.to_str().unwrap();

    // Queued only.
    let out = wpool_unnamed(&[
        "submit",
        programs::P1_ECHO,
        "--inputs",
        inputs,
        "--data-dir",
        data,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("queued 3 task(s)"),
        "{}",
        stderr(&out)
    );
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 5, 7]);
    assert!(lines.iter().all(|l| l["id"].is_string()), "{lines:?}");

    // Run by an embedded pool.
    let out = wpool_unnamed(&[
        "submit",
        programs::P1_ECHO,
        "--inputs",
        inputs,
        "--data-dir",
        data,
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 5, 7]);
    for (line, n) in lines.iter().zip(1..) {
        assert_eq!(line["state"], "succeeded", "{line}");
        assert_eq!(line["output"], format!("{{\"n\":{n}}}"));
    }
}
