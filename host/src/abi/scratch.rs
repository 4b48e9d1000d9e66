//! A task's scratch directory: writable, empty at start, removed when the
//! task ends, bounded in size.
//!
//! # How the bound holds
//!
//! The directory is an ordinary host directory, so the bound is kept by
//! wpool's own versions of the WASI preview 1 calls that make a directory
//! grow (`fd_write`, `fd_pwrite`, `fd_filestat_set_size`, `path_open` with
//! `O_CREAT`, `path_create_directory`, `path_symlink`, `path_link`). Before
//! each, the directory's size is measured (the length of every file plus
//! [`ENTRY_COST`] per entry, so empty files and directories count too) and
//! the call is refused with `ENOSPC` ("no space left on device") when that
//! size plus what the call could add passes the bound; the guest sees an
//! ordinary full disk and may go on. A write past the end of a file (after a
//! seek) can still grow it further than its length says beforehand: after
//! every write the size is measured again, and a directory past its bound
//! stops the task with a trap. On disk the directory therefore never holds
//! more than the bound plus one write.

use std::path::{Path, PathBuf};

/// What each file, directory or link counts for, besides its length.
pub(crate) const ENTRY_COST: u64 = 4096;

/// The guest path of the scratch directory (also its `TMPDIR`).
pub(crate) const GUEST_PATH: &str = "/tmp";

/// The name of the input's copy in the scratch directory, when the module
/// asks for it.
pub(crate) const INPUT_FILE: &str = "input";

/// The error a task is stopped with when its scratch directory passed its
/// bound by a write past the end of a file.
#[derive(Debug)]
pub(crate) struct ScratchFull {
    pub(crate) bound: u64,
}

impl std::fmt::Display for ScratchFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the scratch directory grew past its bound of {}",
            crate::units::format_size(self.bound)
        )
    }
}

impl std::error::Error for ScratchFull {}

/// One task's scratch directory. Dropping it removes the directory and
/// everything in it.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
    bound: u64,
}

impl ScratchDir {
    /// Creates an empty directory under `root`, named after this process
    /// (see [`sweep`]).
    pub(crate) fn create(root: &Path, bound: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        loop {
            let path = root.join(format!(
                "task-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, bound }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn bound(&self) -> u64 {
        self.bound
    }

    /// Whether a call that may add `more` bytes fits under the bound.
    pub(crate) fn fits(&self, more: u64) -> bool {
        self.usage().saturating_add(more) <= self.bound
    }

    /// The directory's size as the bound counts it. Symbolic links are
    /// counted, never followed.
    pub(crate) fn usage(&self) -> u64 {
        let mut total = 0u64;
        let mut pending = vec![self.path.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                total = total.saturating_add(ENTRY_COST);
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    total = total.saturating_add(meta.len());
                }
            }
        }
        total
    }
}

/// Removes the scratch directories under `root` left by processes that no
/// longer run (a host killed while tasks ran could not remove them). Only
/// where a process can be looked up (Linux: `/proc`); elsewhere it removes
/// nothing. Returns how many it removed.
pub(crate) fn sweep(root: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("task-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                path = %entry.path().display(),
                error = %e,
                "cannot remove a dead process's scratch directory"
            ),
        }
    }
    removed
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a task's scratch directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_dead_processes_directories() {
        let root = tempfile::tempdir().unwrap();
        // Above Linux's largest pid: no such process.
        let dead = root.path().join("task-4294967295-00000000000000aa");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        let mine = ScratchDir::create(root.path(), 1024).unwrap();
        let other = root.path().join("not-a-scratch-dir");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(sweep(root.path()), 1);
        assert!(!dead.exists());
        assert!(mine.path().exists());
        assert!(other.exists());
    }

    #[test]
    fn usage_counts_lengths_and_entries_and_drop_removes() {
        let root = tempfile::tempdir().unwrap();
        let scratch = ScratchDir::create(root.path(), 20_000).unwrap();
        assert_eq!(scratch.usage(), 0);
        std::fs::write(scratch.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(scratch.path().join("d")).unwrap();
        std::fs::write(scratch.path().join("d/b"), [0u8; 10]).unwrap();
        assert_eq!(scratch.usage(), 3 * ENTRY_COST + 110);
        assert!(!scratch.fits(20_000 - 3 * ENTRY_COST - 109));
        assert!(scratch.fits(20_000 - 3 * ENTRY_COST - 110));
        let path = scratch.path().to_path_buf();
        drop(scratch);
        assert!(!path.exists());
    }
}
