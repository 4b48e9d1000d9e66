//! WASI programs built for other hosts, run as tasks: `argv[0]`, every exit
//! code, guest faults as traps, module run settings, `wasi:cli/run`
//! components, clear refusals, read-only directories and scratch
//! directories, and hostile guests against both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wpool::{
    EngineConfig, Error, Executor, LimitOverrides, ModuleSettings, Outcome, Pool, PoolConfig,
    ReadOnlyDir, RunReport, TaskSpec,
};
use wpool_test_artifacts as programs;

use crate::util::{assert_healthy, executor, fixture, read, spawn};

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

fn run_with(ex: &Executor, wasm: &[u8], settings: ModuleSettings, input: &[u8]) -> RunReport {
    let module = ex.register_with(wasm, settings).expect("register");
    spawn(ex, &module, input, LimitOverrides::default()).wait_blocking()
}

fn executor_with(configure: impl FnOnce(&mut EngineConfig)) -> Executor {
    let mut config = EngineConfig::new();
    config.workers(1);
    configure(&mut config);
    Executor::new(&config).expect("executor")
}

/// A host directory holding `tool.conf`, granted as `/config`.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tool.conf"), "threshold = 3\n").unwrap();
    dir
}

// Regression: tools index `args[1..]`; with no `argv[0]` they panicked.
#[test]
fn argv0_is_the_module_name_or_task() {
    let config = config_dir();
    let ex = executor_with(|c| {
        c.read_only_dir(ReadOnlyDir::new(config.path(), "/config"));
    });
    let settings = ModuleSettings::new()
        .name("tool")
        .arg("/config/tool.conf")
        .arg("--verbose")
        .env("LANG", "C.UTF-8");
    let report = run_with(&ex, &read(programs::P1_CLI_TOOL), settings, b"data");
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let out = json(&report.output);
    assert_eq!(
        out["argv"],
        serde_json::json!(["tool", "/config/tool.conf", "--verbose"])
    );
    assert_eq!(out["config"], "threshold = 3");
    assert_eq!(out["input"], "data");
    assert_eq!(out["lang"], "C.UTF-8");

    // Without a name, `argv[0]` is `task`; without arguments the tool
    // prints its usage and exits 2, as it would anywhere.
    let report = run_with(
        &ex,
        &read(programs::P1_CLI_TOOL),
        ModuleSettings::new(),
        b"",
    );
    assert_eq!(report.outcome, Outcome::Exit(2));
    assert!(
        report.log.contains("usage: task CONFIG"),
        "log: {}",
        report.log
    );
}

#[test]
fn pooled_tasks_see_their_settings_and_wpool_variables() {
    let config = config_dir();
    let mut pool_config = PoolConfig::new();
    pool_config.workers(1);
    pool_config
        .engine_mut()
        .read_only_dir(ReadOnlyDir::new(config.path(), "/config").for_name("tool"));
    let pool = Pool::new(pool_config).unwrap();
    let tool = read(programs::P1_CLI_TOOL);
    let hash = block(
        &pool,
        pool.register_with(
            &tool,
            ModuleSettings::new()
                .name("tool")
                .arg("/config/tool.conf")
                .env("LANG", "C"),
        ),
    )
    .unwrap();
    assert_eq!(
        block(&pool, pool.module_settings(&hash))
            .unwrap()
            .name
            .as_deref(),
        Some("tool")
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (result, out) = succeeded(&runtime, &pool, TaskSpec::new(hash, b"x".to_vec()));
    assert_eq!(
        out["argv"],
        serde_json::json!(["tool", "/config/tool.conf"])
    );
    assert_eq!(out["task_id"], result.id.to_string());
    assert_eq!(out["attempt"], "1");
    assert_eq!(out["lang"], "C");
    assert_eq!(
        out["env_count"], 3,
        "LANG, WPOOL_TASK_ID, WPOOL_ATTEMPT and nothing else"
    );

    // The grant is by name: the same program under another name does not
    // see the directory.
    let other = block(
        &pool,
        pool.register_with(
            &tool,
            ModuleSettings::new().name("other").arg("/config/tool.conf"),
        ),
    )
    .unwrap();
    let result = submit_and_wait(&runtime, &pool, TaskSpec::new(other, Vec::new()));
    assert_eq!(result.outcome, Some(Outcome::Exit(1)));
    assert!(
        result.log.contains("cannot read /config/tool.conf"),
        "log: {}",
        result.log
    );
}

/// Runs `module` on `input` with `env` from the executor's caller until
/// its runs are direct calls, and a few more: 20 runs at most. Each
/// report is checked with `check`; returns how many runs were direct
/// calls.
fn runs_on_a_fiber_then_direct(
    ex: &Executor,
    module: &wpool::CompiledModule,
    input: &[u8],
    env: &[(&str, &str)],
    check: impl Fn(&RunReport),
) -> u64 {
    let limits = ex.limits(&LimitOverrides::default()).unwrap();
    let before = ex.direct_calls();
    for _ in 0..20 {
        let report = ex
            .spawn(wpool::Job {
                module: module.clone(),
                input: input.to_vec(),
                limits: limits.clone(),
                on_progress: None,
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            })
            .wait_blocking();
        check(&report);
    }
    ex.direct_calls() - before
}

/// An executor whose runs of a module become direct calls after its
/// first few: a tick long enough that every run here is shorter.
fn executor_with_long_tick() -> Executor {
    executor_with(|c| {
        c.epoch_tick(std::time::Duration::from_millis(200));
    })
}

/// wpool gives a command its `argv` and environment by calls of its own
/// (a run builds neither unless its guest asks): the same on a fiber (a
/// module's first runs) and by a direct call (once they are short), in
/// the documented order: the module's variables, then the host's.
#[test]
fn argv_and_environment_are_the_same_on_a_fiber_and_by_a_direct_call() {
    let ex = executor_with_long_tick();
    let settings = ModuleSettings::new()
        .name("env-tool")
        .arg("--one")
        .arg("two words")
        .env("LANG", "C")
        .env("A", "1");
    let module = ex
        .register_with(&read(programs::P1_ENVIRON), settings)
        .unwrap();
    let direct = runs_on_a_fiber_then_direct(&ex, &module, b"", &[("HOST", "h=1")], |report| {
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        let out = json(&report.output);
        assert_eq!(
            out["argv"],
            serde_json::json!(["env-tool", "--one", "two words"])
        );
        assert_eq!(out["env"], serde_json::json!(["A=1", "LANG=C", "HOST=h=1"]));
    });
    assert!(direct > 0, "no run was a direct call");

    // The defaults: `argv[0]` is `task`, and no variable at all.
    let plain = ex
        .register_with(&read(programs::P1_ENVIRON), ModuleSettings::new())
        .unwrap();
    let direct = runs_on_a_fiber_then_direct(&ex, &plain, b"", &[], |report| {
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        let out = json(&report.output);
        assert_eq!(out["argv"], serde_json::json!(["task"]));
        assert_eq!(out["env"], serde_json::json!([]));
    });
    assert!(direct > 0, "no run was a direct call");
}

/// A guest that passes wpool's `environ_get` a buffer out of its memory
/// traps as it would in wasmtime-wasi's, on a fiber and by a direct call.
#[test]
fn a_bad_pointer_to_the_environment_calls_is_a_trap() {
    let ex = executor_with_long_tick();
    let module = ex
        .register_with(
            &fixture("environ_oob.wat"),
            ModuleSettings::new().env("LANG", "C"),
        )
        .unwrap();
    let direct =
        runs_on_a_fiber_then_direct(&ex, &module, b"", &[], |report| match &report.outcome {
            Outcome::Trap(message) => assert!(message.contains("bad pointer"), "{message}"),
            other => panic!("expected a trap, got {other:?}; log: {}", report.log),
        });
    assert!(direct > 0, "no run was a direct call");
}

/// A run without directories has no WASI context until a call wpool does
/// not answer itself builds it: stdin, stdout and stderr go on from
/// where wpool's own reads and writes left them, on a fiber and by a
/// direct call.
#[test]
fn stdio_goes_on_where_it_was_when_the_wasi_context_is_built() {
    let ex = executor_with_long_tick();
    let module = ex.register(&fixture("stdio_handover.wat")).unwrap();
    let input = "hello, a longer input: ünïcode and more".repeat(300);
    let direct = runs_on_a_fiber_then_direct(&ex, &module, input.as_bytes(), &[], |report| {
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        let expected = format!("{}|{}", &input[..3], &input[3..]);
        assert!(
            report.output == expected.as_bytes(),
            "{} bytes of output, {} expected; it starts {:?}",
            report.output.len(),
            expected.len(),
            String::from_utf8_lossy(&report.output[..report.output.len().min(60)])
        );
        assert_eq!(report.log, "one\ntwo\n");
    });
    assert!(direct > 0, "no run was a direct call");
    // Shorter inputs than the first read.
    for input in ["", "hi"] {
        let report =
            spawn(&ex, &module, input.as_bytes(), LimitOverrides::default()).wait_blocking();
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        assert_eq!(report.output, format!("{input}|").as_bytes());
    }
}

/// wpool's own stdio calls answer a guest's faults as wasmtime-wasi's do
/// once the context is built (the same case in upper case): a trap for a
/// pointer out of the memory or misaligned, `ENOMEM` for an array of
/// buffers larger than a call may copy; and `random_get` gives random
/// bytes either way. On a fiber and by a direct call.
#[test]
fn stdio_faults_are_answered_as_wasmtime_wasi_answers_them() {
    let ex = executor_with_long_tick();
    let module = ex.register(&fixture("stdio_faults.wat")).unwrap();
    let trap = |report: &RunReport| match &report.outcome {
        Outcome::Trap(message) => assert!(message.contains("bad pointer"), "{message}"),
        other => panic!("expected a trap, got {other:?}; log: {}", report.log),
    };
    for case in ["rXYZ", "RXYZ", "a", "A", "g", "G"] {
        let direct = runs_on_a_fiber_then_direct(&ex, &module, case.as_bytes(), &[], trap);
        assert!(direct > 0, "case {case}: no run was a direct call");
    }
    for case in ["n", "N"] {
        let direct = runs_on_a_fiber_then_direct(&ex, &module, case.as_bytes(), &[], |report| {
            assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
            assert_eq!(report.output, [48], "ENOMEM");
        });
        assert!(direct > 0, "case {case}: no run was a direct call");
    }
    for case in ["x", "X"] {
        let outputs = std::sync::Mutex::new(std::collections::HashSet::new());
        runs_on_a_fiber_then_direct(&ex, &module, case.as_bytes(), &[], |report| {
            assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
            assert_eq!(report.output.len(), 32);
            outputs.lock().unwrap().insert(report.output.clone());
        });
        assert_eq!(
            outputs.into_inner().unwrap().len(),
            20,
            "case {case}: random bytes repeated"
        );
    }
}

/// A pool's task sees `WPOOL_TASK_ID` and `WPOOL_ATTEMPT` by a direct
/// call as on a fiber.
#[test]
fn pooled_tasks_see_wpool_variables_by_a_direct_call() {
    let mut config = PoolConfig::new();
    config.workers(1);
    config
        .engine_mut()
        .epoch_tick(std::time::Duration::from_millis(200));
    let pool = Pool::new(config).unwrap();
    let hash = block(
        &pool,
        pool.register_with(
            &read(programs::P1_ENVIRON),
            ModuleSettings::new().env("LANG", "C"),
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..20 {
        let (result, out) = succeeded(&runtime, &pool, TaskSpec::new(hash, Vec::new()));
        assert_eq!(
            out["env"],
            serde_json::json!([
                "LANG=C",
                format!("WPOOL_TASK_ID={}", result.id),
                "WPOOL_ATTEMPT=1"
            ])
        );
    }
    assert!(
        pool.executor().direct_calls() > 0,
        "no run was a direct call"
    );
}

// Regression: codes of 126 and above were reported as host errors.
#[test]
fn every_exit_code_is_reported_as_given() {
    let ex = executor(1);
    let module = ex.register(&read(programs::P1_EXIT_WITH)).unwrap();
    for code in [0u32, 3, 125, 126, 200, 255, 256, 4_294_967_295] {
        let report = spawn(
            &ex,
            &module,
            code.to_string().as_bytes(),
            LimitOverrides::default(),
        )
        .wait_blocking();
        let expected = if code == 0 {
            Outcome::Success
        } else {
            Outcome::Exit(code)
        };
        assert_eq!(report.outcome, expected, "code {code}, log: {}", report.log);
        assert_eq!(report.output, format!("exiting with {code}").as_bytes());
        assert!(report.log.contains(&format!("about to exit with {code}")));
    }
    assert_healthy(&ex);
}

#[test]
fn success_codes_mean_success() {
    let ex = executor(1);
    let module = ex
        .register_with(
            &read(programs::P1_EXIT_WITH),
            ModuleSettings::new().success_code(10).success_code(20),
        )
        .unwrap();
    for (code, expected) in [
        (10, Outcome::Success),
        (20, Outcome::Success),
        (0, Outcome::Success),
        (30, Outcome::Exit(30)),
    ] {
        let report = spawn(
            &ex,
            &module,
            code.to_string().as_bytes(),
            LimitOverrides::default(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, expected, "code {code}");
        assert_eq!(
            report
                .log
                .contains(&format!("exited with code {code}, a success code")),
            code == 10 || code == 20,
            "code {code}, log: {}",
            report.log
        );
    }
}

// Regression: a bad pointer given to WASI was reported as a host error.
#[test]
fn guest_faults_are_traps_with_a_backtrace_in_the_log() {
    let ex = executor(1);
    let report = run_with(
        &ex,
        &fixture("fd_write_oob.wat"),
        ModuleSettings::new(),
        b"",
    );
    match &report.outcome {
        Outcome::Trap(message) => assert!(message.contains("bad pointer"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(
        report.log.contains("wpool: wasm backtrace:\n"),
        "log: {}",
        report.log
    );

    let report = run_with(
        &ex,
        &read(programs::P1_UNREACHABLE),
        ModuleSettings::new(),
        b"",
    );
    assert!(
        matches!(report.outcome, Outcome::Trap(_)),
        "{:?}",
        report.outcome
    );
    assert!(
        report.log.contains("wpool: wasm backtrace:\n"),
        "log: {}",
        report.log
    );
    assert_healthy(&ex);
}

#[test]
fn unsupported_modules_are_refused_with_what_to_do() {
    let ex = executor(1);
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "no_memory.wat",
            "no exported memory",
            &["export its memory", "wasm32-wasip1"],
        ),
        (
            "wasi_unstable.wat",
            "WASI snapshot 0",
            &["wasi_unstable", "wasm32-wasip1"],
        ),
        (
            "thread_spawn.wat",
            "WASI threads",
            &["thread-spawn", "without threads"],
        ),
        (
            "shared_memory.wat",
            "shared memory",
            &["threads", "wasm32-wasip1"],
        ),
        (
            "legacy_exceptions.wat",
            "legacy exceptions",
            &["legacy exception-handling", "-fno-exceptions"],
        ),
        (
            "other_world.wat",
            "another world",
            &["wasi:cli/run", "wpool:task/task", "`hello`"],
        ),
        ("wasip3.wat", "WASI 0.3", &["WASI 0.3", "wasm32-wasip2"]),
    ];
    for (file, what, expected) in cases {
        let err = ex.register(&fixture(file)).expect_err(what).to_string();
        assert!(err.starts_with("invalid module: "), "{what}: {err}");
        for part in expected {
            assert!(err.contains(part), "{what}: expected `{part}` in: {err}");
        }
    }
    assert_healthy(&ex);
}

#[test]
fn standard_exceptions_are_caught_and_an_uncaught_one_is_a_trap() {
    let ex = executor(1);
    let report = run_with(&ex, &fixture("exceptions.wat"), ModuleSettings::new(), b"");
    assert_eq!(report.output, b"caught 42");
    match &report.outcome {
        Outcome::Trap(message) => assert!(message.contains("exception"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_healthy(&ex);
}

/// `_initialize` (the WASI reactor convention) runs before `_start`, on a
/// fiber and by a direct call alike; one of another type is not called.
#[test]
fn initialize_runs_before_start_if_it_has_the_conventions_type() {
    let ex = executor(1);
    for (file, expected) in [
        ("initialize.wat", &b"initialized"[..]),
        ("initialize_wrong_type.wat", &b"not initialized"[..]),
    ] {
        let module = ex.register(&fixture(file)).expect(file);
        // The first runs are on a fiber; after a few short ones, the
        // module's runs are direct calls.
        let direct_before = ex.direct_calls();
        for run in 0..12 {
            let report = spawn(&ex, &module, b"", LimitOverrides::default()).wait_blocking();
            assert_eq!(
                report.outcome,
                Outcome::Success,
                "{file}, run {run}: {}",
                report.log
            );
            assert_eq!(report.output, expected, "{file}, run {run}");
        }
        assert!(
            ex.direct_calls() > direct_before,
            "{file}: no run was a direct call"
        );
    }
    assert_healthy(&ex);
}

#[test]
fn wasip2_binary_runs_like_a_command() {
    let ex = executor(1);
    let wasm = read(programs::P2_CLI);
    let module = ex
        .register_with(
            &wasm,
            ModuleSettings::new().name("upper").env("GREETING", "hi"),
        )
        .unwrap();
    assert!(module.is_command());
    let report = spawn(&ex, &module, b"hello", LimitOverrides::default()).wait_blocking();
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(report.output, b"upper|hi|HELLO");
    assert!(
        report.log.contains("argv: [\"upper\"]"),
        "log: {}",
        report.log
    );

    // WASI 0.2's exit carries success or failure only: any failure is 1.
    let report = spawn(&ex, &module, b"fail", LimitOverrides::default()).wait_blocking();
    assert_eq!(report.outcome, Outcome::Exit(1));
    assert!(report.log.contains("asked to fail"), "log: {}", report.log);

    // The echo program built for wasm32-wasip2 (it used to be refused as
    // "another world") runs too.
    let echo = ex.register(&read(programs::P2_ECHO_COMMAND)).unwrap();
    let report = spawn(&ex, &echo, b"{\"a\":1}", LimitOverrides::default()).wait_blocking();
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(report.output, b"{\"a\":1}");
    assert_healthy(&ex);
}

/// A host tree with a secret next to the granted `data/` directory, and
/// links inside `data/` pointing at it.
fn hostile_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(root.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(data.join("inside.txt"), "granted").unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.txt"), data.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", data.join("rel_link")).unwrap();
    root
}

#[test]
fn a_granted_directory_cannot_be_escaped_or_written() {
    let tree = hostile_tree();
    let data = tree.path().join("data");
    let ex = executor_with(|c| {
        c.read_only_dir(ReadOnlyDir::new(&data, "/data"));
    });
    let report = run_with(&ex, &read(programs::P1_ESCAPE), ModuleSettings::new(), b"");
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let text = String::from_utf8_lossy(&report.output).into_owned();
    assert!(!text.contains("TOP SECRET"), "the secret leaked: {text}");
    let out = json(&report.output);
    assert_eq!(out["inside"], "ok: granted");
    for attempt in [
        "dotdot",
        "dotdot_deep",
        "symlink_absolute",
        "symlink_relative",
        "absolute",
        "write_new",
        "write_existing",
        "mkdir",
        "remove",
    ] {
        let got = out[attempt].as_str().unwrap();
        assert!(got.starts_with("error: "), "{attempt} succeeded: {got}");
    }
    // Nothing changed on the host.
    assert_eq!(
        std::fs::read_to_string(data.join("inside.txt")).unwrap(),
        "granted"
    );
    assert!(!data.join("new.txt").exists());
    assert!(!data.join("newdir").exists());
    assert_healthy(&ex);
}

#[test]
fn scratch_cannot_be_used_to_write_a_granted_directory() {
    let tree = hostile_tree();
    let data = tree.path().join("data");
    let root = tempfile::tempdir().unwrap();
    let ex = executor_with(|c| {
        c.read_only_dir(ReadOnlyDir::new(&data, "/data"))
            .scratch_root(root.path());
    });
    let report = run_with(
        &ex,
        &read(programs::P1_SCRATCH_TRICKS),
        ModuleSettings::new().scratch(1 << 20),
        b"link",
    );
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let out = json(&report.output);
    for attempt in ["hard", "symlink", "rename"] {
        let got = out[attempt].as_str().unwrap();
        assert!(got.starts_with("error: "), "{attempt} succeeded: {got}");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("inside.txt")).unwrap(),
        "granted"
    );
    assert_eq!(entries(root.path()), 0);
    assert_healthy(&ex);
}

#[test]
fn operator_grants_are_checked_at_start() {
    let mut config = EngineConfig::new();
    config.read_only_dir(ReadOnlyDir::new("/definitely/not/here", "/data"));
    let err = Executor::new(&config).unwrap_err().to_string();
    assert!(err.contains("not a directory on this host"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    for guest in ["data", "/data/../etc", "/tmp"] {
        let mut config = EngineConfig::new();
        config.read_only_dir(ReadOnlyDir::new(dir.path(), guest));
        let err = Executor::new(&config).unwrap_err().to_string();
        assert!(err.contains(guest), "{guest}: {err}");
    }
}

/// Builds a C test program from `tests/programs/c` with clang and
/// wasi-libc (installed by `scripts/install-toolchains.sh`).
fn c_program(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out_dir = BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-programs-c");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/programs/c")
        .join(format!("{name}.c"));
    let out = out_dir.join(format!("{name}.wasm"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "clang-14".into());
    let sysroot = std::env::var("WASI_SYSROOT").unwrap_or_else(|_| "/usr".into());
    let status = Command::new(&cc)
        .args(["--target=wasm32-wasi", &format!("--sysroot={sysroot}")])
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {cc}: {e}; install the C toolchain with `bash scripts/install-toolchains.sh`")
        });
    assert!(status.success(), "{cc} failed on {}", source.display());
    std::fs::read(&out).unwrap()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn scratch_directory_is_writable_bounded_and_removed() {
    let root = tempfile::tempdir().unwrap();
    let ex = executor_with(|c| {
        c.scratch_root(root.path()).max_scratch(1 << 20);
    });
    const BOUND: u64 = 256 << 10;

    // A C program writes and reads back a file, then fills the directory:
    // it gets ENOSPC, as on a full disk, and finishes normally.
    let report = run_with(
        &ex,
        &c_program("scratch_fill"),
        ModuleSettings::new().scratch(BOUND),
        b"",
    );
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let out = json(&report.output);
    assert_eq!(out["read_back"], "hello from scratch");
    assert_eq!(out["error"], "No space left on device");
    let filled = out["filled"].as_u64().unwrap();
    assert!(filled <= BOUND, "filled {filled} bytes past the bound");
    assert!(filled >= BOUND / 2, "refused far too early: {filled} bytes");
    assert_eq!(
        entries(root.path()),
        0,
        "the scratch directory was left behind"
    );

    let tricks = read(programs::P1_SCRATCH_TRICKS);
    let module = ex
        .register_with(&tricks, ModuleSettings::new().scratch(BOUND))
        .unwrap();
    let run = |mode: &[u8]| spawn(&ex, &module, mode, LimitOverrides::default()).wait_blocking();

    // Empty files count too.
    let report = run(b"files");
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let out = json(&report.output);
    assert!(out["files"].as_u64().unwrap() <= BOUND / 4096);
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{out}"
    );

    // One write far past the end of a file is stopped after the write.
    let report = run(b"sparse");
    match &report.outcome {
        Outcome::Trap(message) => assert!(message.contains("past its bound"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(entries(root.path()), 0);

    // The input as a file, for programs that seek in it.
    let with_input = ex
        .register_with(&tricks, ModuleSettings::new().scratch(BOUND).input_file())
        .unwrap();
    let report = spawn(
        &ex,
        &with_input,
        b"input:hello world",
        LimitOverrides::default(),
    )
    .wait_blocking();
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(
        json(&report.output),
        serde_json::json!({"len": 17, "tail": "world", "same": true})
    );
    ex.register_with(&tricks, ModuleSettings::new().scratch(BOUND))
        .unwrap();

    // Each task starts with an empty directory, whatever the last one left.
    for _ in 0..2 {
        let report = run(b"list");
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        assert_eq!(report.output, b"[]");
    }
    assert_eq!(entries(root.path()), 0);
    assert_healthy(&ex);
}

#[test]
fn bad_settings_are_refused_at_registration() {
    let ex = executor_with(|c| {
        c.max_scratch(1 << 20);
    });
    let echo = read(programs::P1_ECHO);
    let cases = [
        (ModuleSettings::new().env("WPOOL_TASK_ID", "x"), "reserved"),
        (ModuleSettings::new().name("no spaces"), "name"),
        (
            ModuleSettings::new().scratch(2 << 20),
            "more than this pool allows",
        ),
    ];
    for (settings, expected) in cases {
        let err = ex.register_with(&echo, settings).unwrap_err();
        assert!(matches!(err, Error::InvalidSettings(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = ex
        .register_with(&read(programs::P2_CLI), ModuleSettings::new().scratch(1024))
        .unwrap_err();
    assert!(err.to_string().contains("wasm32-wasip1"), "{err}");
}

#[test]
fn module_settings_survive_a_restart_of_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ModuleSettings::new()
        .name("tool")
        .arg("/nowhere.conf")
        .env("LANG", "C")
        .success_code(1);
    let wasm = read(programs::P1_CLI_TOOL);
    let hash = {
        let pool = Pool::open(PoolConfig::new().workers(1).clone(), dir.path()).unwrap();
        block(&pool, pool.register_with(&wasm, settings.clone())).unwrap()
    };
    let pool = Pool::open(PoolConfig::new().workers(1).clone(), dir.path()).unwrap();
    assert_eq!(block(&pool, pool.module_settings(&hash)).unwrap(), settings);
    // Registering the bytes again without settings keeps them (the
    // executor compiles the module here, before any task needs it).
    assert_eq!(block(&pool, pool.register(&wasm)).unwrap(), hash);
    // A task after the restart runs with them: the tool cannot read its
    // configuration and exits 1, which these settings call success.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let task = pool.submit(TaskSpec::new(hash, Vec::new())).await.unwrap();
        task.wait().await.unwrap()
    });
    assert_eq!(
        result.outcome,
        Some(Outcome::Success),
        "log: {}",
        result.log
    );
    assert!(
        result.log.contains("tool: cannot read /nowhere.conf"),
        "{}",
        result.log
    );
    assert!(
        result.log.contains("exited with code 1, a success code"),
        "{}",
        result.log
    );
}

#[test]
fn cli_run_takes_settings_and_grants() {
    let config = config_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("run")
        .arg(programs::P1_CLI_TOOL)
        .args(["--name", "tool", "--arg", "/config/tool.conf", "--arg=-x"])
        .args(["--env", "LANG=C.UTF-8", "--read-only"])
        .arg(format!("{}:/config", config.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report = json(&out.stdout);
    assert_eq!(
        report["argv"],
        serde_json::json!(["tool", "/config/tool.conf", "-x"])
    );
    assert_eq!(report["lang"], "C.UTF-8");

    let mut child = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args([
            "run",
            programs::P1_EXIT_WITH,
            "--input",
            "-",
            "--success-code",
            "10",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"200").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with code 200"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["run", programs::P1_ECHO, "--env", "NOEQUALS"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
}

/// Boolector from PyPI (`examples/boolector/fetch.sh`, which
/// `scripts/install-toolchains.sh` runs): a solver nobody built for wpool.
fn boolector() -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/boolector/fetch.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    std::fs::read(path.trim()).unwrap()
}

fn example_input(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/boolector")
            .join(name),
    )
    .unwrap()
}

// Regression: a solver's "sat" (10) and "unsat" (20) were failures.
#[test]
fn solver_from_pypi_answers_with_its_success_codes() {
    let ex = executor(1);
    let wasm = boolector();
    let solver = ex
        .register_with(
            &wasm,
            ModuleSettings::new()
                .name("boolector")
                .arg("--smt2")
                .arg("-m")
                .success_code(10)
                .success_code(20),
        )
        .unwrap();
    let report = spawn(
        &ex,
        &solver,
        &example_input("sat.smt2"),
        LimitOverrides::default(),
    )
    .wait_blocking();
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let output = String::from_utf8_lossy(&report.output);
    assert!(output.starts_with("sat\n"), "{output}");
    assert!(output.contains("#b00000101"), "the model x = 5: {output}");
    assert!(report.log.contains("exited with code 10"), "{}", report.log);

    let report = spawn(
        &ex,
        &solver,
        &example_input("unsat.smt2"),
        LimitOverrides::default(),
    )
    .wait_blocking();
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(report.output, b"unsat\n");

    // Without the module's settings, "sat" is exit code 10: a failure.
    let ex = executor(1);
    let plain = ex.register(&wasm).unwrap();
    let report = spawn(
        &ex,
        &plain,
        &example_input("sat.smt2"),
        LimitOverrides::default(),
    )
    .wait_blocking();
    assert_eq!(report.outcome, Outcome::Exit(10));
}

#[test]
fn cli_submit_keeps_settings_and_modules_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No server named, and none answers at the default address: the data
    // directory is used directly.
    let wpool = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wpool"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("WPOOL_SERVER")
            .env_remove("WPOOL_TOKEN")
            .output()
            .unwrap()
    };
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "10").unwrap();
    let out = wpool(&[
        "submit",
        programs::P1_EXIT_WITH,
        "--input",
        input.to_str().unwrap(),
        "--wait",
        "--name",
        "exiter",
        "--success-code",
        "10",
        "--env",
        "LANG=C",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(out.stdout, b"exiting with 10");

    let out = wpool(&["modules"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exiter"), "{stdout}");
    assert!(stdout.contains("success 0,10"), "{stdout}");
    assert!(stdout.contains("env LANG"), "{stdout}");

    let out = wpool(&["modules", "--json"]);
    let list = json(&out.stdout);
    assert_eq!(list["modules"][0]["settings"]["name"], "exiter");
    assert_eq!(
        list["modules"][0]["settings"]["success_codes"],
        serde_json::json!([10])
    );
}

#[test]
fn serve_config_grants_directories_and_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wpool.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
max_scratch = "1MiB"

[[read_only_dirs]]
host = "/definitely/not/here"
guest = "/lib"
modules = { name = "python" }
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("/definitely/not/here"), "{stderr}");
    assert!(stderr.contains("not a directory on this host"), "{stderr}");

    std::fs::write(
        &config,
        "[[read_only_dirs]]\nhost = \"/tmp\"\nguest = \"/lib\"\nmodules = { colour = \"x\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("is not valid"), "{stderr}");
}

/// Runs a pool call from a test outside async code.
/// Submits `spec` to `pool` from `runtime` and waits for its result.
fn submit_and_wait(
    runtime: &tokio::runtime::Runtime,
    pool: &Pool,
    spec: TaskSpec,
) -> wpool::TaskResult {
    runtime.block_on(async { pool.submit(spec).await.unwrap().wait().await.unwrap() })
}

/// [`submit_and_wait`] for a task that must succeed: its result and
/// its output as JSON.
fn succeeded(
    runtime: &tokio::runtime::Runtime,
    pool: &Pool,
    spec: TaskSpec,
) -> (wpool::TaskResult, serde_json::Value) {
    let result = submit_and_wait(runtime, pool, spec);
    assert_eq!(
        result.outcome,
        Some(Outcome::Success),
        "log: {}",
        result.log
    );
    let out = json(&result.output);
    (result, out)
}

fn block<F: std::future::Future>(pool: &Pool, call: F) -> F::Output {
    pool.executor().handle().block_on(call)
}

/// `PUT` with a JSON body, for the settings route.
fn put(
    server: &crate::server::Server,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut response = crate::server::agent()
        .put(format!("{}{path}", server.url))
        .header("Content-Type", content_type)
        .send(body.as_bytes())
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[test]
fn settings_are_set_and_shown_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir();
    let grant = format!("{}:/config", config.path().display());
    let server = crate::server::Server::start(&dir.path().join("data"), &["--read-only", &grant]);
    let hash = server.upload(programs::P1_CLI_TOOL);
    let settings_path = format!("/v1/modules/{hash}/settings");
    let run = |server: &crate::server::Server| {
        let (status, body) = server.post(
            "/v1/tasks?wait=60s",
            &serde_json::json!({"module": hash, "input": "in"}),
        );
        assert_eq!(status, 200, "{body}");
        body["result"].clone()
    };

    // No settings yet: the tool has no argument and says how to use it.
    let (status, body) = server.get(&settings_path);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!(ModuleSettings::default()));
    let result = run(&server);
    assert_eq!(result["outcome"]["kind"], "exit", "{result}");

    let (status, body) = put(
        &server,
        &settings_path,
        "application/json",
        r#"{"name": "tool", "args": ["/config/tool.conf", "-v"], "env": {"LANG": "C"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hash"], hash);
    assert_eq!(body["settings"]["name"], "tool");
    let result = run(&server);
    assert_eq!(result["state"], "succeeded", "{result}");
    let out = json(result["output"].as_str().unwrap().as_bytes());
    assert_eq!(
        out["argv"],
        serde_json::json!(["tool", "/config/tool.conf", "-v"])
    );
    assert_eq!(out["lang"], "C");
    assert_eq!(out["config"], "threshold = 3");

    // Refusals: each names the problem, and changes nothing.
    let (status, body) = put(
        &server,
        &settings_path,
        "application/json",
        r#"{"env": {"WPOOL_X": "1"}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_settings", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WPOOL_X"),
        "{body}"
    );
    let (status, body) = put(
        &server,
        &settings_path,
        "application/json",
        r#"{"colour": "red"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );
    let (status, body) = put(&server, &settings_path, "text/plain", "{}");
    assert_eq!(status, 415, "{body}");
    let unknown = format!("/v1/modules/{}/settings", "0".repeat(64));
    let (status, body) = put(&server, &unknown, "application/json", "{}");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_module");
    let (status, body) = server.get(&unknown);
    assert_eq!(status, 404, "{body}");
    let component = server.upload(programs::P2_CLI);
    let (status, body) = put(
        &server,
        &format!("/v1/modules/{component}/settings"),
        "application/json",
        r#"{"scratch": 65536}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_settings", "{body}");
    let (_, body) = server.get(&settings_path);
    assert_eq!(body["name"], "tool", "{body}");

    // Listings show the settings; the CLI shows the name.
    let (status, body) = server.get("/v1/modules");
    assert_eq!(status, 200);
    let listed = body["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hash"] == hash)
        .cloned()
        .unwrap();
    assert_eq!(
        listed["settings"]["args"],
        serde_json::json!(["/config/tool.conf", "-v"])
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wpool"))
        .args(["modules", "--server", &server.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tool") && stdout.contains("env LANG"),
        "{stdout}"
    );

    // Settings survive a restart of the daemon.
    drop(server);
    let server = crate::server::Server::start(&dir.path().join("data"), &["--read-only", &grant]);
    let result = run(&server);
    assert_eq!(result["state"], "succeeded", "{result}");
}

#[test]
fn cli_submit_sends_settings_to_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::server::Server::start(&dir.path().join("data"), &[]);
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "10").unwrap();
    let submit = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wpool"))
            .args(["submit", programs::P1_EXIT_WITH, "--input"])
            .arg(&input)
            .args(["--wait", "--server", &server.url])
            .args(extra)
            .output()
            .unwrap()
    };
    // Exit 10 fails without settings, and succeeds once the module says so.
    let out = submit(&[]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = submit(&["--name", "exiter", "--success-code", "10"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"exiting with 10");
    let out = submit(&["--env", "WPOOL_NO=1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("WPOOL_NO") && stderr.contains("reserved"),
        "{stderr}"
    );
}
