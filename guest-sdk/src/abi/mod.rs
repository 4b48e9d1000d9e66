//! The target-specific halves: how input arrives, how output, logs and
//! progress leave. Exactly one of the three modules is compiled.

#[cfg(not(target_os = "wasi"))]
pub(crate) mod native;
#[cfg(all(target_os = "wasi", target_env = "p1"))]
pub(crate) mod p1;
#[cfg(all(target_os = "wasi", target_env = "p2"))]
pub(crate) mod p2;

#[cfg(not(target_os = "wasi"))]
pub(crate) use native::{log, progress};
#[cfg(all(target_os = "wasi", target_env = "p1"))]
pub(crate) use p1::{log, progress};
#[cfg(all(target_os = "wasi", target_env = "p2"))]
pub(crate) use p2::{log, progress};

#[cfg(all(target_os = "wasi", not(any(target_env = "p1", target_env = "p2"))))]
compile_error!(
    "wpool-guest supports wasm32-wasip1 (a WASI command module) and wasm32-wasip2 \
     (a component); build with `--target wasm32-wasip1` or `--target wasm32-wasip2`"
);

/// The line a WASI command module writes to stderr to report progress, and
/// the native build prints: `wpool:progress DONE TOTAL\n`.
#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn progress_line(done: u64, total: u64) -> String {
    format!("wpool:progress {done} {total}\n")
}

#[cfg(test)]
mod tests {
    /// The host parses this exact line out of a command module's stderr.
    #[test]
    fn the_progress_line_is_the_documented_protocol() {
        assert_eq!(super::progress_line(3, 10), "wpool:progress 3 10\n");
        assert_eq!(
            super::progress_line(u64::MAX, 0),
            "wpool:progress 18446744073709551615 0\n"
        );
    }
}
