//! The example tasks, in every language, built by their own build scripts
//! and run through the pool with real inputs: the same input gives the same
//! output from each.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use wpool::{Backoff, LimitOverrides, Outcome, Pool, PoolConfig, TaskSpec, TaskState};
use wpool_test_artifacts as programs;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds one language's example with its `build.sh` (once per test run);
/// a missing toolchain fails here with the script's message naming the
/// install command.
fn built(lang: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some(path) = cache.get(lang) {
        return path.clone();
    }
    let script = root().join("examples").join(lang).join("build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = root()
        .join("target/examples")
        .join(lang)
        .join("wordfreq.wasm");
    assert!(
        wasm.exists(),
        "{} did not produce {}",
        script.display(),
        wasm.display()
    );
    cache.insert(lang.to_string(), wasm.clone());
    wasm
}

fn input(name: &str) -> Vec<u8> {
    std::fs::read(root().join("examples/inputs").join(name)).unwrap()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn pool() -> Pool {
    let mut config = PoolConfig::new();
    config.workers(2);
    Pool::new(config).unwrap()
}

fn generous() -> LimitOverrides {
    LimitOverrides {
        timeout: Some(Duration::from_secs(60)),
        memory: Some(512 << 20),
        ..Default::default()
    }
}

async fn wordfreq_everywhere(pool: &Pool, name: &str, wasm: &Path) {
    let hash = pool.register(&std::fs::read(wasm).unwrap()).await.unwrap();
    for case in ["wordfreq", "wordfreq-edge", "wordfreq-empty"] {
        let result = pool
            .submit(TaskSpec::new(hash, input(&format!("{case}.json"))).limits(generous()))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(
            result.outcome,
            Some(Outcome::Success),
            "{name} on {case}: log: {}",
            result.log
        );
        let expected = json(&input(&format!("{case}.expected.json")));
        assert_eq!(json(&result.output), expected, "{name} on {case}");
    }
    // Invalid input is a failure with a message, not a crash of the host.
    let result = pool
        .submit(TaskSpec::new(hash, input("wordfreq-invalid.json")).limits(generous()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        result.state,
        TaskState::Failed,
        "{name} accepted invalid input"
    );
    let message = match &result.outcome {
        Some(Outcome::Failed(message)) => message.clone(),
        Some(Outcome::Exit(_)) => result.log.clone(),
        other => panic!("{name}: unexpected outcome {other:?}"),
    };
    assert!(
        !message.trim().is_empty(),
        "{name}: a failure without a message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordfreq_rust_command_and_component() {
    let pool = pool();
    wordfreq_everywhere(&pool, "rust p1", Path::new(programs::EXAMPLE_P1_WORDFREQ)).await;
    wordfreq_everywhere(&pool, "rust p2", Path::new(programs::EXAMPLE_P2_WORDFREQ)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordfreq_c() {
    wordfreq_everywhere(&pool(), "c", &built("c")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordfreq_zig() {
    wordfreq_everywhere(&pool(), "zig", &built("zig")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordfreq_python_component() {
    wordfreq_everywhere(&pool(), "python", &built("python")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wordfreq_javascript_component() {
    wordfreq_everywhere(&pool(), "js", &built("js")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_examples_do_what_they_say() {
    let pool = pool();
    for (name, wasm) in [
        ("p1", programs::EXAMPLE_P1_HELLO),
        ("p2", programs::EXAMPLE_P2_HELLO),
    ] {
        let hash = pool.register(&std::fs::read(wasm).unwrap()).await.unwrap();
        let result = pool
            .submit(TaskSpec::new(hash, input("hello.json")))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(
            json(&result.output),
            serde_json::json!({"greeting": "Hello, Ada!"}),
            "hello {name}"
        );
    }

    for (name, wasm) in [
        ("p1", programs::EXAMPLE_P1_HASH),
        ("p2", programs::EXAMPLE_P2_HASH),
    ] {
        let hash = pool.register(&std::fs::read(wasm).unwrap()).await.unwrap();
        let body = br#"{"data": "wpool", "rounds": 3}"#.to_vec();
        let result = pool
            .submit(TaskSpec::new(hash, body))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        use sha2::{Digest, Sha256};
        let mut digest: [u8; 32] = Sha256::digest(b"wpool").into();
        for _ in 1..3 {
            digest = Sha256::digest(digest).into();
        }
        assert_eq!(
            json(&result.output)["sha256"],
            hex::encode(digest),
            "hash {name}"
        );
    }

    for (name, wasm) in [
        ("p1", programs::EXAMPLE_P1_PROGRESS),
        ("p2", programs::EXAMPLE_P2_PROGRESS),
    ] {
        let hash = pool.register(&std::fs::read(wasm).unwrap()).await.unwrap();
        let mut events = pool.subscribe();
        let handle = pool
            .submit(TaskSpec::new(hash, br#"{"steps": 5}"#.to_vec()))
            .await
            .unwrap();
        let result = handle.wait().await.unwrap();
        assert!(result.is_success(), "progress {name}: {}", result.log);
        let mut last = None;
        while let Ok(Some(event)) = events.try_recv() {
            if let wpool::EventKind::Progress { done, total } = event.kind
                && event.id == handle.id()
            {
                last = Some((done, total));
            }
        }
        assert_eq!(last, Some((5, 5)), "progress {name}");
    }

    for (name, wasm) in [
        ("p1", programs::EXAMPLE_P1_FAIL),
        ("p2", programs::EXAMPLE_P2_FAIL),
    ] {
        let hash = pool.register(&std::fs::read(wasm).unwrap()).await.unwrap();
        let backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: false,
        };
        let result = pool
            .submit(
                TaskSpec::new(hash, br#"{"fail_until_attempt": 2, "attempt": 1}"#.to_vec())
                    .max_attempts(3)
                    .backoff(backoff),
            )
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        // The input names attempt 1 each time, so every attempt fails.
        assert_eq!(result.state, TaskState::Failed, "fail {name}");
        assert_eq!(result.attempts.len(), 3, "fail {name}");
        let text = match result.outcome.unwrap() {
            Outcome::Failed(message) => message,
            Outcome::Exit(_) => result.log,
            other => panic!("fail {name}: {other:?}"),
        };
        assert!(text.contains("failing on purpose"), "fail {name}: {text}");
    }
}
