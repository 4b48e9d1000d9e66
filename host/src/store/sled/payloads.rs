//! Large inputs and outputs, kept in files beside the database rather than
//! in it.
//!
//! A payload larger than [`INLINE_PAYLOAD`] is written to `payloads/` in
//! the data directory (`<task id>.input`, or `<task id>-<lease token>` for
//! the output of the run that held that lease), synced (file and
//! directory) before the record that names it is written, and read back as
//! a stream. The database, its page cache, and the queue's index in memory
//! then only ever hold small records, so the store's memory does not grow
//! with the inputs submitted or the results tasks produce.
//!
//! A file is named by its task and run, not by its content: removing it is
//! always safe (no other task shares it). It is removed when its task is
//! purged by retention, when a later attempt's output replaces it, and when
//! it turned out that no record will name it (its task was not stored, its
//! run's lease was lost). A crash between writing a file and recording it,
//! or between removing a task and its files, leaves a file no record names;
//! opening the store removes such files (and half-written ones).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::task::{INLINE_PAYLOAD, Payload, Slot, TaskId, TaskRecord};
use crate::{Error, Result};

/// The directory of payload files inside the data directory.
pub(super) const PAYLOADS_DIR: &str = "payloads";
/// The suffix of an input's file.
const INPUT_SUFFIX: &str = ".input";

/// The payload files of one store, and the total size of its outputs.
#[derive(Debug)]
pub(super) struct PayloadFiles {
    dir: PathBuf,
    output_bytes: AtomicU64,
}

impl PayloadFiles {
    /// Opens (creating) the directory; `record` reads a task's record.
    /// Files no record names are removed.
    pub(super) fn open(
        data_dir: &Path,
        record: impl Fn(&TaskId) -> Result<Option<TaskRecord>>,
    ) -> Result<Self> {
        let dir = data_dir.join(PAYLOADS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("list", &dir, &e))?;
        let mut output_bytes = 0u64;
        let mut removed = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &dir, &e))?;
            let path = entry.path();
            let named = match parse_name(&entry.file_name().to_string_lossy()) {
                Some((task, slot, token)) => record(&task)?.is_some_and(|r| names(&r, slot, token)),
                None => false,
            };
            if named {
                if !entry.file_name().to_string_lossy().ends_with(INPUT_SUFFIX) {
                    let len = entry
                        .metadata()
                        .map_err(|e| io_error("read", &path, &e))?
                        .len();
                    output_bytes = output_bytes.saturating_add(len);
                }
            } else {
                std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, &e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                dir = %dir.display(),
                removed,
                "removed payload files no task names (left by an interrupted write or removal)"
            );
        }
        Ok(Self {
            dir,
            output_bytes: AtomicU64::new(output_bytes),
        })
    }

    fn path(&self, task: &TaskId, slot: Slot, token: u64) -> PathBuf {
        match slot {
            Slot::Input => self.dir.join(format!("{task}{INPUT_SUFFIX}")),
            Slot::Output => self.dir.join(format!("{task}-{token:016x}")),
        }
    }

    /// Writes `bytes` as a payload of `task`, durably; small ones stay in
    /// the record.
    pub(super) fn keep(
        &self,
        task: &TaskId,
        slot: Slot,
        token: u64,
        bytes: Vec<u8>,
    ) -> Result<Payload> {
        if bytes.len() <= INLINE_PAYLOAD {
            return Ok(Payload::Inline(bytes));
        }
        let path = self.path(task, slot, token);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
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
        if slot == Slot::Output {
            self.output_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(Payload::File { token, len })
    }

    /// Removes the file of a payload, if it is one.
    pub(super) fn remove(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<()> {
        let Payload::File { token, len } = *payload else {
            return Ok(());
        };
        let path = self.path(task, slot, token);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if slot == Slot::Output {
                    let _ =
                        self.output_bytes
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                Some(b.saturating_sub(len))
                            });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path, &e)),
        }
    }

    /// Removes the files of payloads that records no longer name; failures
    /// are logged (the next open removes what is left).
    pub(super) fn remove_all(&self, gone: &[(TaskId, Slot, Payload)]) {
        for (task, slot, payload) in gone {
            if let Err(e) = self.remove(task, *slot, payload) {
                tracing::warn!(task = %task, error = %e, "cannot remove a payload file");
            }
        }
    }

    /// The bytes of a payload.
    pub(super) fn read(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<Vec<u8>> {
        let Payload::File { token, len } = *payload else {
            return Ok(payload.inline().map(<[u8]>::to_vec).unwrap_or_default());
        };
        let path = self.path(task, slot, token);
        let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, &e))?;
        if bytes.len() as u64 != len {
            return Err(Error::Store(format!(
                "the file {} is {} bytes, but task {task} recorded {len}: it was changed outside \
                 wpool",
                path.display(),
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// The file of a payload.
    pub(super) fn file(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Option<PathBuf> {
        match *payload {
            Payload::File { token, .. } => Some(self.path(task, slot, token)),
            Payload::Inline(_) => None,
        }
    }

    /// Bytes of output files now.
    pub(super) fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }
}

/// The files a record names, with their slots.
pub(super) fn files_of(record: &TaskRecord) -> Vec<(TaskId, Slot, Payload)> {
    [(Slot::Input, &record.input), (Slot::Output, &record.output)]
        .into_iter()
        .filter(|(_, payload)| payload.is_file())
        .map(|(slot, payload)| (record.id, slot, payload.clone()))
        .collect()
}

/// Whether `record` names the file of `slot` and `token`.
fn names(record: &TaskRecord, slot: Slot, token: u64) -> bool {
    let payload = match slot {
        Slot::Input => &record.input,
        Slot::Output => &record.output,
    };
    matches!(*payload, Payload::File { token: t, .. } if t == token)
}

/// `<task id>.input`, or `<task id>-<token as 16 hex digits>`.
fn parse_name(name: &str) -> Option<(TaskId, Slot, u64)> {
    if let Some(task) = name.strip_suffix(INPUT_SUFFIX) {
        return Some((task.parse().ok()?, Slot::Input, 0));
    }
    let (task, token) = name.rsplit_once('-')?;
    if token.len() != 16 {
        return None;
    }
    Some((
        task.parse().ok()?,
        Slot::Output,
        u64::from_str_radix(token, 16).ok()?,
    ))
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Store(format!("cannot {what} the file {}: {e}", path.display()))
}
