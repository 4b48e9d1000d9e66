//! The component ABI (wasm32-wasip2): the `wpool:task` world of
//! `wit/task.wit`, `run` exported by the `#[task]` macro through the export
//! macro generated here, logs and progress through the `host` imports.

/// Bindings generated from `wit/task.wit`. The `#[task]` macro implements
/// `Guest` for a struct of its own and invokes `export!` on it.
#[allow(
    unsafe_code,
    reason = "the generated canonical-ABI glue is unsafe by nature; it is wit-bindgen's, not ours"
)]
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    reason = "generated code, reached through the hidden `__private` re-export"
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        // Relative to this crate's manifest, so it works from whichever
        // crate uses the SDK: the WIT file is referenced, not copied.
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "::wpool_guest::__private::bindings",
        runtime_path: "::wpool_guest::__private::wit_bindgen::rt",
    });
}

use bindings::wpool::task::host;

pub(crate) fn log(line: &str) {
    host::log(line);
}

pub(crate) fn progress(done: u64, total: u64) {
    host::progress(done, total);
}
