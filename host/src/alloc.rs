//! The allocator the `wpool` binary runs on, for embedders to use as
//! well: mimalloc for everything under 1 MiB, the system allocator above.
//!
//! On the durable path most of a task's CPU outside the guest goes to
//! small, short-lived allocations (records, their encodings, sled's
//! nodes), many of them made on one thread and freed on another. glibc's
//! malloc spent about 15% of a profile's samples there (`_int_malloc`,
//! `_int_free`, `malloc_consolidate`).
//!
//! mimalloc alone, though, keeps the pages of large blocks for reuse: a
//! daemon handling 16 MiB outputs held 388 MiB at its peak, over the
//! 256 MiB that `tests/all/outputs.rs` allows it, and asking mimalloc to
//! give pages back at once took its gain away. So large blocks (inputs,
//! outputs and logs of big tasks: rare, and each worth its own mapping) go
//! to the system allocator, and on glibc [`tune_system_allocator`] gives
//! every one of them a mapping of its own, returned to the kernel when
//! freed. And mimalloc is built without asking for transparent huge pages
//! (its `no_thp` feature): with them, an idle pool was resident in 63 MiB
//! against glibc's 21, since each thread's first small blocks brought in
//! whole 2 MiB pages. Measured with both: an idle pool 27 MiB, the daemon
//! of that test 114 MiB over its start at most (about 100 on glibc alone),
//! 318 B per queued task in a sled daemon (321 on glibc), 245 B once
//! reopened (294), and the durable end-to-end rate 31,000–32,500 tasks/s
//! from single submitters against 27,000–27,500 on glibc, 35,000 with
//! batches against 27,600–30,000 (runs interleaved).
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: wpool::alloc::Allocator = wpool::alloc::Allocator;
//!
//! fn main() {
//!     wpool::alloc::tune_system_allocator();
//!     // ...
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of at least this many bytes come from the system allocator.
pub const LARGE_BLOCK: usize = 1 << 20;

/// mimalloc below [`LARGE_BLOCK`], the system allocator from it on. See
/// the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocator;

fn is_large(size: usize) -> bool {
    size >= LARGE_BLOCK
}

// SAFETY: every block is allocated and freed by the same allocator: the
// one its size picks, and `dealloc` and `realloc` are given the size the
// block was allocated (or last reallocated) with, so they pick the same.
// A `realloc` across the threshold allocates on the other side, copies,
// and frees the old block where it came from.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc_zeroed(layout) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            // SAFETY: allocated by `System` (its size picked it).
            unsafe { System.dealloc(ptr, layout) }
        } else {
            // SAFETY: allocated by `MiMalloc` (its size picked it).
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            // SAFETY: the block came from the allocator asked.
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            // SAFETY: the block came from the allocator asked.
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `GlobalAlloc::realloc` requires `new_size`, rounded
                // up to `layout.align()`, not to overflow `isize`: a valid
                // layout.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a non-zero size (the caller's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks hold at least the smaller size,
                    // and they are distinct allocations.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// On glibc, gives every block the system allocator serves (those from
/// [`LARGE_BLOCK`] on, under [`Allocator`]) a mapping of its own, returned
/// to the kernel when freed. Otherwise glibc raises its mmap threshold
/// each time such a block is freed (up to 32 MiB) and then serves them
/// from heaps it keeps: measured, a daemon whose workers handled 16 MiB
/// outputs in turn held 399 MiB after 100 tasks on 8 slots, against 74 MiB
/// with the threshold fixed. Call it first thing in `main`, before any
/// other thread exists; elsewhere it does nothing.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes malloc's parameters.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            i32::try_from(LARGE_BLOCK).unwrap_or(i32::MAX),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block keeps its bytes across reallocations on both sides of the
    /// threshold, and across it both ways.
    #[test]
    fn a_block_keeps_its_bytes_across_the_threshold() {
        let a = Allocator;
        let sizes = [
            16,
            4096,
            LARGE_BLOCK - 1,
            LARGE_BLOCK,
            3 * LARGE_BLOCK,
            64,
            8 << 20,
            1,
        ];
        #[allow(unsafe_code)]
        // SAFETY: each layout is non-zero and valid; each block is
        // reallocated with the size it was last given and freed once.
        unsafe {
            let mut layout = Layout::from_size_align(sizes[0], 16).unwrap();
            let mut ptr = a.alloc(layout);
            assert!(!ptr.is_null());
            std::ptr::write_bytes(ptr, 0xA5, layout.size());
            for &size in &sizes[1..] {
                let kept = layout.size().min(size);
                let new = a.realloc(ptr, layout, size);
                assert!(!new.is_null(), "realloc to {size}");
                assert_eq!(new as usize % 16, 0, "alignment kept at {size}");
                let bytes = std::slice::from_raw_parts(new, kept);
                assert!(
                    bytes.iter().all(|&b| b == 0xA5),
                    "bytes kept from {} to {size}",
                    layout.size()
                );
                std::ptr::write_bytes(new, 0xA5, size);
                ptr = new;
                layout = Layout::from_size_align(size, 16).unwrap();
            }
            a.dealloc(ptr, layout);

            let zeroed = Layout::from_size_align(2 * LARGE_BLOCK, 64).unwrap();
            let z = a.alloc_zeroed(zeroed);
            assert!(!z.is_null());
            assert!(
                std::slice::from_raw_parts(z, zeroed.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(z, zeroed);
        }
    }
}
