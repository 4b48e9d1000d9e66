//! The `wpool` command: dispatches to `wpool::cli`.

/// mimalloc for small blocks, the system allocator for large ones: see
/// `wpool::alloc`.
#[global_allocator]
static ALLOCATOR: wpool::alloc::Allocator = wpool::alloc::Allocator;

fn main() -> std::process::ExitCode {
    wpool::alloc::tune_system_allocator();
    wpool::cli::main()
}
