//! The `wpool` command: dispatches to `wpool::cli`.

fn main() -> std::process::ExitCode {
    tune_allocator();
    wpool::cli::main()
}

/// glibc's malloc serves a block from the heap of the thread that frees it
/// once blocks that size have been freed before (its mmap threshold rises
/// up to 32 MiB), and keeps such heaps' memory after the blocks are freed.
/// A daemon whose worker threads each handle 16 MiB outputs in turn then
/// holds tens of MiB per thread for good (measured: 399 MiB after 100
/// tasks of 16 MiB output on 8 slots, against 74 MiB with a fixed
/// threshold). A fixed 1 MiB threshold gives every large buffer its own
/// mapping, returned to the kernel when freed; small allocations, the
/// hot path of small tasks, are unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes malloc's parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
