//! Many `wpool serve` hosts on one PostgreSQL queue, and the queue's
//! database going away under load, with a checker over every acknowledged
//! task.
//!
//! The guest (`whoami`) prints `task <WPOOL_TASK_ID> attempt
//! <WPOOL_ATTEMPT> slept <ms> ms`, so a result names the run that made it.
//! The checker reads every acknowledged task's result and counts:
//!
//! - **succeeded**: final and `succeeded`;
//! - **re-run**: succeeded after its lease was lost at least once
//!   (`interruptions > 0`): delivery is at least once, so this is allowed;
//! - **lost**: not succeeded (missing, failed, still waiting at the
//!   deadline);
//! - **recorded twice**: the result's history holds more than one attempt
//!   (the guest never fails, so a second attempt can only be a second
//!   recording of a run), or its output names another task or another
//!   attempt than the one recorded. Beside the tasks, each host counts the
//!   results it recorded (`finished` in `/v1/stats`): their sum over the
//!   hosts may not exceed the number of tasks.
//!
//! Any lost or recorded-twice task fails the test.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wpool_test_artifacts as programs;

use crate::pg::TestDatabase;
use crate::server::{Server, agent};

/// What the checker found.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: usize,
    succeeded: usize,
    rerun: usize,
    lost: Vec<String>,
    twice: Vec<String>,
    /// The results, by task, as read.
    results: Vec<(String, Value)>,
}

impl Tally {
    fn print(&self, what: &str) {
        eprintln!(
            "checker ({what}): acknowledged {}, succeeded {}, re-run {}, lost {}, recorded twice {}",
            self.acknowledged,
            self.succeeded,
            self.rerun,
            self.lost.len(),
            self.twice.len()
        );
    }

    fn assert_exactly_once(&self, what: &str) {
        self.print(what);
        assert!(
            self.lost.is_empty() && self.twice.is_empty(),
            "{what}: {} lost, {} recorded twice:\n{}\n{}",
            self.lost.len(),
            self.twice.len(),
            self.lost.join("\n"),
            self.twice.join("\n")
        );
        assert_eq!(self.succeeded, self.acknowledged, "{what}");
    }
}

/// Reads the result of every task of `ids` (waiting for it, until
/// `within` has passed) from the hosts of `servers` in turn.
fn check(servers: &[&Server], ids: &[String], within: Duration) -> Tally {
    let deadline = Instant::now() + within;
    let mut tally = Tally {
        acknowledged: ids.len(),
        ..Tally::default()
    };
    for (i, id) in ids.iter().enumerate() {
        let server = servers[i % servers.len()];
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let (status, result) = server.get(&format!("/v1/tasks/{id}/result?wait={wait}ms"));
        if status != 200 || result["state"] != "succeeded" {
            tally.lost.push(format!("{id}: {status} {result}"));
            continue;
        }
        tally.succeeded += 1;
        if result["interruptions"].as_u64().unwrap_or(0) > 0 {
            tally.rerun += 1;
        }
        let attempts = result["attempts"].as_u64().unwrap_or(0);
        let history = result["history"].as_array().map_or(0, Vec::len);
        let expected = format!("task {id} attempt {attempts} slept ");
        let output = result["output"].as_str().unwrap_or("");
        if attempts != 1 || history != 1 || !output.starts_with(&expected) {
            tally.twice.push(format!("{id}: {result}"));
        }
        tally.results.push((id.clone(), result));
    }
    tally
}

/// The `i`th host, which must be alive.
fn host(hosts: &[Option<Server>], i: usize) -> &Server {
    hosts[i].as_ref().expect("a live host")
}

/// `/v1/stats` of a host.
fn stats(server: &Server) -> Value {
    let (status, stats) = server.get("/v1/stats");
    assert_eq!(status, 200, "{stats}");
    stats
}

fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

/// Submits a `whoami` task sleeping `ms`; its id.
fn submit(server: &Server, module: &str, ms: u64) -> String {
    let (status, answer) = server.post(
        "/v1/tasks",
        &json!({"module": module, "input": ms, "timeout": "60s"}),
    );
    assert_eq!(status, 201, "{answer}");
    answer["task"]["id"].as_str().unwrap().to_string()
}

/// Polls `what` every 50 ms until it holds; fails saying `waiting_for`
/// after `within`.
fn wait_until(within: Duration, waiting_for: &str, mut what: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !what() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {waiting_for}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three hosts on one database. Tasks submitted round-robin to all three
/// run once each; one host killed (SIGKILL) while it runs tasks: they run
/// again on the others once its leases (1 s) expire; one host paused
/// (SIGSTOP) past its lease while it runs a task, then resumed: the task
/// ran again on the other host meanwhile, and the paused host's late
/// completion is refused (fenced), leaving the re-run's result.
#[test]
fn three_hosts_run_each_task_once_through_a_kill_and_a_pause() {
    let db = TestDatabase::create();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let flags = ["--store", &db.url, "--workers", "2", "--lease-ttl", "1s"];
    let mut hosts: Vec<Option<Server>> = dirs
        .iter()
        .map(|dir| Some(Server::start(dir.path(), &flags)))
        .collect();
    let whoami = host(&hosts, 0).upload(programs::P1_WHOAMI);

    // Round-robin to the three: 3 s of work for their 6 workers.
    let mut ids: Vec<String> = (0..45)
        .map(|i| submit(host(&hosts, i % 3), &whoami, 400))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "the third host to run tasks",
        || stats(host(&hosts, 2))["busy"].as_u64() == Some(2),
    );
    // What it recorded so far: a lower bound of what it recorded at all.
    let killed_finished = stats(host(&hosts, 2))["finished"].as_u64().unwrap();
    drop(hosts[2].take()); // SIGKILL: no release, no heartbeat.
    let killed_at = wpool::now_millis();
    // The two left take more.
    ids.extend((0..10).map(|i| submit(host(&hosts, i % 2), &whoami, 100)));
    let live = [host(&hosts, 0), host(&hosts, 1)];
    let tally = check(&live, &ids, Duration::from_secs(40));
    tally.assert_exactly_once("three hosts, one killed");
    assert!(
        tally.rerun >= 1,
        "the killed host ran tasks when it was killed: they must have run again"
    );
    // The killed host's tasks finished on the others soon after its leases
    // ran out (1 s), behind the work queued then (a few seconds).
    let late = tally
        .results
        .iter()
        .filter(|(_, r)| r["interruptions"].as_u64() > Some(0))
        .map(|(_, r)| r["finished_at"].as_u64().unwrap().saturating_sub(killed_at))
        .max()
        .unwrap_or(0);
    eprintln!("the killed host's tasks finished elsewhere within {late} ms of the kill");
    assert!(
        late < 20_000,
        "the killed host's tasks took {late} ms to finish elsewhere (lease: 1 s)"
    );

    // A host paused past its lease while it runs a task.
    let long = submit(live[0], &whoami, 4000);
    live[0].wait_state(&long, "running");
    let mut holder = None;
    wait_until(Duration::from_secs(10), "the host running the task", || {
        let busy: Vec<_> = live.iter().map(|h| stats(h)["busy"].as_u64()).collect();
        holder = match busy[..] {
            [Some(1), Some(0)] => Some(0),
            [Some(0), Some(1)] => Some(1),
            _ => None,
        };
        holder.is_some()
    });
    let holder = holder.unwrap();
    let (paused, other) = (live[holder], live[1 - holder]);
    let finished_before = stats(paused)["finished"].as_u64().unwrap();
    let paused_at = wpool::now_millis();
    signal(paused, "STOP");
    // Resumed while the other host runs the task again (for 4 s): the
    // paused host's run ends at once (its sleep is over), and its
    // completion comes while the task is `running` under the new lease,
    // which only the lease's token tells from its own.
    wait_until(
        Duration::from_secs(30),
        "the other host to run the task again",
        || {
            let (_, task) = other.get(&format!("/v1/tasks/{long}"));
            task["task"]["state"] == "running" && task["task"]["interruptions"] == 1
        },
    );
    signal(paused, "CONT");
    let (status, result) = other.get(&format!("/v1/tasks/{long}/result?wait=40s"));
    assert_eq!(
        status, 200,
        "the task ran again on the other host: {result}"
    );
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["interruptions"], 1, "{result}");
    assert_eq!(result["attempts"], 1, "{result}");
    let rerun_started = result["history"][0]["started_at"].as_u64().unwrap();
    assert!(
        rerun_started >= paused_at,
        "the recorded attempt is the re-run, started after the pause ({rerun_started} < \
         {paused_at}): {result}"
    );
    assert_eq!(
        result["output"],
        format!("task {long} attempt 1 slept 4000 ms")
    );
    // The paused host wakes, its run ends (or its heartbeat learns the
    // lease is gone and kills it), and its completion is refused.
    wait_until(
        Duration::from_secs(30),
        "the paused host to be refused its late completion",
        || {
            paused.log().lines().any(|line| {
                line.contains("the task's lease was lost while it ran") && line.contains(&long)
            })
        },
    );
    let (status, after) = paused.get(&format!("/v1/tasks/{long}/result"));
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["history"], result["history"],
        "the paused host changed the re-run's result"
    );
    assert_eq!(after["output"], result["output"]);
    assert_eq!(
        stats(paused)["finished"].as_u64().unwrap(),
        finished_before,
        "the paused host recorded a result after it was paused"
    );

    // Every task, once more, with the per-host counts of results recorded.
    ids.push(long);
    let tally = check(&live, &ids, Duration::from_secs(30));
    tally.assert_exactly_once("three hosts, one killed, one paused");
    let recorded: u64 = live
        .iter()
        .map(|h| stats(h)["finished"].as_u64().unwrap())
        .sum::<u64>()
        + killed_finished;
    eprintln!(
        "results recorded by the hosts: {recorded} (at least; {killed_finished} by the killed \
         one before it was killed) for {} tasks",
        ids.len()
    );
    assert!(
        recorded <= ids.len() as u64,
        "the hosts recorded {recorded} results for {} tasks",
        ids.len()
    );
}

/// A PostgreSQL cluster of a test's own (`scripts/pg-cluster.sh`), which
/// the test may stop and start; removed when dropped.
struct Cluster {
    dir: String,
    url: String,
}

const PG_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster.sh");

impl Cluster {
    fn start() -> Cluster {
        let out = Command::new("bash")
            .args([PG_CLUSTER, "start"])
            .output()
            .expect("run scripts/pg-cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pg-cluster.sh start failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let export = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("export {name}=")))
                .map(|value| value.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("pg-cluster.sh printed no {name}: {stdout}"))
        };
        Cluster {
            url: export("WPOOL_TEST_POSTGRES"),
            dir: export("WPOOL_PG_CLUSTER"),
        }
    }

    /// `down` (stop the server, fast) or `up` (start it again).
    fn set(&self, what: &str) {
        let out = Command::new("bash")
            .args([PG_CLUSTER, what, &self.dir])
            .output()
            .expect("run scripts/pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([PG_CLUSTER, "stop", &self.dir])
            .output();
    }
}

/// One answer to a submission.
struct Submitted {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

/// PostgreSQL stopped (fast: sessions cut) for longer than the pool used to
/// retry a completion and than the leases, and started again, while two
/// hosts take submissions and run tasks: submissions meanwhile get 503
/// `store_unavailable` with `Retry-After`; the hosts wait without filling
/// their logs and carry on; every task acknowledged (201) succeeds once,
/// runs ending during the outage included (their completions wait for the
/// database), and none runs twice: neither host takes the other's leases
/// before it had the time to renew them.
#[test]
fn postgres_stopped_and_started_under_load_loses_nothing() {
    let cluster = Cluster::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = [
        "--store",
        &cluster.url,
        "--workers",
        "3",
        "--lease-ttl",
        "2s",
    ];
    let servers = dirs.each_ref().map(|dir| Server::start(dir.path(), &flags));
    let server = &servers[0];
    let whoami = server.upload(programs::P1_WHOAMI);

    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let stop = stop.clone();
        let urls = servers.each_ref().map(|s| s.url.clone());
        // Runs of 400 ms, submitted faster than the 6 workers end them:
        // every worker is busy when the database stops, and each of those
        // runs ends during the outage (runs of 100 ms, a few at a time,
        // could all end just before it).
        let body = json!({"module": whoami, "input": 400, "timeout": "60s"}).to_string();
        std::thread::spawn(move || {
            let agent = agent();
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let url = &urls[answers.len() % urls.len()];
                let mut response = agent
                    .post(format!("{url}/v1/tasks"))
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
                    .expect("the host answers while the database is away");
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let text = response.body_mut().read_to_string().unwrap_or_default();
                answers.push(Submitted {
                    status,
                    body: serde_json::from_str(&text).unwrap_or(Value::Null),
                    retry_after,
                });
                std::thread::sleep(Duration::from_millis(25));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let down_at = Instant::now();
    cluster.set("down");
    eprintln!("PostgreSQL stopped in {:?}", down_at.elapsed());
    // Longer than the pool used to retry a completion (about 6 s), and
    // than the leases (2 s).
    std::thread::sleep(Duration::from_secs(8));
    cluster.set("up");
    let up_at = Instant::now();
    eprintln!(
        "PostgreSQL started again, {:?} after it was stopped",
        up_at - down_at
    );
    let finished_before = stats(server)["counts"]["succeeded"].as_u64();
    wait_until(
        Duration::from_secs(30),
        "tasks to run again after the restart",
        || stats(server)["counts"]["succeeded"].as_u64() > finished_before,
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let answers = submitter.join().expect("the submitter");

    let acknowledged: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.body["task"]["id"].as_str().unwrap().to_string())
        .collect();
    let unavailable: Vec<&Submitted> = answers.iter().filter(|a| a.status == 503).collect();
    let other: Vec<String> = answers
        .iter()
        .filter(|a| a.status != 201 && a.status != 503)
        .map(|a| format!("{} {}", a.status, a.body))
        .collect();
    eprintln!(
        "submissions: {} answered, {} acknowledged (201), {} refused (503)",
        answers.len(),
        acknowledged.len(),
        unavailable.len()
    );
    assert!(
        other.is_empty(),
        "answers other than 201 and 503: {other:?}"
    );
    assert!(
        !unavailable.is_empty(),
        "no submission was refused while the database was away"
    );
    for refused in &unavailable {
        assert_eq!(
            refused.body["error"]["code"], "store_unavailable",
            "{}",
            refused.body
        );
        assert!(
            refused
                .retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u64>().is_ok()),
            "a 503 without Retry-After: {}",
            refused.body
        );
    }
    // Acknowledged both before the outage and after it.
    let first_refused = answers.iter().position(|a| a.status == 503).unwrap();
    let last_refused = answers.iter().rposition(|a| a.status == 503).unwrap();
    assert!(
        answers[..first_refused].iter().any(|a| a.status == 201),
        "nothing acknowledged before the outage"
    );
    assert!(
        answers[last_refused..].iter().any(|a| a.status == 201),
        "nothing acknowledged after the outage"
    );

    let tally = check(
        &[&servers[0], &servers[1]],
        &acknowledged,
        Duration::from_secs(40),
    );
    tally.assert_exactly_once("PostgreSQL stopped and started");
    let leases: Vec<String> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.log()
                .lines()
                .filter(|l| l.contains("lease") || l.contains("interrupt") || l.contains("back"))
                .map(|l| format!("host {i}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        tally.rerun,
        0,
        "tasks ran again though no host went down: a host took another's leases before it could \
         renew them after the restart:\n{}",
        leases.join("\n")
    );
    let stored = stats(server)["total"].as_u64().unwrap();
    eprintln!(
        "tasks in the database: {stored} ({} stored though their submission was not \
         acknowledged)",
        stored.saturating_sub(acknowledged.len() as u64)
    );

    let logs = servers.each_ref().map(Server::log);
    assert!(
        logs.iter()
            .any(|log| log.contains("recording a task's result: the store is out of reach")),
        "no run ended while the database was away, so the test did not try what it should: \
         {logs:?}"
    );
    for log in &logs {
        assert!(
            !log.contains("it runs again when its lease expires"),
            "a result was dropped while the database was away: {log}"
        );
        let noisy = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        eprintln!("warnings and errors in a host's log: {noisy}");
        assert!(
            noisy <= 60,
            "{noisy} warnings and errors in a host's log over a {:?} outage: {log}",
            up_at - down_at
        );
    }
}
