//! The host target: nothing is exported; logs and progress go to stderr
//! (through `eprintln!`, so the test harness captures them per test) in the
//! same form a WASI command module writes them.

pub(crate) fn log(line: &str) {
    eprintln!("{line}");
}

pub(crate) fn progress(done: u64, total: u64) {
    eprintln!("{}", super::progress_line(done, total).trim_end());
}
