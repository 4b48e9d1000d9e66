//! `wpool run`, as a user runs it.

use std::process::Command;

use wpool_test_artifacts as programs;

fn wpool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wpool"))
}

#[test]
fn run_prints_output_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, "{\"x\": 1}").unwrap();
    let out = wpool()
        .arg("run")
        .arg(programs::P1_ECHO)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"{\"x\": 1}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("succeeded"), "{stderr}");
    assert!(stderr.contains("fuel"), "{stderr}");
}

#[test]
fn run_reads_stdin_and_reports_failure() {
    use std::io::Write;
    let mut child = wpool()
        .args([
            "run",
            programs::P1_SLEEP,
            "--input",
            "-",
            "--timeout",
            "200ms",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"100000").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("killed at its timeout"), "{stderr}");
}

#[test]
fn run_explains_bad_input() {
    let out = wpool()
        .args(["run", "/nonexistent/task.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("wpool: cannot read the module /nonexistent/task.wasm"),
        "{stderr}"
    );

    let out = wpool()
        .args(["run", programs::P1_ECHO, "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));

    let out = wpool()
        .args(["run", programs::P1_ECHO, "--memory", "1KiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid limit `memory`"));

    // More than any task can have is bad input too, not an internal error
    // (issue 14 saw exit 70).
    let out = wpool()
        .args(["run", programs::P1_ECHO, "--memory", "100GiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--memory 100 GiB"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, "hello").unwrap();
    let out = wpool().arg("run").arg(&bogus).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly binary"));
}

#[test]
fn run_json_reports_everything() {
    let out = wpool()
        .args(["run", programs::P1_EXIT_CODE, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["kind"], "exit");
    assert_eq!(report["outcome"]["detail"], 3);
    assert!(report["log"].as_str().unwrap().contains("log line 20"));
}
