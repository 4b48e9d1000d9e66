//! The crash tests: child processes run a durable pool and are killed.
//!
//! `acknowledged_tasks_survive_sigkill`: a child submits thousands of tasks
//! (default options: one attempt) and waits for their results, and is
//! killed with SIGKILL at random moments (while it submits, while tasks run
//! and their results are written), then started again on the same data
//! directory, round after round. The child appends every id whose
//! submission was acknowledged, and every result a waiter was given, to
//! files. After every round the parent checks the store against what was
//! seen: a result once given out never changes. At the end every
//! acknowledged task must have exactly one result, a success: none lost,
//! none recorded twice; a task running at a kill runs again (an
//! interruption, not an attempt) and succeeds.
//!
//! `relaxed_mode_loses_acknowledged_work`: the same check, with nothing
//! flushed before it is acknowledged, must find losses: the test can fail.
//!
//! `a_task_that_kills_its_host_ends_at_max_interruptions`: a child aborts
//! itself whenever one task starts; after `max_interruptions` restarts that
//! task ends `interrupted`, and the tasks behind it run.
//!
//! The child is this test binary again, started with an environment
//! variable that makes the (otherwise ignored) `child` tests do the work.
//!
//! Run alone: `cargo test -p wpool --test crash -- --nocapture`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wpool::store::{SledOptions, SledStore, Store, SyncMode, TaskFilter};
use wpool::{Outcome, Pool, PoolConfig, TaskId, TaskSpec, TaskState};

const DIR_ENV: &str = "WPOOL_CRASH_DIR";
const SUBMIT_ENV: &str = "WPOOL_CRASH_SUBMIT";
const RELAXED_ENV: &str = "WPOOL_CRASH_RELAXED";
/// Rounds killed at a random moment, then one that runs to the end.
const KILLED_ROUNDS: usize = 21;
/// Tasks submitted per round.
const PER_ROUND: usize = 300;
const WORKERS: usize = 2;
const SUBMITTERS: usize = 8;
/// Each task sleeps 3 ms (a host call), so kills land mid-run. The spaces
/// after the number make the input long enough that the store logs each
/// claim and end without it (the task reads past them), so that replay
/// after every kill puts inputs back from the records before.
const TASK_INPUT: &[u8] = b"3                                                                                                                                ";

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn acks_file(dir: &Path) -> PathBuf {
    dir.join("acknowledged")
}

fn seen_file(dir: &Path) -> PathBuf {
    dir.join("seen")
}

/// A child's warnings and errors go to its standard error, which the
/// test's own output shows: a hang or a loss then comes with what the pool
/// said of it.
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Opens `path` to append lines to, ending first a line that a kill cut.
///
/// A kill can cut a line even though each is one `write`: the kernel
/// copies a write into the page cache a page at a time and gives up at
/// the next page when a fatal signal is pending, so a line that spans two
/// pages may be left half written. Ended here, the next round's first
/// line stays whole; the readers skip the cut one.
fn append(path: &Path) -> Arc<Mutex<std::fs::File>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1)).unwrap();
        file.read_exact(&mut last).unwrap();
        if last != *b"\n" {
            file.write_all(b"\n").unwrap();
        }
    }
    Arc::new(Mutex::new(file))
}

#[test]
fn a_line_cut_by_a_kill_is_ended_before_the_next_round_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acks");
    std::fs::write(&path, "01M8GWPCJ").unwrap();
    append(&path).lock().unwrap().write_all(b"next\n").unwrap();
    append(&path).lock().unwrap().write_all(b"last\n").unwrap();
    assert_eq!(read_lines(&path), ["01M8GWPCJ", "next", "last"]);
}

/// The end of a whole line of the seen file: a line without it was cut.
const SEEN_END: &str = " .";

/// The length of an acknowledged id's line: a shorter one was cut.
const ID_LEN: usize = 26;

/// Not a test on its own: the child process of
/// `acknowledged_tasks_survive_sigkill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests in a child process"]
async fn child() {
    let Some(dir) = std::env::var_os(DIR_ENV).map(PathBuf::from) else {
        return;
    };
    log_to_stderr();
    let submit: usize = std::env::var(SUBMIT_ENV).unwrap().parse().unwrap();
    let mut options = SledOptions::new();
    if std::env::var_os(RELAXED_ENV).is_some() {
        // Nothing reaches the disk but by the store's background write of
        // its log, a minute apart: what a kill loses is then everything
        // recent.
        options.sync(SyncMode::Relaxed {
            interval: Duration::from_secs(60),
        });
    }
    let store = Arc::new(SledStore::open(data_dir(&dir), &options).unwrap());
    let mut config = PoolConfig::new();
    config.workers(WORKERS);
    let pool = Pool::with_store(config, store.clone()).unwrap();
    let sleep = pool
        .register(&std::fs::read(wpool_test_artifacts::P1_SLEEP).unwrap())
        .await
        .unwrap();
    say("ready");
    let acks = append(&acks_file(&dir));
    let seen = append(&seen_file(&dir));
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let pool = pool.clone();
        let acks = acks.clone();
        let seen = seen.clone();
        submitters.push(tokio::spawn(async move {
            let mut waiters = Vec::new();
            for _ in 0..submit / SUBMITTERS {
                // Default options: one attempt. A kill is not the task's
                // failure; it must run again. The host is killed on
                // purpose every round, and a task may be running at
                // several of those kills: allow as many interruptions as
                // there are rounds (the bound itself has its own test,
                // `a_task_that_kills_its_host_ends_at_max_interruptions`).
                let spec = TaskSpec::new(sleep, TASK_INPUT.to_vec())
                    .max_interruptions(u32::try_from(KILLED_ROUNDS).unwrap_or(u32::MAX) + 1);
                let task = pool.submit(spec).await.unwrap();
                // Acknowledged: `submit` returned. One write per line; a
                // kill may still cut the line it lands in (see `append`).
                acks.lock()
                    .unwrap()
                    .write_all(format!("{}\n", task.id()).as_bytes())
                    .unwrap();
                let seen = seen.clone();
                waiters.push(tokio::spawn(async move {
                    let result = task.wait().await.unwrap();
                    // Seen: a waiter was given this result.
                    let line = format!(
                        "{} {} {}{SEEN_END}\n",
                        result.id,
                        result.state,
                        hex(&result.output)
                    );
                    seen.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }));
            }
            for waiter in waiters {
                waiter.await.unwrap();
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    say("submitted");
    pool.close().await.unwrap();
    say("closed");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Round {
    phase: &'static str,
    killed: bool,
}

/// Runs one child; kills it at a random moment of `phase` unless `phase`
/// is "none". Returns what happened.
fn round(dir: &Path, submit: usize, phase: &'static str, relaxed: bool) -> Round {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(SUBMIT_ENV, submit.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if relaxed {
        command.env(RELAXED_ENV, "1");
    }
    let mut child = spawn(&mut command);
    let stdout = child.stdout.take().unwrap();
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match said.recv_timeout(left) {
                Ok(line) if line.trim().ends_with(what) => return true,
                Ok(_) => {}
                // Ended (or already past it, killed before): no such line.
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the child never said {what}"),
            }
        }
    };
    let kill_after = match phase {
        "none" => None,
        // While the submissions (and the first runs) go on.
        "submitting" => {
            assert!(wait_for("ready"));
            Some(Duration::from_millis(fastrand::u64(0..250)))
        }
        // While tasks run and their results are recorded and given out.
        "running" => {
            assert!(wait_for("ready"));
            Some(Duration::from_millis(fastrand::u64(150..600)))
        }
        // Anywhere, startup and recovery included.
        _ => Some(Duration::from_millis(fastrand::u64(0..1200))),
    };
    let mut killed = false;
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            killed = true;
            child.kill().unwrap(); // SIGKILL
        }
    }
    let Some(status) = wait_bounded(&mut child, CHILD_LIMIT) else {
        panic!(
            "the child ({phase} round, {submit} tasks) did not end in {CHILD_LIMIT:?}: it was \
             killed, and its store holds {}",
            describe_unfinished(dir)
        );
    };
    if !killed {
        assert!(status.success(), "the child failed: {status}");
    }
    Round { phase, killed }
}

/// How long a child may take: a round that is not killed ends in seconds
/// (every task sleeps 3 ms), so a child past this hangs. A hang fails the
/// test with what the store holds, rather than running until the test
/// runner's own limit.
const CHILD_LIMIT: Duration = Duration::from_secs(180);

/// How long a whole crash test may take in its own process.
const TEST_LIMIT: Duration = Duration::from_secs(900);

/// The children alive, which [`Watchdog`] kills before it aborts: a
/// child left behind would hold the test's output open.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Starts a child, known to [`Watchdog`] until [`wait_bounded`] returns.
fn spawn(command: &mut Command) -> std::process::Child {
    let child = command.spawn().unwrap();
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(child.id());
    child
}

/// Waits for `child` to end, for up to `limit`; past that, prints the
/// stacks of its threads, kills it and returns `None`.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let status = wait_or_kill(child, limit);
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|&pid| pid != child.id());
    status
}

fn wait_or_kill(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let status = wait_for_exit(child, limit);
    if status.is_none() {
        eprintln!(
            "the child {} hangs; its threads:\n{}",
            child.id(),
            stacks(child.id())
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Waits for `child` to end, for up to `limit`; `None` if it still runs.
fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stacks of every thread of process `pid`, by gdb if it is
/// installed: what a hang is waiting for.
fn stacks(pid: u32) -> String {
    let Ok(out) = tempfile::tempfile() else {
        return "(no stacks: no temporary file for gdb's output)".into();
    };
    let mut gdb = match Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 40"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(gdb) => gdb,
        Err(e) => return format!("(no stacks: gdb could not be run: {e})"),
    };
    // gdb itself is bounded: a hang must end in a failure, not in a wait.
    if wait_for_exit(&mut gdb, Duration::from_secs(120)).is_none() {
        let _ = gdb.kill();
        let _ = gdb.wait();
    }
    let mut out = out;
    let mut text = String::new();
    let _ = out.seek(SeekFrom::Start(0));
    let _ = out.read_to_string(&mut text);
    text
}

/// Guards a test against hanging in its own process (a child's hang is
/// bounded by [`wait_bounded`]): past `limit`, prints this process's
/// stacks and aborts it, so that a hang fails at once with where it
/// hangs. Disarmed when dropped.
struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Watchdog {
    fn arm(what: &'static str, limit: Duration) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watched = done.clone();
        std::thread::spawn(move || {
            let (lock, ended) = &*watched;
            let guard = lock.lock().unwrap();
            let (guard, _) = ended
                .wait_timeout_while(guard, limit, |done| !*done)
                .unwrap();
            if !*guard {
                // Straight to the standard error: the test runner's capture
                // of `eprintln!` dies with the abort.
                let text = format!(
                    "{what} did not end in {limit:?}; its threads:\n{}\n",
                    stacks(std::process::id())
                );
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
                let children = CHILDREN
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                for pid in children {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                std::process::abort();
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, ended) = &*self.done;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        ended.notify_all();
    }
}

/// What the store of `dir` holds unfinished, in words: its counts and the
/// first unfinished tasks.
fn describe_unfinished(dir: &Path) -> String {
    let store = match SledStore::open(data_dir(dir), &SledOptions::new()) {
        Ok(store) => store,
        Err(e) => return format!("nothing readable ({e})"),
    };
    let mut text = format!("counts {:?}", store.counts());
    for state in [TaskState::Queued, TaskState::Scheduled, TaskState::Running] {
        let filter = TaskFilter {
            state: Some(state),
            limit: 5,
            ..TaskFilter::default()
        };
        for task in store.list(&filter).unwrap_or_default() {
            text.push_str(&format!(
                "\n  {} {}: attempts {:?}, interruptions {}, run at {}, lease {:?}",
                task.id, task.state, task.attempts, task.interruptions, task.run_at, task.lease
            ));
        }
    }
    if let Ok(report) = store.check() {
        text.push_str(&format!(
            "\n  check: {} unfinished indexed, problems {:?}",
            report.unfinished, report.problems
        ));
    }
    text
}

/// What the store says of the acknowledged tasks and the results seen.
#[derive(Debug, Default)]
struct Check {
    acknowledged: usize,
    succeeded: usize,
    /// Tasks that ran again after a run was lost with its host.
    rerun: usize,
    /// Runs lost with their host, over all tasks.
    interruptions: u64,
    lost: Vec<String>,
    changed_after_seen: Vec<String>,
    recorded_twice: Vec<String>,
    /// Tasks stored whose acknowledgement the kill prevented.
    stored_only: usize,
    unfinished: u64,
    problems: Vec<String>,
}

impl Check {
    fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.changed_after_seen.is_empty()
            && self.recorded_twice.is_empty()
            && self.problems.is_empty()
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: acknowledged {}, succeeded {}, re-run {}, interrupted {} times, lost {}, \
             changed after seen {}, recorded twice {}; stored but not acknowledged (killed before \
             the acknowledgement) {}",
            self.acknowledged,
            self.succeeded,
            self.rerun,
            self.interruptions,
            self.lost.len(),
            self.changed_after_seen.len(),
            self.recorded_twice.len(),
            self.stored_only,
        );
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Reads the store of `dir` (no pool: nothing changes) and checks it.
/// `finished`: every acknowledged task must have its result by now.
fn check(dir: &Path, finished: bool) -> Check {
    // A line cut by a kill (shorter than an id, see `append`) is an
    // acknowledgement not recorded: that task counts among those stored
    // but not acknowledged. A whole line must be an id.
    let acked: Vec<TaskId> = read_lines(&acks_file(dir))
        .iter()
        .filter(|line| line.len() >= ID_LEN)
        .map(|line| line.parse().unwrap())
        .collect();
    let unique: HashSet<TaskId> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "an id was acknowledged twice");
    let store = SledStore::open(data_dir(dir), &SledOptions::new()).unwrap();
    let report = store.check().unwrap();
    let mut check = Check {
        acknowledged: acked.len(),
        problems: report.problems.clone(),
        unfinished: report.unfinished,
        ..Check::default()
    };
    let mut records = HashMap::new();
    for id in &acked {
        let Some(task) = store.get(id).unwrap() else {
            check.lost.push(format!("{id}: not in the store"));
            continue;
        };
        if task.interruptions > 0 {
            check.rerun += 1;
            check.interruptions += u64::from(task.interruptions);
        }
        let successes = task
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(Outcome::Success))
            .count();
        if successes > 1 || task.attempts.len() > task.max_attempts as usize {
            check
                .recorded_twice
                .push(format!("{id}: attempts {:?}", task.attempts));
        }
        match task.state {
            TaskState::Succeeded => check.succeeded += 1,
            state if state.is_final() || finished => check
                .lost
                .push(format!("{id}: {state} ({:?})", task.outcome)),
            _ => {}
        }
        records.insert(*id, task);
    }
    check.stored_only = (report.tasks as usize).saturating_sub(records.len() + check.lost.len());
    for line in read_lines(&seen_file(dir)) {
        // A line cut by a kill (see `append`) lacks its end.
        let Some(line) = line.strip_suffix(SEEN_END) else {
            continue;
        };
        let mut parts = line.split(' ');
        let (Some(id), Some(state), output) = (parts.next(), parts.next(), parts.next()) else {
            panic!("a whole line of the seen file is not `id state output`: {line:?}");
        };
        let id = id.parse::<TaskId>().unwrap();
        let output = output.unwrap_or("");
        match records.get(&id) {
            Some(task)
                if task.state.as_str() == state
                    && hex(task.output.inline().unwrap_or(b"(an output file)")) == output => {}
            Some(task) => check.changed_after_seen.push(format!(
                "{id}: seen {state} {output}, now {} {}",
                task.state,
                hex(task.output.inline().unwrap_or(b"(an output file)"))
            )),
            None => check
                .changed_after_seen
                .push(format!("{id}: seen {state}, now not in the store")),
        }
    }
    check
}

fn run_rounds(dir: &Path, killed_rounds: usize, relaxed: bool) -> (Vec<Round>, Vec<Check>) {
    let mut rounds = Vec::new();
    let mut checks = Vec::new();
    for i in 0..killed_rounds {
        let phase = ["submitting", "running", "anywhere"][i % 3];
        rounds.push(round(dir, PER_ROUND, phase, relaxed));
        // After every restart... every round's end: what was seen holds.
        checks.push(check(dir, false));
    }
    // A last start with nothing new: it resumes what is left and closes.
    rounds.push(round(dir, 0, "none", relaxed));
    checks.push(check(dir, true));
    (rounds, checks)
}

#[test]
fn acknowledged_tasks_survive_sigkill() {
    if std::env::var_os(DIR_ENV).is_some() {
        return;
    }
    // About 30 s here; each child is bounded on its own.
    let _watchdog = Watchdog::arm("acknowledged_tasks_survive_sigkill", TEST_LIMIT);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (rounds, checks) = run_rounds(dir.path(), KILLED_ROUNDS, false);
    let mut phases = BTreeMap::new();
    for r in &rounds {
        let (n, k) = phases.get(r.phase).copied().unwrap_or((0, 0));
        phases.insert(r.phase, (n + 1, k + usize::from(r.killed)));
    }
    let kills = rounds.iter().filter(|r| r.killed).count();
    println!(
        "crash test: {} rounds ({kills} killed with SIGKILL; rounds, kills by phase: {phases:?}) \
         in {:.1} s",
        rounds.len(),
        started.elapsed().as_secs_f64()
    );
    for (i, check) in checks.iter().enumerate() {
        assert!(
            check.is_clean(),
            "after round {i}: lost {:#?}, changed after seen {:#?}, recorded twice {:#?}, \
             problems {:#?}",
            &check.lost[..check.lost.len().min(10)],
            &check.changed_after_seen[..check.changed_after_seen.len().min(10)],
            check.recorded_twice,
            check.problems
        );
    }
    let last = checks.last().unwrap();
    last.print("crash test");
    assert_eq!(last.unfinished, 0, "tasks left unfinished");
    assert_eq!(last.succeeded, last.acknowledged);
    assert!(
        last.acknowledged >= 1000,
        "too few acknowledged tasks to mean much"
    );
    assert!(kills >= 15, "too few rounds were killed: {kills}");
    assert!(
        last.rerun > 0,
        "no task was running at any kill: the test did not test re-runs"
    );
}

#[test]
fn relaxed_mode_loses_acknowledged_work() {
    if std::env::var_os(DIR_ENV).is_some() {
        return;
    }
    let _watchdog = Watchdog::arm("relaxed_mode_loses_acknowledged_work", TEST_LIMIT);
    // What a kill loses in relaxed mode is what the store's log still held
    // in memory (what it wrote is in the kernel's cache and survives the
    // process): often a few tasks, sometimes none in a round. Series of 8
    // rounds are run until one loses work, at most 5 (none losing anything
    // in 40 rounds has not been seen).
    let mut series = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (_, checks) = run_rounds(dir.path(), 8, true);
        let last = checks.last().unwrap();
        last.print("relaxed crash test");
        let lost = checks.iter().any(|c| !c.is_clean());
        series.push(lost);
        if lost {
            break;
        }
    }
    assert!(
        series.last() == Some(&true),
        "with nothing flushed before it is acknowledged, kills must lose acknowledged tasks \
         or seen results, and the check must say so ({} series of 8 killed rounds lost nothing)",
        series.len()
    );
}

const POISON_ENV: &str = "WPOOL_CRASH_POISON";
/// Tasks queued behind the poison task.
const BEHIND: usize = 5;

/// Not a test on its own: the child of
/// `a_task_that_kills_its_host_ends_at_max_interruptions`. Submits (on its
/// first start) a task and `BEHIND` others after it on one worker, and
/// aborts the whole process whenever the first starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests in a child process"]
async fn poison_child() {
    let Some(dir) = std::env::var_os(POISON_ENV).map(PathBuf::from) else {
        return;
    };
    log_to_stderr();
    let store = Arc::new(SledStore::open(data_dir(&dir), &SledOptions::new()).unwrap());
    let mut config = PoolConfig::new();
    config.workers(1);
    let pool = Pool::with_store(config, store).unwrap();
    let ids_file = dir.join("ids");
    let ids: Vec<TaskId> = if ids_file.exists() {
        read_lines(&ids_file)
            .iter()
            .map(|l| l.parse().unwrap())
            .collect()
    } else {
        let sleep = pool
            .register(&std::fs::read(wpool_test_artifacts::P1_SLEEP).unwrap())
            .await
            .unwrap();
        // Delayed, so that nothing starts before the ids are written.
        let soon = Duration::from_millis(300);
        let mut specs = vec![
            TaskSpec::new(sleep, b"300".to_vec())
                .priority(1)
                .delay(soon),
        ];
        specs.extend((0..BEHIND).map(|_| TaskSpec::new(sleep, b"1".to_vec()).delay(soon)));
        let mut ids = Vec::new();
        for spec in specs {
            ids.push(pool.submit(spec).await.unwrap().id());
        }
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(&ids_file, text).unwrap();
        ids
    };
    let poison = ids[0];
    // The pool may start the task before anyone could subscribe to its
    // events: watch the stored state instead (the task runs for 300 ms).
    let watched = pool.clone();
    let watcher = tokio::spawn(async move {
        loop {
            if watched.status(poison).await.unwrap().state == TaskState::Running {
                // The host goes down while the task runs.
                std::process::abort();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    for id in &ids {
        pool.wait(*id).await.unwrap();
    }
    watcher.abort();
    pool.close().await.unwrap();
    say("done");
}

#[test]
fn a_task_that_kills_its_host_ends_at_max_interruptions() {
    if std::env::var_os(POISON_ENV).is_some() {
        return;
    }
    let _watchdog = Watchdog::arm(
        "a_task_that_kills_its_host_ends_at_max_interruptions",
        TEST_LIMIT,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut aborted = 0;
    for _ in 0..10 {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "poison_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(POISON_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut command);
        let mut stderr = child.stderr.take().unwrap();
        let said = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        let Some(status) = wait_bounded(&mut child, CHILD_LIMIT) else {
            panic!(
                "the poison child did not end in {CHILD_LIMIT:?}: it was killed, and its store \
                 holds {}",
                describe_unfinished(dir.path())
            );
        };
        let stderr = said.join().unwrap();
        if status.success() {
            break;
        }
        // Only an abort is the host going down with the task; any other
        // end of the child is a failure of the test's own, shown as such.
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            status.signal(),
            Some(6),
            "the child ended otherwise than by the abort ({status:?}):\n{}",
            String::from_utf8_lossy(&stderr)
        );
        aborted += 1;
    }
    let ids: Vec<TaskId> = read_lines(&dir.path().join("ids"))
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    let store = SledStore::open(data_dir(dir.path()), &SledOptions::new()).unwrap();
    let poison = store.get(&ids[0]).unwrap().unwrap();
    println!(
        "poison task: host aborted {aborted} times; the task ended {} ({:?}) after {} \
         interruptions",
        poison.state, poison.outcome, poison.interruptions
    );
    let max = wpool::DEFAULT_MAX_INTERRUPTIONS;
    // Every abort is one interruption: the child aborts when it reads the
    // task `running`, and a read shows only what is durable. (Reads once
    // checked durability before reading, and a claim made in between was
    // seen before its flush: under load the host went down 4 to 7 times
    // for 3 counted interruptions.)
    assert_eq!(
        aborted, max as usize,
        "the host went down {aborted} times for {max} interruptions"
    );
    assert_eq!(poison.state, TaskState::Failed);
    assert_eq!(poison.outcome, Some(Outcome::Interrupted(max)));
    assert_eq!(poison.interruptions, max);
    assert!(poison.attempts.is_empty(), "no run ended on its own");
    for id in &ids[1..] {
        let task = store.get(id).unwrap().unwrap();
        assert_eq!(task.state, TaskState::Succeeded, "the tasks behind it run");
        assert_eq!(task.interruptions, 0);
    }
}
