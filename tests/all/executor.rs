//! The executor: limits, kills, ABIs, isolation, parallelism, caching.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wpool::{Execution, Job, LimitOverrides, ModuleKind, Outcome};
use wpool_test_artifacts as programs;

use crate::util::{assert_healthy, executor, fixture, read, run, run_wasm, spawn, timeout};

/// A kill must come within this bound of the deadline. Generous: these
/// machines are shared; the benchmark reports the real figure.
const KILL_BOUND: Duration = Duration::from_secs(1);

#[test]
fn command_echoes_input_and_keeps_log() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_ECHO,
        b"{\"hello\":1}",
        LimitOverrides::default(),
    );
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.output, b"{\"hello\":1}");
    assert_eq!(report.log, "echoing 11 bytes\n");
    assert!(report.fuel_consumed.unwrap() > 0);
}

/// `report` is of a run killed at its timeout `limit`, within `bound`.
fn assert_timed_out(report: &wpool::RunReport, limit: Duration, bound: Duration) {
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(
        report.duration >= limit,
        "stopped early: {:?}",
        report.duration
    );
    assert!(
        report.duration < limit + bound,
        "killed late: {:?}",
        report.duration
    );
}

#[test]
fn spinning_guest_is_killed_at_its_timeout() {
    let ex = executor(1);
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let report = run(&ex, programs::P1_SPIN, b"", timeout(limit));
    let elapsed = started.elapsed();
    assert_timed_out(&report, limit, KILL_BOUND);
    assert!(elapsed < limit + KILL_BOUND, "reported late: {elapsed:?}");
    assert_healthy(&ex);
}

#[test]
fn sleeping_guest_is_killed_at_its_timeout() {
    // The guest asks WASI to sleep for an hour; epoch checks never run while
    // it waits in the host, so this shows the second kill mechanism.
    let ex = executor(1);
    let limit = Duration::from_millis(300);
    let report = run(&ex, programs::P1_SLEEP, b"", timeout(limit));
    assert_timed_out(&report, limit, KILL_BOUND);
    assert_healthy(&ex);
}

/// Runs `program` (on no input, with a long timeout) for 200 ms, then
/// cancels it with `cancel`: the run ends cancelled, having run, within
/// [`KILL_BOUND`] of the cancel.
fn killed_while_running(ex: &wpool::Executor, program: &str, cancel: impl FnOnce(&Execution)) {
    let module = ex.register(&read(program)).unwrap();
    let execution = spawn(ex, &module, b"", timeout(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let cancelled_at = Instant::now();
    cancel(&execution);
    let report = execution.wait_blocking();
    assert_eq!(report.outcome, Outcome::Cancelled, "{program}");
    assert!(
        report.duration >= Duration::from_millis(150),
        "{program}: it did run"
    );
    assert!(
        cancelled_at.elapsed() < KILL_BOUND,
        "{program}: slow cancel {:?}",
        cancelled_at.elapsed()
    );
}

#[test]
fn cancel_kills_running_guests() {
    let ex = executor(2);
    for program in [programs::P1_SPIN, programs::P1_SLEEP] {
        killed_while_running(&ex, program, Execution::cancel);
    }
    assert_healthy(&ex);
}

/// A token taken from an `Execution` while its run already waits in a
/// host call or spins in wasm kills it when cancelled; and cancelling the
/// `Execution` cancels a token taken before.
#[test]
fn a_cancel_token_taken_while_the_task_runs_kills_it_and_follows_its_cancel() {
    let ex = executor(2);
    for program in [programs::P1_SLEEP, programs::P1_SPIN] {
        killed_while_running(&ex, program, |execution| {
            let token = execution.cancel_token();
            assert!(!token.is_cancelled(), "{program}");
            token.cancel();
        });

        let module = ex.register(&read(program)).unwrap();
        let execution = spawn(&ex, &module, b"", timeout(Duration::from_secs(60)));
        let token = execution.cancel_token();
        std::thread::sleep(Duration::from_millis(100));
        execution.cancel();
        assert!(token.is_cancelled(), "{program}");
        assert_eq!(execution.wait_blocking().outcome, Outcome::Cancelled);
    }
    assert_healthy(&ex);
}

#[test]
fn cancel_before_start_means_never_run() {
    let ex = executor(1);
    let sleeper = ex.register(&read(programs::P1_SLEEP)).unwrap();
    let first = spawn(&ex, &sleeper, b"300", LimitOverrides::default());
    let second = spawn(&ex, &sleeper, b"10", LimitOverrides::default());
    second.cancel();
    let report = second.wait_blocking();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(
        report.duration,
        Duration::ZERO,
        "a cancelled queued task never starts"
    );
    assert_eq!(first.wait_blocking().output, b"slept 300 ms");
}

/// `wait_blocking` looks for the report a little before it parks the
/// thread: a report that comes meanwhile and one that comes after it
/// parked (an end, a cancel from another thread) both reach it.
#[test]
fn wait_blocking_gets_reports_before_and_after_it_parks() {
    let ex = executor(1);
    let trivial = ex.register(&read(programs::P1_TRIVIAL)).unwrap();
    for _ in 0..200 {
        let report = spawn(&ex, &trivial, b"", LimitOverrides::default()).wait_blocking();
        assert_eq!(report.outcome, Outcome::Success);
    }
    let sleeper = ex.register(&read(programs::P1_SLEEP)).unwrap();
    let report = spawn(&ex, &sleeper, b"100", LimitOverrides::default()).wait_blocking();
    assert_eq!(report.output, b"slept 100 ms");

    let forever = spawn(&ex, &sleeper, b"", timeout(Duration::from_secs(3600)));
    let cancel = forever.cancel_token();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        cancel.cancel();
    });
    let started = Instant::now();
    let report = forever.wait_blocking();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(started.elapsed() < KILL_BOUND + Duration::from_millis(100));
    canceller.join().unwrap();
    assert_healthy(&ex);
}

#[test]
fn fuel_exhaustion_is_reported_with_fuel_consumed() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_COUNT,
        b"1000000000",
        LimitOverrides {
            fuel: Some(200_000),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_eq!(report.fuel_consumed, Some(200_000));

    // Fuel is exactly repeatable, and grows with the work done.
    let small = run(&ex, programs::P1_COUNT, b"1000", LimitOverrides::default());
    let again = run(&ex, programs::P1_COUNT, b"1000", LimitOverrides::default());
    let large = run(
        &ex,
        programs::P1_COUNT,
        b"100000",
        LimitOverrides::default(),
    );
    assert_eq!(small.outcome, Outcome::Success);
    assert_eq!(small.fuel_consumed, again.fuel_consumed);
    assert!(large.fuel_consumed.unwrap() > 10 * small.fuel_consumed.unwrap());
    assert_healthy(&ex);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_MEMORY_BOMB,
        b"",
        LimitOverrides {
            memory: Some(32 << 20),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::MemoryLimit, "log: {}", report.log);

    let report = run_wasm(
        &ex,
        &fixture("grow_loop.wat"),
        b"",
        LimitOverrides {
            memory: Some(8 << 20),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::MemoryLimit);

    // A module whose initial memory is over the limit never starts.
    let report = run_wasm(
        &ex,
        &fixture("huge_memory.wat"),
        b"",
        LimitOverrides {
            memory: Some(64 << 20),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    assert_healthy(&ex);
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_trap() {
    let ex = executor(1);
    // Pure wasm recursion exhausts the wasm stack.
    let report = run_wasm(&ex, &fixture("recurse.wat"), b"", LimitOverrides::default());
    assert_eq!(report.outcome, Outcome::Trap("stack overflow".into()));
    // Rust keeps big frames on a stack in linear memory, which runs out
    // first: a trap all the same, and the host is unharmed.
    let report = run(&ex, programs::P1_RECURSE, b"", LimitOverrides::default());
    assert!(
        matches!(report.outcome, Outcome::Trap(_)),
        "{:?}",
        report.outcome
    );
    assert_healthy(&ex);
}

#[test]
fn unreachable_is_a_trap() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_UNREACHABLE,
        b"",
        LimitOverrides::default(),
    );
    match &report.outcome {
        Outcome::Trap(message) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    // The guest's log, then the trap's backtrace, with the function names
    // of the module's name section.
    assert!(
        report
            .log
            .starts_with("about to trap\nwpool: wasm backtrace:\n"),
        "{}",
        report.log
    );
    assert!(report.log.contains("unreachable::main"), "{}", report.log);
    assert_healthy(&ex);
}

#[test]
fn nonzero_exit_carries_code_and_log_tail() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_EXIT_CODE,
        b"",
        LimitOverrides {
            max_log: Some(64),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::Exit(3));
    assert!(
        report.log.ends_with("log line 19\nlog line 20\n"),
        "{:?}",
        report.log
    );
    assert!(report.log.len() <= 64);
    assert!(
        !report.log.contains("log line 1\n"),
        "only the tail is kept"
    );
    assert_eq!(report.output, b"partial output");
}

#[test]
fn endless_output_is_stopped_at_the_cap() {
    let ex = executor(1);
    let cap = 1u64 << 20;
    let report = run(
        &ex,
        programs::P1_OUTPUT_FLOOD,
        b"",
        LimitOverrides {
            max_output: Some(cap),
            timeout: Some(Duration::from_secs(20)),
            ..Default::default()
        },
    );
    assert_eq!(report.outcome, Outcome::OutputTooLarge);
    assert!(
        report.output.len() as u64 <= cap,
        "host buffered {} bytes",
        report.output.len()
    );
    assert!(
        report.duration < Duration::from_secs(10),
        "stopped by the cap, not the timeout"
    );
    assert_healthy(&ex);
}

#[test]
fn invalid_modules_are_rejected_at_registration() {
    let ex = executor(1);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"definitely not wasm".to_vec(), "magic"),
        ("text", b"(module)".to_vec(), ".wat"),
        (
            "truncated",
            read(programs::P1_ECHO)[..100].to_vec(),
            "does not validate",
        ),
        (
            "unknown import",
            fixture("imports_unknown.wat"),
            "env::launch_missiles",
        ),
        (
            "no _start",
            fixture("no_start.wat"),
            "does not export `_start`",
        ),
        (
            "bad _start",
            fixture("bad_start.wat"),
            "`_start` is exported but",
        ),
        (
            "other world",
            fixture("other_world.wat"),
            "implements neither world wpool runs",
        ),
    ];
    for (name, bytes, expected) in cases {
        let err = ex.register(&bytes).expect_err(name).to_string();
        assert!(err.starts_with("invalid module: "), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    assert_eq!(
        ex.compilations(),
        5,
        "each bad module compiled at most once"
    );
    assert_healthy(&ex);
}

#[test]
fn guests_get_no_files_env_or_sockets() {
    let ex = executor(1);
    let report = run(
        &ex,
        programs::P1_CAPABILITIES,
        b"",
        LimitOverrides::default(),
    );
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    let seen: serde_json::Value = serde_json::from_slice(&report.output).unwrap();
    assert!(
        seen["file"].as_str().unwrap().starts_with("error"),
        "{seen}"
    );
    assert!(seen["dir"].as_str().unwrap().starts_with("error"), "{seen}");
    assert!(
        seen["socket"].as_str().unwrap().starts_with("error"),
        "{seen}"
    );
    assert_eq!(seen["env_count"], 0, "{seen}");
    assert_eq!(seen["home"], serde_json::Value::Null, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    assert_healthy(&ex);
}

#[test]
fn workers_run_tasks_in_parallel() {
    let workers = 4;
    let ex = executor(workers);
    let sleeper = ex.register(&read(programs::P1_SLEEP)).unwrap();
    // Warm up: the first instantiation of a slot costs more.
    spawn(&ex, &sleeper, b"1", LimitOverrides::default()).wait_blocking();
    let started = Instant::now();
    let runs: Vec<_> = (0..workers)
        .map(|_| spawn(&ex, &sleeper, b"200", LimitOverrides::default()))
        .collect();
    for run in runs {
        assert_eq!(run.wait_blocking().outcome, Outcome::Success);
    }
    let elapsed = started.elapsed();
    // Serially this would take 800 ms.
    assert!(
        elapsed < Duration::from_millis(600),
        "not parallel: {elapsed:?}"
    );
}

#[test]
fn a_module_is_compiled_once_for_a_thousand_tasks() {
    let ex = executor(2);
    let bytes = read(programs::P1_TRIVIAL);
    let before = ex.compilations();
    let runs: Vec<_> = (0..1000)
        .map(|_| {
            let module = ex.register(&bytes).unwrap();
            spawn(&ex, &module, b"", LimitOverrides::default())
        })
        .collect();
    for run in runs {
        assert_eq!(run.wait_blocking().outcome, Outcome::Success);
    }
    assert_eq!(ex.compilations() - before, 1);
}

#[test]
fn command_progress_lines_are_reported_not_logged() {
    let ex = executor(1);
    let module = ex.register(&read(programs::P1_PROGRESS)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let report = ex
        .spawn(Job {
            module,
            input: Vec::new(),
            limits: ex.limits(&LimitOverrides::default()).unwrap(),
            on_progress: Some(Arc::new(move |done, total| {
                sink.lock().unwrap().push((done, total))
            })),
            env: Vec::new(),
        })
        .wait_blocking();
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.progress, Some((4, 4)));
    assert_eq!(*seen.lock().unwrap(), vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(report.log, "step 1\nstep 2\nstep 3\nstep 4\n");
}

mod component {
    use super::*;

    fn op(json: &str) -> Vec<u8> {
        json.as_bytes().to_vec()
    }

    #[test]
    fn runs_and_returns_output_log_and_progress() {
        let ex = executor(1);
        let module = ex.register(&read(programs::P2_COMPONENT)).unwrap();
        assert_eq!(module.kind(), ModuleKind::Component);
        let report = spawn(
            &ex,
            &module,
            &op(r#"{"op":"echo","text":"héllo"}"#),
            LimitOverrides::default(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        let out: serde_json::Value = serde_json::from_slice(&report.output).unwrap();
        assert_eq!(out["text"], "héllo");
        assert!(report.log.contains("echoing 6 bytes"), "{}", report.log);
        assert!(report.fuel_consumed.unwrap() > 0);

        let report = spawn(
            &ex,
            &module,
            &op(r#"{"op":"progress","steps":3}"#),
            LimitOverrides::default(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, Outcome::Success);
        assert_eq!(report.progress, Some((3, 3)));
    }

    #[test]
    fn an_error_is_a_failure_with_its_message() {
        let ex = executor(1);
        let module = ex.register(&read(programs::P2_COMPONENT)).unwrap();
        let report = spawn(
            &ex,
            &module,
            &op(r#"{"op":"fail","message":"no such customer"}"#),
            LimitOverrides::default(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, Outcome::Failed("no such customer".into()));
        assert!(report.output.is_empty());
    }

    #[test]
    fn spinning_and_sleeping_components_are_killed() {
        let ex = executor(2);
        let module = ex.register(&read(programs::P2_COMPONENT)).unwrap();
        let limit = Duration::from_millis(300);
        for input in [r#"{"op":"spin"}"#, r#"{"op":"sleep","ms":3600000}"#] {
            let report = spawn(&ex, &module, &op(input), timeout(limit)).wait_blocking();
            assert_eq!(report.outcome, Outcome::Timeout, "{input}");
            assert!(
                report.duration < limit + KILL_BOUND,
                "{input}: {:?}",
                report.duration
            );

            let execution = spawn(&ex, &module, &op(input), timeout(Duration::from_secs(60)));
            std::thread::sleep(Duration::from_millis(100));
            execution.cancel();
            assert_eq!(
                execution.wait_blocking().outcome,
                Outcome::Cancelled,
                "{input}"
            );
        }
        let report = spawn(
            &ex,
            &module,
            &op(r#"{"op":"echo","text":"ok"}"#),
            LimitOverrides::default(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, Outcome::Success);
    }

    #[test]
    fn memory_limit_holds_for_components() {
        let ex = executor(1);
        let module = ex.register(&read(programs::P2_COMPONENT)).unwrap();
        let small = LimitOverrides {
            memory: Some(16 << 20),
            ..Default::default()
        };
        let report = spawn(
            &ex,
            &module,
            &op(r#"{"op":"alloc","mib":64}"#),
            small.clone(),
        )
        .wait_blocking();
        assert_eq!(report.outcome, Outcome::MemoryLimit, "log: {}", report.log);
        let report = spawn(&ex, &module, &op(r#"{"op":"alloc","mib":4}"#), small).wait_blocking();
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    }
}

/// The short input of the `count` program, whose runs are far within a
/// tick.
const SHORT: &[u8] = b"100";

/// Checks the report of a run of the `count` program on [`SHORT`].
fn counted_short(report: &wpool::RunReport) {
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(report.output, b"104485749767");
}

/// Runs `module` with `input` until its runs are direct calls (at most
/// 100 runs), checking each output; the number of runs it took.
fn warm_until_direct(
    ex: &wpool::Executor,
    module: &wpool::CompiledModule,
    input: &[u8],
    check: impl Fn(&wpool::RunReport),
) -> usize {
    let before = ex.direct_calls();
    for runs in 1..=100 {
        let report = spawn(ex, module, input, LimitOverrides::default()).wait_blocking();
        check(&report);
        if ex.direct_calls() > before {
            return runs;
        }
    }
    panic!("100 short runs of a module that cannot wait, and none was a direct call");
}

#[test]
fn short_runs_become_direct_calls_which_are_still_killed_and_cancelled() {
    // A long tick, so that a direct call lasts long enough (two ticks) to
    // be killed or cancelled in it, before it would start over on a fiber.
    let tick = Duration::from_millis(200);
    let mut config = wpool::EngineConfig::new();
    config.workers(1).epoch_tick(tick);
    let ex = wpool::Executor::new(&config).unwrap();
    let module = ex.register(&read(programs::P1_COUNT)).unwrap();
    let runs = warm_until_direct(&ex, &module, SHORT, counted_short);
    assert!(runs > 1, "the first run of a module is never direct");

    // A run that spins (about forever) in a direct call: killed at its
    // timeout by the epoch callback, at the latest at the second tick,
    // which comes more than one tick after the start. A timeout of one
    // tick: killed in the direct call, after a tick at least (a long
    // run).
    let limit = tick;
    let direct = ex.direct_calls();
    let report = spawn(&ex, &module, b"18446744073709551615", timeout(limit)).wait_blocking();
    assert_eq!(ex.direct_calls(), direct + 1, "that run was a direct call");
    assert_eq!(ex.direct_call_restarts(), 0, "and it ended there");
    assert_timed_out(&report, limit, tick + KILL_BOUND);

    // That long run sent the module back to the fiber.
    let report = spawn(&ex, &module, SHORT, LimitOverrides::default()).wait_blocking();
    counted_short(&report);
    assert_eq!(
        ex.direct_calls(),
        direct + 1,
        "a long run ends direct calls"
    );

    // Cancelled in a direct call, once short runs made it direct again.
    warm_until_direct(&ex, &module, SHORT, counted_short);
    let execution = spawn(
        &ex,
        &module,
        b"18446744073709551615",
        LimitOverrides::default(),
    );
    std::thread::sleep(Duration::from_millis(50));
    let cancelled = Instant::now();
    execution.cancel();
    let report = execution.wait_blocking();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(ex.direct_call_restarts(), 0, "cancelled in the direct call");
    assert!(
        cancelled.elapsed() < tick + KILL_BOUND,
        "cancelled late: {:?}",
        cancelled.elapsed()
    );
    assert_healthy(&ex);
}

#[test]
fn a_direct_call_that_runs_long_starts_over_on_a_fiber() {
    // A hundred million steps: many ticks (1 ms each), even if the ticker
    // is slowed by a loaded machine.
    let long = b"100000000";
    // What the run gives on a fiber alone: a module's first run is never
    // direct.
    let reference = run(
        &executor(1),
        programs::P1_COUNT,
        long,
        LimitOverrides::default(),
    );
    assert_eq!(
        reference.outcome,
        Outcome::Success,
        "log: {}",
        reference.log
    );

    let ex = executor(1);
    let module = ex.register(&read(programs::P1_COUNT)).unwrap();
    // The direct call is ended at the second tick and the run starts over
    // on a fiber, which finishes it; the report is the fiber's alone. (If
    // the thread was held up past a tick in the last short run, that run
    // sent the module back to the fiber: warm it up again.)
    let mut tries = 0;
    let (report, restarts) = loop {
        warm_until_direct(&ex, &module, SHORT, counted_short);
        let (direct, restarts) = (ex.direct_calls(), ex.direct_call_restarts());
        let report = spawn(&ex, &module, long, LimitOverrides::default()).wait_blocking();
        if ex.direct_calls() > direct {
            break (report, restarts);
        }
        tries += 1;
        assert!(tries < 10, "the long run never began as a direct call");
    };
    assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
    assert_eq!(ex.direct_call_restarts(), restarts + 1);
    assert_eq!(report.output, reference.output);
    assert_eq!(
        report.fuel_consumed, reference.fuel_consumed,
        "the fuel of the fiber's run only"
    );
    // The long run ended direct calls.
    let again = spawn(&ex, &module, long, LimitOverrides::default()).wait_blocking();
    assert_eq!(again.output, reference.output);
    assert_eq!(ex.direct_call_restarts(), restarts + 1);
}

#[test]
fn only_the_executors_own_threads_make_direct_calls() {
    // A run polled on another thread (here the test's, through the
    // executor's handle) has that thread's stack, not one sized for a
    // wasm stack: it stays on a fiber.
    let ex = executor(1);
    let module = ex.register(&read(programs::P1_COUNT)).unwrap();
    let limits = ex.limits(&LimitOverrides::default()).unwrap();
    let cancel = wpool::CancellationToken::new();
    for _ in 0..30 {
        let report =
            ex.handle()
                .block_on(ex.run(&module, SHORT.to_vec(), &limits, &cancel, None, &[]));
        counted_short(&report);
    }
    assert_eq!(ex.direct_calls(), 0);
    // On the workers, the same module's short runs become direct calls.
    warm_until_direct(&ex, &module, SHORT, counted_short);
}

#[test]
fn a_module_that_can_sleep_is_never_called_directly() {
    let ex = executor(1);
    let module = ex.register(&read(programs::P1_SLEEP)).unwrap();
    for _ in 0..30 {
        let report = spawn(&ex, &module, b"0", LimitOverrides::default()).wait_blocking();
        assert_eq!(report.outcome, Outcome::Success, "log: {}", report.log);
        assert_eq!(report.output, b"slept 0 ms");
    }
    assert_eq!(
        ex.direct_calls(),
        0,
        "it imports poll_oneoff: always on a fiber"
    );
}

#[test]
fn a_direct_call_overflows_the_wasm_stack_not_the_thread() {
    // A wasm stack larger than a thread's default (2 MiB): a direct call
    // runs on the worker thread's stack, which must hold it.
    let mut config = wpool::EngineConfig::new();
    // A long tick: the overflow and its backtrace take longer than 1 ms
    // in a debug build, and only runs within a tick become direct.
    config
        .workers(1)
        .max_wasm_stack(8 << 20)
        .epoch_tick(Duration::from_millis(200));
    let ex = wpool::Executor::new(&config).unwrap();
    let module = ex.register(&fixture("recurse.wat")).unwrap();
    warm_until_direct(&ex, &module, b"", |report| {
        assert_eq!(report.outcome, Outcome::Trap("stack overflow".into()));
    });
    assert_healthy(&ex);
}

#[test]
fn dropping_the_executor_kills_its_runs_and_answers_queued_ones() {
    let ex = executor(1);
    let spinner = ex.register(&read(programs::P1_SPIN)).unwrap();
    let running = spawn(&ex, &spinner, b"", timeout(Duration::from_secs(60)));
    let queued = spawn(&ex, &spinner, b"", timeout(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    let dropped_at = Instant::now();
    drop(ex);
    let report = running.wait_blocking();
    assert_eq!(report.outcome, Outcome::Cancelled, "{}", report.log);
    assert!(report.duration >= Duration::from_millis(150), "it did run");
    let report = queued.wait_blocking();
    assert!(
        matches!(report.outcome, Outcome::Cancelled | Outcome::HostError(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        report.duration,
        Duration::ZERO,
        "a queued task never starts"
    );
    assert!(
        dropped_at.elapsed() < KILL_BOUND,
        "slow kill at drop: {:?}",
        dropped_at.elapsed()
    );
}
