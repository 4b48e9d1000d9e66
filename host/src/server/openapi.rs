//! The OpenAPI document as served: what utoipa derives from the handlers,
//! completed where a derive cannot say what the server checks. It is meant
//! to be usable by a client generator as it is, and to agree with the
//! server in both directions: what it calls valid, the server accepts.
//!
//! - `SubmitTask` is written out by hand: durations, sizes and counts are
//!   a number or a string with a unit, each within the server's range;
//!   fields that exclude each other say so; label keys cannot contain `=`.
//! - States, outcome kinds, cancel results and error codes are enums; ids
//!   and hashes carry their pattern.
//! - Every operation lists the error statuses any request can get (400,
//!   401 with a token, 408, 413, 414, 431, 503) beside its own.
//! - A bearer security scheme, required when the server has a token.

use serde_json::{Value, json};
use utoipa::OpenApi as _;

use super::ServerConfig;
use super::error::ErrorCode;
use super::routes::ApiDoc;
use super::types::MAX_AHEAD;

/// A task id: a ULID, 26 characters of Crockford base32 (either case).
pub(crate) const ID_PATTERN: &str = "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$";

/// A module hash: SHA-256 as 64 hex digits, `sha256:` in front allowed.
pub(crate) const HASH_PATTERN: &str = "^(sha256:)?[0-9a-fA-F]{64}$";

/// A duration as `?wait=` takes it: one to four parts of a number and a
/// unit (`500ms`, `1m30s`). The server cuts it to its longest wait.
pub(crate) const WAIT_PATTERN: &str = "^(([0-9]{1,9}(\\.[0-9]{0,9})?|\\.[0-9]{1,9})(ns|us|ms|s|sec|secs|m|min|mins|h|hr|hrs|d|day|days)){1,4}$";

/// The task states, in the order of a task's life.
const STATES: [&str; 7] = [
    "queued",
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
];

/// How a run can end.
const OUTCOME_KINDS: [&str; 12] = [
    "success",
    "failed",
    "exit",
    "trap",
    "timeout",
    "out_of_fuel",
    "memory_limit",
    "output_too_large",
    "cancelled",
    "invalid_module",
    "host_error",
    "interrupted",
];

/// What [`ModuleSettings::validate`](crate::ModuleSettings::validate)
/// checks and a schema can say. What it cannot (the total size of the
/// arguments and environment, a scratch directory only for preview-1
/// commands and within the operator's `max_scratch`, `input_file` only
/// with `scratch`) is refused with `400 invalid_settings`, documented on
/// the operation.
fn module_settings_constraints(schema: &mut Value) {
    use crate::settings::{MAX_ARGS, MAX_ENV, MAX_NAME_LEN, MAX_SUCCESS_CODES};
    let properties = &mut schema["properties"];
    properties["name"]["pattern"] = json!("^[A-Za-z0-9][A-Za-z0-9._+-]*$");
    properties["name"]["minLength"] = json!(1);
    properties["name"]["maxLength"] = json!(MAX_NAME_LEN);
    properties["args"]["maxItems"] = json!(MAX_ARGS);
    properties["args"]["items"]["pattern"] = json!("^[^\\u0000]*$");
    properties["env"]["maxProperties"] = json!(MAX_ENV);
    properties["env"]["propertyNames"] = json!({"pattern": "^[^=\\u0000]+$"});
    properties["env"]["additionalProperties"] =
        json!({"type": "string", "pattern": "^[^\\u0000]*$"});
    properties["success_codes"]["maxItems"] = json!(MAX_SUCCESS_CODES);
    properties["success_codes"]["uniqueItems"] = json!(true);
    properties["scratch"]["minimum"] = json!(1);
}

/// The document for a server with `config`.
pub(crate) fn document(config: &ServerConfig, max_workers: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["WorkersRequest"]["properties"]["workers"]["minimum"] = json!(1);
    schemas["WorkersRequest"]["properties"]["workers"]["maximum"] = json!(max_workers);
    schemas["PurgeRequest"]["properties"]["state"] = json!({"type": ["string", "null"], "enum": ["succeeded", "failed", "cancelled", "expired", null]});
    schemas["SubmitTask"] = submit_task(config.max_task_memory);
    schemas["TaskState"] = json!({
        "type": "string", "enum": STATES, "description": "Where a task is in its life."
    });
    schemas["OutcomeKind"] = json!({
        "type": "string", "enum": OUTCOME_KINDS, "description": "How a run ended."
    });
    schemas["ErrorCode"] = json!({
        "type": "string",
        "enum": error_codes(),
        "description": "A stable, machine-readable error code."
    });
    let task_state = json!({"$ref": "#/components/schemas/TaskState"});
    schemas["TaskView"]["properties"]["state"] = task_state.clone();
    schemas["TaskView"]["properties"]["id"]["pattern"] = json!(ID_PATTERN);
    schemas["TaskView"]["properties"]["module"]["pattern"] = json!(HASH_PATTERN);
    schemas["ResultView"]["properties"]["state"] = task_state;
    schemas["ResultView"]["properties"]["id"]["pattern"] = json!(ID_PATTERN);
    schemas["OutcomeView"]["properties"]["kind"] =
        json!({"$ref": "#/components/schemas/OutcomeKind"});
    schemas["ErrorDetail"]["properties"]["code"] =
        json!({"$ref": "#/components/schemas/ErrorCode"});
    schemas["ModuleInfo"]["properties"]["hash"]["pattern"] = json!(HASH_PATTERN);
    module_settings_constraints(&mut schemas["ModuleSettings"]);
    schemas["CancelAnswer"]["properties"]["cancel"] =
        json!({"type": "string", "enum": ["cancelled", "killed"]});
    schemas["CancelAnswer"]["properties"]["id"]["pattern"] = json!(ID_PATTERN);

    batch(&mut doc);
    add_examples_and_links(&mut doc);
    // Each server-sent event: its name (the event's kind, or `lagged`) and
    // its data, a JSON object.
    doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] = json!({
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "description": "the event's kind: submitted, started, \
                progress, retrying, succeeded, failed, cancelled, expired, requeued, interrupted, or lagged"},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "description": "the event as JSON"},
            "id": {"type": "string"},
            "retry": {"type": "integer"}
        }
    });
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The token `wpool serve` was started with (--token, WPOOL_TOKEN)."
        }
    });
    let with_token = config.token.is_some();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                complete_operation(path, method, operation, with_token);
            }
        }
    }
    doc
}

/// `POST /v1/tasks:batch`: the same array of tasks under each media type
/// it takes (as JSON Lines, each element is a line), and an item that is
/// either a task or an error.
fn batch(doc: &mut Value) {
    use super::types::MAX_BATCH;
    let tasks = json!({
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_BATCH,
        "items": {"$ref": "#/components/schemas/SubmitTask"}
    });
    let content = &mut doc["paths"]["/v1/tasks:batch"]["post"]["requestBody"]["content"];
    content["application/json"]["schema"] = tasks.clone();
    for lines in ["application/x-ndjson", "application/jsonl"] {
        content[lines] = json!({"schema": tasks});
    }
    let item = &mut doc["components"]["schemas"]["BatchItem"];
    item["properties"]["id"]["pattern"] = json!(ID_PATTERN);
    item["properties"]["line"]["minimum"] = json!(1);
    item["properties"]["error"] = json!({"$ref": "#/components/schemas/ErrorDetail"});
    item["oneOf"] = json!([
        {"required": ["id", "created"], "not": {"required": ["error"]}},
        {"required": ["error"], "not": {"anyOf": [{"required": ["id"]}, {"required": ["created"]}]}},
    ]);
}

/// The smallest WASI command: `_start` does nothing. Every byte is ASCII,
/// so it stands in the document as a plain string example of an upload.
const EXAMPLE_MODULE: &[u8] = b"\0asm\x01\0\0\0\
    \x01\x04\x01\x60\0\0\
    \x03\x02\x01\0\
    \x07\x0a\x01\x06_start\0\0\
    \x0a\x04\x01\x02\0\x0b";

/// Examples that work against a fresh server (a module to upload, a task
/// of it to submit), and the links from what creates a module or a task
/// to what reads, runs or deletes it, for clients and stateful tests.
fn add_examples_and_links(doc: &mut Value) {
    let module = String::from_utf8_lossy(EXAMPLE_MODULE).to_string();
    let hash = crate::ModuleHash::of(EXAMPLE_MODULE).to_string();
    let paths = &mut doc["paths"];
    let upload = &mut paths["/v1/modules"]["post"]["requestBody"]["content"];
    upload["application/wasm"]["example"] = json!(module);
    // The same bytes under the generic binary type, which the server takes
    // too and every client library can send.
    upload["application/octet-stream"] = upload["application/wasm"].clone();
    paths["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["example"] =
        json!({"module": hash, "input": {"name": "Ada"}, "timeout": "5s"});
    let batch = json!([
        {"module": hash, "input": {"name": "Ada"}},
        {"module": hash, "input": {"name": "Grace"}, "idempotency_key": "grace"},
    ]);
    for media in [
        "application/json",
        "application/x-ndjson",
        "application/jsonl",
    ] {
        paths["/v1/tasks:batch"]["post"]["requestBody"]["content"][media]["example"] =
            batch.clone();
    }
    let by_hash = json!({"hash": "$response.body#/hash"});
    let module_links = json!({
        "GetModule": {"operationId": "get_module", "parameters": by_hash},
        "DeleteModule": {"operationId": "delete_module", "parameters": by_hash},
        "GetModuleSettings": {"operationId": "get_module_settings", "parameters": by_hash},
        "PutModuleSettings": {"operationId": "put_module_settings", "parameters": by_hash},
        "SubmitTask": {"operationId": "submit_task",
                       "requestBody": {"module": "$response.body#/hash"}},
    });
    for status in ["200", "201"] {
        paths["/v1/modules"]["post"]["responses"][status]["links"] = module_links.clone();
    }
    let by_id = json!({"id": "$response.body#/task/id"});
    let task_links = json!({
        "GetTask": {"operationId": "get_task", "parameters": by_id},
        "GetResult": {"operationId": "get_result", "parameters": by_id},
        "CancelTask": {"operationId": "cancel_task", "parameters": by_id},
        "GetInput": {"operationId": "get_input", "parameters": by_id},
        "GetOutput": {"operationId": "get_output", "parameters": by_id},
        "RetryTask": {"operationId": "retry_task", "parameters": by_id},
        "DeleteTask": {"operationId": "delete_task", "parameters": by_id},
    });
    for status in ["200", "201", "202"] {
        paths["/v1/tasks"]["post"]["responses"][status]["links"] = task_links.clone();
    }
}

fn error_codes() -> Vec<Value> {
    use ErrorCode::*;
    [
        MalformedJson,
        InvalidRequest,
        InvalidBase64,
        InvalidModule,
        InvalidSettings,
        InvalidLimit,
        InvalidTask,
        Unauthorized,
        UnknownModule,
        NotFound,
        MethodNotAllowed,
        BodyTimeout,
        ModuleInUse,
        AlreadyFinished,
        NotFinished,
        TooLarge,
        UriTooLong,
        UnsupportedMediaType,
        QueueFull,
        HeadersTooLarge,
        Internal,
        Busy,
        StorageFull,
        ShuttingDown,
        StoreUnavailable,
        HttpError,
    ]
    .iter()
    .map(|code| serde_json::to_value(code).unwrap_or_default())
    .collect()
}

/// Adds the error answers every request may get, the security
/// requirement, and the patterns of path and query parameters.
fn complete_operation(path: &str, method: &str, operation: &mut Value, with_token: bool) {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    };
    let busy = json!({
        "description": "too many request bodies in flight, the task store out of reach (`store_unavailable`), or shutting down; retry after Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0},
                     "description": "seconds to wait before retrying"}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    let responses = &mut operation["responses"];
    let mut add = |status: &str, answer: Value| {
        if responses.get(status).is_none() {
            responses[status] = answer;
        }
    };
    add(
        "400",
        error("malformed request: a parameter, a header or the body (see the code)"),
    );
    add(
        "408",
        error("the request body did not arrive within the body timeout"),
    );
    add(
        "413",
        error("the request body is larger than the route's limit"),
    );
    add("414", error("the URI is too long"));
    add("431", error("the request's headers are too large"));
    add("503", busy);
    let public = path == "/healthz";
    if !public {
        add(
            "401",
            error("no bearer token, or the wrong one (when the server has a token)"),
        );
    }
    if method == "post" {
        add(
            "415",
            error("the body's Content-Type is not one the operation takes"),
        );
    }
    if with_token && !public {
        operation["security"] = json!([{"bearer": []}]);
    } else {
        operation["security"] = json!([{}]);
    }
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or("").to_string();
            let schema = match name.as_str() {
                "id" | "cursor" | "task" => json!({"type": "string", "pattern": ID_PATTERN}),
                "hash" => json!({"type": "string", "pattern": HASH_PATTERN}),
                "wait" => json!({"type": "string", "pattern": WAIT_PATTERN}),
                "state" => json!({"$ref": "#/components/schemas/TaskState"}),
                "label" => json!({"type": "string", "pattern": "="}),
                "limit" => json!({"type": "integer", "minimum": 1, "maximum": 10000}),
                _ => continue,
            };
            parameter["schema"] = schema;
        }
    }
}

/// A duration: milliseconds from `min_ms` to `max_ms`, or a string with
/// one unit whose digits keep it in that range (at least 1 unless
/// `min_ms` is 0).
fn duration(description: &str, min_ms: u64, max_ms: u64) -> Value {
    // Digits allowed per unit so that the largest value stays <= max_ms.
    let units: [(&str, u64); 5] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    let first = if min_ms == 0 { "[0-9]" } else { "[1-9]" };
    let alternatives: Vec<String> = units
        .iter()
        .filter_map(|(unit, ms)| {
            let most = max_ms / ms;
            if most < 10 {
                // One digit, up to `most`.
                let low = if min_ms == 0 { 0 } else { 1 };
                return (most >= low).then(|| format!("[{low}-{most}]{unit}"));
            }
            // The most digits d with 10^d - 1 <= most.
            let digits = (1..=18u32)
                .take_while(|d| 10u64.pow(*d) - 1 <= most)
                .last()?;
            Some(format!("{first}[0-9]{{0,{}}}{unit}", digits - 1))
        })
        .collect();
    json!({
        "description": format!(
            "{description} Milliseconds ({min_ms} to {max_ms}), or a string with a unit \
             (ms, s, m, h, d), e.g. \"5s\"."
        ),
        "oneOf": [
            {"type": "integer", "minimum": min_ms, "maximum": max_ms},
            {"type": "string", "pattern": format!("^({})$", alternatives.join("|"))},
        ]
    })
}

/// A size in bytes: a number from `min` to `max`, or a string with a unit.
fn size(description: &str, min: u64, max: u64, string_pattern: &str) -> Value {
    json!({
        "description": format!(
            "{description} Bytes ({min} to {max}), or a string with a unit, e.g. \"64MiB\"."
        ),
        "oneOf": [
            {"type": "integer", "minimum": min, "maximum": max},
            {"type": "string", "pattern": string_pattern},
        ]
    })
}

/// `field` may also be `null`, which means the same as leaving it out.
fn nullable(schema: Value) -> Value {
    json!({"oneOf": [schema, {"type": "null"}]})
}

/// A size from `min` to `max` bytes written as a whole number of KiB, MiB
/// or GiB: exactly the strings of that form the server takes in range.
fn binary_size_pattern(min: u64, max: u64) -> String {
    let alternatives: Vec<String> = [("KiB", 10), ("MiB", 20), ("GiB", 30)]
        .into_iter()
        .filter_map(|(unit, shift)| {
            let low = min.div_ceil(1 << shift).max(1);
            let high = max >> shift;
            (low <= high).then(|| format!("{}{unit}", integer_range_pattern(low, high)))
        })
        .collect();
    format!("^({})$", alternatives.join("|"))
}

/// A regular expression for the decimal numbers from `low` to `high`
/// (`low <= high`), written without leading zeros.
fn integer_range_pattern(low: u64, high: u64) -> String {
    let mut alternatives = Vec::new();
    let (low_digits, high_digits) = (low.to_string().len(), high.to_string().len());
    for digits in low_digits..=high_digits {
        let exponent = u32::try_from(digits - 1).unwrap_or(0);
        let from = low.max(10u64.pow(exponent));
        let to = high.min(10u64.saturating_pow(exponent + 1) - 1);
        if from <= to {
            digit_range(&from.to_string(), &to.to_string(), &mut alternatives);
        }
    }
    if alternatives.len() == 1 {
        alternatives.remove(0)
    } else {
        format!("({})", alternatives.join("|"))
    }
}

/// Adds to `out` the alternatives that match the digit strings from `low`
/// to `high`, both of the same length (leading zeros allowed).
fn digit_range(low: &str, high: &str, out: &mut Vec<String>) {
    let any = |n: usize| match n {
        0 => String::new(),
        1 => "[0-9]".to_string(),
        n => format!("[0-9]{{{n}}}"),
    };
    let class = |a: u8, b: u8| {
        if a == b {
            char::from(a).to_string()
        } else {
            format!("[{}-{}]", char::from(a), char::from(b))
        }
    };
    let (l, h) = (low.as_bytes(), high.as_bytes());
    let Some((&l0, l_rest)) = l.split_first() else {
        out.push(String::new());
        return;
    };
    let h0 = h[0];
    let (low_rest, high_rest) = (&low[1..], &high[1..]);
    let rest = l_rest.len();
    if l0 == h0 {
        let mut inner = Vec::new();
        digit_range(low_rest, high_rest, &mut inner);
        for tail in inner {
            out.push(format!("{}{tail}", char::from(l0)));
        }
        return;
    }
    let low_full = low_rest.bytes().all(|b| b == b'0');
    let high_full = high_rest.bytes().all(|b| b == b'9');
    // The first digit alone, with every tail, from `first` to `last`.
    let first = if low_full { l0 } else { l0 + 1 };
    let last = if high_full { h0 } else { h0 - 1 };
    if !low_full {
        let mut inner = Vec::new();
        digit_range(low_rest, &"9".repeat(rest), &mut inner);
        for tail in inner {
            out.push(format!("{}{tail}", char::from(l0)));
        }
    }
    if first <= last {
        out.push(format!("{}{}", class(first, last), any(rest)));
    }
    if !high_full {
        let mut inner = Vec::new();
        digit_range(&"0".repeat(rest), high_rest, &mut inner);
        for tail in inner {
            out.push(format!("{}{tail}", char::from(h0)));
        }
    }
}

/// The schema of `POST /v1/tasks`, as the server checks it, for a pool
/// whose tasks may have up to `max_memory` bytes of memory.
fn submit_task(max_memory: u64) -> Value {
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    let ten_years_ms = u64::try_from(MAX_AHEAD.as_millis()).unwrap_or(u64::MAX);
    // Absolute times: up to ten years from when this document was made,
    // less a day, so that it stays true while a client uses it.
    let latest = crate::now_millis()
        .saturating_add(ten_years_ms)
        .saturating_sub(24 * 3600 * 1000);
    let max_output = crate::MAX_OUTPUT;
    let output_size = "^([0-9]{1,9}|[0-9]{1,3}(KiB|MiB|KB|MB))$";
    let memory_size = binary_size_pattern(64 << 10, max_memory);
    let mut properties = serde_json::Map::new();
    let mut put = |name: &str, schema: Value| {
        properties.insert(name.to_string(), schema);
    };
    put(
        "module",
        json!({"type": "string", "pattern": HASH_PATTERN,
               "description": "The module's hash, uploaded before with POST /v1/modules.",
               "example": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}),
    );
    put(
        "input",
        json!({"description": "The input as any JSON value; the task receives its JSON text. \
                               Not with `input_base64`."}),
    );
    put(
        "input_base64",
        nullable(json!({
            "type": "string",
            "description": "The input as raw bytes, standard base64 with padding. Not with `input`.",
            "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
        })),
    );
    put(
        "priority",
        nullable(json!({"type": "integer", "format": "int32",
                        "minimum": i32::MIN, "maximum": i32::MAX,
                        "description": "Higher runs first. Default: 0."})),
    );
    put(
        "timeout",
        nullable(duration("Wall-clock timeout of each attempt.", 1, WEEK_MS)),
    );
    put(
        "fuel",
        nullable(json!({
            "description": "Fuel budget of each attempt: a number (1 to 2^63-1) or a string \
                            such as \"10M\" (k, M, G, T are powers of 1000).",
            "oneOf": [
                {"type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX},
                {"type": "string", "pattern": "^([1-9][0-9]{0,14}|[1-9][0-9]{0,5}[kMGT])$"},
            ]
        })),
    );
    put(
        "memory",
        nullable(size(
            "Memory limit of all linear memories, at most the pool's maximum.",
            64 << 10,
            max_memory,
            &memory_size,
        )),
    );
    put(
        "max_output",
        nullable(size("Output size limit.", 0, max_output, output_size)),
    );
    // Up to 64 KiB (`MAX_LOG`), exactly: bytes, KiB or KB.
    let log_size = "^([0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-6]|[0-9]KiB|[0-5][0-9]KiB|6[0-4]KiB|[0-9]KB|[0-5][0-9]KB|6[0-5]KB)$";
    put(
        "max_log",
        nullable(size(
            "How much of the log is kept (at most 64 KiB).",
            0,
            crate::limits::MAX_LOG,
            log_size,
        )),
    );
    put(
        "max_attempts",
        nullable(json!({"type": "integer", "minimum": 1, "maximum": 100,
                        "description": "How many times the task may run in all. Default: 1. \
                                        A run lost with its host is not an attempt."})),
    );
    put(
        "max_interruptions",
        nullable(json!({"type": "integer", "minimum": 1, "maximum": 100,
                        "description": "How many runs may be lost with their host (a crash, \
                                        a lost lease) before the task ends `interrupted`. \
                                        Default: 3."})),
    );
    put(
        "backoff",
        nullable(json!({
            "type": "object",
            "additionalProperties": false,
            "description": "The waits between attempts.",
            "properties": {
                "initial": nullable(duration(
                    "The wait before the second attempt (default 1s); cut to `max`.",
                    0, WEEK_MS)),
                "max": nullable(duration("The longest wait (default 5m).", 0, WEEK_MS)),
                "multiplier": nullable(json!({"type": "number", "minimum": 1, "maximum": 100,
                    "description": "Growth per attempt. Default: 2."})),
                "jitter": nullable(json!({"type": "boolean",
                    "description": "Randomise each wait. Default: true."})),
            }
        })),
    );
    put(
        "delay",
        nullable(duration(
            "Start no sooner than this after submission. Not with `run_at`.",
            0,
            ten_years_ms,
        )),
    );
    put(
        "run_at",
        nullable(json!({"type": "integer", "minimum": 0, "maximum": latest,
            "description": "Start no sooner than this time (ms since the Unix epoch), at most \
                            ten years ahead. Not with `delay`."})),
    );
    put(
        "expire_after",
        nullable(duration(
            "Expire (never start) if not started within this of submission. Not with \
             `expire_at`.",
            0,
            ten_years_ms,
        )),
    );
    put(
        "expire_at",
        nullable(json!({"type": "integer", "minimum": 0, "maximum": latest,
            "description": "Expire if not started by this time (ms since the Unix epoch), at \
                            most ten years ahead. Not with `expire_after`."})),
    );
    put(
        "idempotency_key",
        nullable(json!({"type": "string", "minLength": 1, "maxLength": 64,
            "description": "A second submission with the same key returns the first task."})),
    );
    put(
        "labels",
        json!({
            "type": "object",
            "description": "Free-form labels (at most 32); tasks can be listed by label. Keys \
                            cannot contain `=`.",
            "maxProperties": 32,
            "propertyNames": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^=]*$"},
            "additionalProperties": {"type": "string", "maxLength": 64}
        }),
    );
    json!({
        "type": "object",
        "description": "A task to run. Unknown fields are refused.",
        "required": ["module"],
        "additionalProperties": false,
        "properties": properties,
        "allOf": [
            {"not": {"required": ["input", "input_base64"]}},
            {"not": {"required": ["delay", "run_at"]}},
            {"not": {"required": ["expire_after", "expire_at"]}},
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_patterns_stay_within_their_range() {
        let schema = duration("x", 1, 7 * 24 * 3600 * 1000);
        let pattern = schema["oneOf"][1]["pattern"].as_str().unwrap();
        assert_eq!(
            pattern,
            "^([1-9][0-9]{0,7}ms|[1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|[1-9][0-9]{0,1}h|[1-7]d)$"
        );
    }

    fn matcher(pattern: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(pattern).unwrap()
    }

    #[test]
    fn integer_range_patterns_match_exactly_their_range() {
        for (low, high) in [
            (1, 1),
            (1, 9),
            (3, 7),
            (1, 10),
            (9, 100),
            (64, 1023),
            (64, 4096),
            (17, 3210),
            (1, 2048),
            (100, 999),
            (205, 1999),
        ] {
            let pattern = format!("^{}$", integer_range_pattern(low, high));
            let regex = matcher(&pattern);
            for n in 0..=high * 2 + 20 {
                let inside = (low..=high).contains(&n);
                assert_eq!(regex.is_match(&n.to_string()), inside, "{n} by {pattern}");
            }
            assert!(!regex.is_match(&format!("0{low}")), "{pattern}");
        }
    }

    /// The memory pattern follows the pool's maximum: what it allows, the
    /// server takes, and every whole KiB/MiB/GiB size in range is allowed.
    #[test]
    fn memory_size_pattern_follows_the_maximum() {
        let regex = matcher(&binary_size_pattern(64 << 10, 2 << 30));
        for yes in [
            "64KiB",
            "1023KiB",
            "2097152KiB",
            "1MiB",
            "1536MiB",
            "2048MiB",
            "2GiB",
        ] {
            assert!(regex.is_match(yes), "{yes}");
        }
        for no in [
            "63KiB",
            "2097153KiB",
            "2049MiB",
            "3GiB",
            "0MiB",
            "01GiB",
            "1.5GiB",
        ] {
            assert!(!regex.is_match(no), "{no}");
        }
        let default = matcher(&binary_size_pattern(64 << 10, 1 << 30));
        assert!(default.is_match("1GiB") && default.is_match("1024MiB"));
        assert!(!default.is_match("2GiB") && !default.is_match("1025MiB"));
    }
}
