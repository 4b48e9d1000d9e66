//! Embedding wpool: build a `Pool`, submit tasks, wait for their results.
//!
//! Run it with a WASI command module of your own, or with none to use a
//! small built-in one that upper-cases its input:
//!
//! ```sh
//! cargo run -p wpool --example embed
//! cargo run -p wpool --example embed -- target/guests/examples/wasm32-wasip1/release/hello.wasm '{"name":"Ada"}'
//! ```

use std::time::Duration;

use wpool::{Pool, PoolConfig, TaskSpec};

/// Upper-cases stdin to stdout, 64 KiB at most.
const UPPERCASE_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32) (local $i i32) (local $c i32)
    ;; iovec at 0: buffer at 1024, 64 KiB
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (local.set $n (i32.load (i32.const 16)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (i32.const 1024) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (module, input) = match args.next() {
        Some(path) => (std::fs::read(path)?, args.next().unwrap_or_default()),
        None => (
            wat::parse_str(UPPERCASE_WAT)?,
            "hello from the embedding example".into(),
        ),
    };

    let mut config = PoolConfig::new();
    config.workers(2);
    let pool = Pool::new(config)?;
    let hash = pool.register(&module).await?;

    // Ten tasks, the last ones with a higher priority, each with a timeout.
    let mut handles = Vec::new();
    for i in 0..10 {
        let spec = TaskSpec::new(hash, input.clone().into_bytes())
            .priority(if i >= 8 { 10 } else { 0 })
            .timeout(Duration::from_secs(5))
            .label("example", "embed");
        handles.push(pool.submit(spec).await?);
    }
    for handle in handles {
        let result = handle.wait().await?;
        println!(
            "{} {}: {} ({} µs)",
            result.id,
            result.state,
            String::from_utf8_lossy(&result.output),
            result.duration_us
        );
    }
    let stats = pool.stats().await?;
    println!(
        "{} tasks, {} succeeded",
        stats.total,
        stats.counts.get(wpool::TaskState::Succeeded)
    );
    pool.close().await?;
    Ok(())
}
