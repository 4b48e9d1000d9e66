//! Submitting over HTTP, next to the limit of the same HTTP stack: a no-op
//! axum handler that takes the same JSON body from the same client, over
//! the same keep-alive connections, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use wpool::store::{SledOptions, SledStore, SyncMode};
use wpool::{Pool, PoolConfig};
use wpool_test_artifacts as programs;

use crate::rows::{read, register, tempfile_dir};
use crate::{Row, Scale};

/// Client threads, each with its own keep-alive connection.
const CLIENTS: usize = 16;

/// Tasks in one `POST /v1/tasks:batch`.
const BATCH: usize = 500;

/// Each side is measured this many times, alternating with the other, and
/// its best run kept: the machine is shared, and a burst of other work
/// during one run should not decide the ratio.
const ROUNDS: usize = 2;

/// The no-op handler: parses the body as JSON, as any JSON API must, and
/// answers a small JSON body with 201.
async fn no_op(body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let value: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    std::hint::black_box(value);
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        r#"{"ok":true}"#,
    )
}

/// A server on its own 2-thread runtime (as `wpool serve` has); stopped
/// when dropped.
struct Server {
    url: String,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }

    /// The no-op handler on every path, served by `axum::serve`.
    fn no_op() -> std::io::Result<Self> {
        let runtime = Self::runtime()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/tasks", post(no_op))
            .route("/v1/tasks:batch", post(no_op));
        let served = runtime.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            url,
            runtime,
            stop: Some(stop),
            served: Some(served),
        })
    }

    /// wpool's API over `pool`.
    fn wpool(pool: &Pool) -> std::io::Result<Self> {
        let runtime = Self::runtime()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn(wpool::server::serve(
            listener,
            pool.clone(),
            wpool::server::ServerConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            url,
            runtime,
            stop: Some(stop),
            served: Some(served),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.runtime.block_on(served);
        }
    }
}

/// Requests per second: `CLIENTS` threads, each with its own ureq agent
/// (one keep-alive connection), sending `requests` POSTs of `body` to
/// `url` between them. Every answer is read to its end, which is what lets
/// ureq reuse the connection.
fn drive(url: &str, body: &str, requests: usize) -> f64 {
    let per = requests.div_ceil(CLIENTS);
    let body: Arc<str> = body.into();
    let start = Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.to_string();
            let body = body.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into();
                let post = || {
                    let response = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body.as_bytes())
                        .expect("POST over HTTP");
                    assert!(response.status().is_success(), "{}", response.status());
                    let answer = response
                        .into_body()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_vec()
                        .expect("read the answer");
                    std::hint::black_box(answer);
                };
                // The connection is opened before the clock starts.
                post();
                start.wait();
                for _ in 0..per {
                    post();
                }
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    for thread in threads {
        thread.join().expect("an HTTP client thread panicked");
    }
    (per * CLIENTS) as f64 / started.elapsed().as_secs_f64()
}

/// The best of `ROUNDS` runs of wpool and of the no-op server, alternated;
/// both in requests per second.
fn side_by_side(
    wpool: &Server,
    no_op: &Server,
    path: &str,
    body: &str,
    requests: usize,
) -> (f64, f64) {
    let (mut ours, mut theirs) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        theirs = theirs.max(drive(&format!("{}{path}", no_op.url), body, requests));
        ours = ours.max(drive(&format!("{}{path}", wpool.url), body, requests));
    }
    (ours, theirs)
}

pub(crate) fn section(scale: Scale, cores: usize) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let wasm = read(programs::P1_TRIVIAL);
    let count = scale.n(2_000, 20_000);
    let batches = scale.n(16, 128);
    let mut config = PoolConfig::new();
    config.workers(cores);
    let no_op = Server::no_op()?;
    let mut rows = Vec::new();

    let pool = Pool::new(config.clone())?;
    let hash = register(&pool, &wasm)?;
    let task = serde_json::json!({ "module": hash.to_string(), "input": {} });
    let one = task.to_string();
    let batch = serde_json::Value::Array(vec![task; BATCH]).to_string();
    {
        let server = Server::wpool(&pool)?;
        let (ours, theirs) = side_by_side(&server, &no_op, "/v1/tasks", &one, count);
        rows.push(Row::new(
            &format!("submit over HTTP, memory store, {CLIENTS} keep-alive clients"),
            "tasks/s",
            ours,
            "no-op axum JSON POST, same clients",
            theirs,
            "POST /v1/tasks; the pool runs the tasks meanwhile",
        ));
        let (ours, theirs) = side_by_side(&server, &no_op, "/v1/tasks:batch", &batch, batches);
        let per_task = BATCH as f64;
        rows.push(Row::new(
            &format!("submit over HTTP, batches of {BATCH}, memory store, {CLIENTS} clients"),
            "tasks/s",
            ours * per_task,
            "no-op axum POST of the same batch, per task",
            theirs * per_task,
            "POST /v1/tasks:batch; baseline parses the same array",
        ));
    }
    drop(pool);

    let dir = tempfile_dir("http-sled");
    {
        let store = SledStore::open(&dir, SledOptions::new().sync(SyncMode::Durable))?;
        let pool = Pool::with_store(config, Arc::new(store))?;
        let hash = register(&pool, &wasm)?;
        let one = serde_json::json!({ "module": hash.to_string(), "input": {} }).to_string();
        let server = Server::wpool(&pool)?;
        let (ours, theirs) = side_by_side(&server, &no_op, "/v1/tasks", &one, count / 4);
        rows.push(Row::new(
            &format!("submit over HTTP, sled store, durable, {CLIENTS} keep-alive clients"),
            "tasks/s",
            ours,
            "no-op axum JSON POST, same clients",
            theirs,
            "each answer waits for its flush (group commit)",
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}
