//! Large outputs, kept in files beside the database rather than in it.
//!
//! An output larger than [`INLINE_OUTPUT`] is written to
//! `outputs/<task id>-<lease token>` in the data directory, synced (file
//! and directory) before the record that names it is written, and read
//! back as a stream. The database, and its page cache, only ever hold
//! small records, so the store's memory does not grow with the results
//! tasks produce.
//!
//! A file is named by the run that wrote it, not by its content: removing
//! it is then always safe (no other task can share it). It is removed when
//! its task is purged by retention, when a later attempt of the task
//! replaces it, and when its run's lease turned out to be lost. A crash
//! between writing a file and recording it, or between removing a task and
//! its file, leaves a file no record names; opening the store removes such
//! files (and half-written ones).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::task::{INLINE_OUTPUT, Output, TaskId, TaskRecord};
use crate::{Error, Result};

/// The directory of output files inside the data directory.
pub(super) const OUTPUTS_DIR: &str = "outputs";

/// The output files of one store, and their total size.
#[derive(Debug)]
pub(super) struct OutputFiles {
    dir: PathBuf,
    bytes: AtomicU64,
}

impl OutputFiles {
    /// Opens (creating) the directory; `named` tells, for a task and a
    /// token, whether the task's record names that file. Files no record
    /// names are removed.
    pub(super) fn open(
        data_dir: &Path,
        named: impl Fn(&TaskId, u64) -> Result<bool>,
    ) -> Result<Self> {
        let dir = data_dir.join(OUTPUTS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("list", &dir, &e))?;
        let mut bytes = 0u64;
        let mut removed = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &dir, &e))?;
            let path = entry.path();
            let keep = match parse_name(&entry.file_name().to_string_lossy()) {
                Some((task, token)) => named(&task, token)?,
                None => false,
            };
            if keep {
                let len = entry
                    .metadata()
                    .map_err(|e| io_error("read", &path, &e))?
                    .len();
                bytes = bytes.saturating_add(len);
            } else {
                std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, &e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                dir = %dir.display(),
                removed,
                "removed output files no task names (left by an interrupted write or removal)"
            );
        }
        Ok(Self {
            dir,
            bytes: AtomicU64::new(bytes),
        })
    }

    fn path(&self, task: &TaskId, token: u64) -> PathBuf {
        self.dir.join(format!("{task}-{token:016x}"))
    }

    /// Writes `bytes` as the output of `task`'s run under `token`, durably;
    /// small outputs stay in the record.
    pub(super) fn keep(&self, task: &TaskId, token: u64, bytes: Vec<u8>) -> Result<Output> {
        if bytes.len() <= INLINE_OUTPUT {
            return Ok(Output::Inline(bytes));
        }
        let path = self.path(task, token);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename itself must survive a crash: sync the directory.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("write", &path, &e));
        }
        let len = bytes.len() as u64;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(Output::File { token, len })
    }

    /// Removes the file of an output, if it is one.
    pub(super) fn remove(&self, task: &TaskId, output: &Output) -> Result<()> {
        let Output::File { token, len } = *output else {
            return Ok(());
        };
        let path = self.path(task, token);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.sub(len);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path, &e)),
        }
    }

    /// Removes the files of outputs that records no longer name; failures
    /// are logged (the next open removes what is left).
    pub(super) fn remove_all(&self, gone: &[(TaskId, Output)]) {
        for (task, output) in gone {
            if let Err(e) = self.remove(task, output) {
                tracing::warn!(task = %task, error = %e, "cannot remove an output file");
            }
        }
    }

    /// The bytes of an output.
    pub(super) fn read(&self, task: &TaskId, output: &Output) -> Result<Vec<u8>> {
        let Output::File { token, len } = *output else {
            return Ok(output.inline().map(<[u8]>::to_vec).unwrap_or_default());
        };
        let path = self.path(task, token);
        let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, &e))?;
        if bytes.len() as u64 != len {
            return Err(Error::Store(format!(
                "the output file {} is {} bytes, but task {task} recorded {len}: it was changed \
                 outside wpool",
                path.display(),
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// The file of an output.
    pub(super) fn file(&self, task: &TaskId, output: &Output) -> Option<PathBuf> {
        match *output {
            Output::File { token, .. } => Some(self.path(task, token)),
            Output::Inline(_) => None,
        }
    }

    /// Bytes of output files now.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn sub(&self, len: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            });
    }
}

/// Whether `record` names the file of `token`.
pub(super) fn names(record: &TaskRecord, token: u64) -> bool {
    matches!(record.output, Output::File { token: t, .. } if t == token)
}

/// `<task id>-<token as 16 hex digits>`.
fn parse_name(name: &str) -> Option<(TaskId, u64)> {
    let (task, token) = name.rsplit_once('-')?;
    if token.len() != 16 {
        return None;
    }
    Some((task.parse().ok()?, u64::from_str_radix(token, 16).ok()?))
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Store(format!(
        "cannot {what} the output file {}: {e}",
        path.display()
    ))
}
