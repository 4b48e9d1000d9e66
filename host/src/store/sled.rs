//! A durable store on [sled](https://docs.rs/sled/0.34): tasks, indexes and
//! modules in a data directory, every transition one transaction, every
//! record checked.
//!
//! # Layout
//!
//! The data directory holds `wpool-store` (the schema version, readable
//! before anything else is opened), `wpool.pid` (the process that last
//! opened it) and `sled/` (the database). The database's trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `tasks` | task id (16 bytes) | the [`TaskRecord`] |
//! | `unfinished` | seq (8 bytes BE) + id | empty: queued, scheduled and running tasks in submission order |
//! | `finished` | finished-at millis (8 bytes BE) + id | empty: final tasks, oldest first, for retention |
//! | `keys` | idempotency key | task id |
//! | `modules` | module hash (32 bytes) | the module's bytes |
//! | `meta` | `schema`, `counts` | the schema version; the number of tasks in each state |
//! | `module_settings` | module hash (32 bytes) | the module's run settings (JSON) |
//!
//! Every value except the empty index values is wrapped in an envelope: one
//! byte of record version, a CRC32 of the key and the payload, then the
//! payload (bincode for records, raw bytes for modules). A record whose
//! envelope does not check out is reported as corrupted by the call that
//! read it; it is never served.
//!
//! # Counts
//!
//! The per-state counts are a record of their own, rewritten in the same
//! transaction as every change of a task's state, and kept in memory behind
//! the lock that serialises writes. Reopening a store of a million finished
//! tasks therefore does not read them all, and the counts add up after any
//! crash.

use std::collections::HashSet;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use super::{Inserted, StateCounts, Store, StoredModule, TaskFilter};
use crate::pool::task::{Millis, TaskId, TaskRecord, TaskState};
use crate::{Error, ModuleHash, ModuleSettings, Result};

/// The schema version this build writes and reads. A store written by a
/// newer wpool (a higher version) is refused, never modified.
pub const SCHEMA_VERSION: u32 = 1;

/// The version byte of each record's envelope.
const RECORD_VERSION: u8 = 1;
/// Envelope header: version byte + CRC32.
const HEADER: usize = 5;
/// The file beside the database that names the schema version.
const VERSION_FILE: &str = "wpool-store";
/// The file that names the process holding the directory.
const PID_FILE: &str = "wpool.pid";
/// The database's own directory inside the data directory.
const DB_DIR: &str = "sled";
/// Tasks removed per transaction by retention.
const PURGE_BATCH: usize = 256;

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// [`Store::flush`] returns once every write before it is on disk
    /// (fsync). Concurrent callers share one flush (group commit), so a
    /// burst of submissions costs a few fsyncs, not one each. Writes that
    /// no flush follows (state changes, results) reach the disk within
    /// about 100 ms by a background flush. The default.
    #[default]
    Durable,
    /// [`Store::flush`] returns at once; a background thread flushes every
    /// `interval`.
    ///
    /// **Risk**: a task acknowledged by `submit` is not yet on disk. If the
    /// process or the machine crashes, the tasks acknowledged (and the
    /// results recorded) during the last `interval` can be lost. Choose it
    /// only when losing them is acceptable, for throughput.
    Relaxed {
        /// How often the background thread flushes.
        interval: Duration,
    },
}

/// How a [`SledStore`] is opened.
#[derive(Clone, Debug)]
pub struct SledOptions {
    sync: SyncMode,
    cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Durable,
            cache_capacity: 64 << 20,
        }
    }
}

impl SledOptions {
    /// The defaults: durable acknowledgement, a 64 MiB page cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// When writes reach the disk. Default: [`SyncMode::Durable`].
    pub fn sync(&mut self, sync: SyncMode) -> &mut Self {
        self.sync = sync;
        self
    }

    /// The size of sled's page cache, in bytes. Default: 64 MiB.
    pub fn cache_capacity(&mut self, bytes: u64) -> &mut Self {
        self.cache_capacity = bytes;
        self
    }
}

/// What [`SledStore::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Records in `tasks`.
    pub tasks: u64,
    /// Entries in the `unfinished` index.
    pub unfinished: u64,
    /// Entries in the `finished` index.
    pub finished: u64,
    /// Idempotency keys.
    pub keys: u64,
    /// Stored modules.
    pub modules: u64,
    /// Every inconsistency and corrupted record found; empty when the
    /// store is sound.
    pub problems: Vec<String>,
}

/// A durable [`Store`] on sled, in a data directory. See the module docs
/// for the layout.
///
/// One process at a time: opening a directory that another process holds
/// fails with [`Error::Store`] naming the directory (and, if it recorded
/// itself, the process).
pub struct SledStore {
    dir: PathBuf,
    db: ::sled::Db,
    trees: Trees,
    /// Serialises every write to tasks and their indexes; holds the counts
    /// those writes keep up to date.
    writes: Mutex<StateCounts>,
    flusher: Flusher,
    sync: SyncMode,
}

struct Trees {
    tasks: ::sled::Tree,
    unfinished: ::sled::Tree,
    finished: ::sled::Tree,
    keys: ::sled::Tree,
    modules: ::sled::Tree,
    meta: ::sled::Tree,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// Fails with [`Error::Store`] when another process holds the directory,
    /// when the store was written by a newer wpool (schema version above
    /// [`SCHEMA_VERSION`]; nothing is modified then), or when the database
    /// cannot be read.
    pub fn open(dir: impl AsRef<Path>, options: &SledOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let version_file = dir.join(VERSION_FILE);
        let known_version = read_version_file(&version_file)?;
        if let Some(version) = known_version {
            check_version(&dir, version)?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Store(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;

        let flush_every = match options.sync {
            SyncMode::Durable => Duration::from_millis(100),
            SyncMode::Relaxed { interval } => interval.max(Duration::from_millis(1)),
        };
        let db = ::sled::Config::new()
            .path(dir.join(DB_DIR))
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(Some(
                u64::try_from(flush_every.as_millis()).unwrap_or(u64::MAX),
            ))
            .open()
            .map_err(|e| open_error(&dir, e))?;
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|e| {
                Error::Store(format!(
                    "cannot open tree `{name}` in {}: {e}",
                    dir.display()
                ))
            })
        };
        let trees = Trees {
            tasks: open_tree("tasks")?,
            unfinished: open_tree("unfinished")?,
            finished: open_tree("finished")?,
            keys: open_tree("keys")?,
            modules: open_tree("modules")?,
            meta: open_tree("meta")?,
        };

        let store_version = match trees.meta.get(META_SCHEMA).map_err(|e| {
            Error::Store(format!(
                "reading the schema version in {}: {e}",
                dir.display()
            ))
        })? {
            Some(bytes) => Some(decode::<u32>("meta", META_SCHEMA, &bytes)?),
            None => None,
        };
        match store_version {
            Some(version) => check_version(&dir, version)?,
            None if trees.tasks.is_empty() && trees.modules.is_empty() => {
                trees
                    .meta
                    .insert(META_SCHEMA, encode("meta", META_SCHEMA, &SCHEMA_VERSION)?)
                    .map_err(|e| {
                        Error::Store(format!(
                            "writing the schema version in {}: {e}",
                            dir.display()
                        ))
                    })?;
                db.flush().map_err(|e| {
                    Error::Store(format!("flushing the new store in {}: {e}", dir.display()))
                })?;
            }
            None => {
                return Err(Error::Store(format!(
                    "the store in {} holds tasks but no schema version record: it is corrupted \
                     or was not written by wpool",
                    dir.display()
                )));
            }
        }
        if known_version.is_none() {
            write_atomically(
                &version_file,
                format!("wpool store schema {SCHEMA_VERSION}\n").as_bytes(),
            )?;
        }
        // Best effort: it only helps the message of a second opener.
        let _ = std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id()));

        let counts = match trees.meta.get(META_COUNTS) {
            Ok(Some(bytes)) => match decode_counts(&bytes) {
                Ok(counts) => Some(counts),
                Err(e) => {
                    tracing::warn!(error = %e, "the stored task counts are unreadable; recounting");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                return Err(Error::Store(format!(
                    "reading the task counts in {}: {e}",
                    dir.display()
                )));
            }
        };
        let store = SledStore {
            dir,
            db,
            trees,
            writes: Mutex::new(StateCounts::default()),
            flusher: Flusher::default(),
            sync: options.sync,
        };
        let counts = match counts {
            Some(counts) => counts,
            None => store.recount()?,
        };
        *store.lock_writes() = counts;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When writes reach the disk.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    /// Flushes every write so far to disk, in either [`SyncMode`] (with
    /// group commit, as [`Store::flush`] in durable mode).
    pub fn sync(&self) -> Result<()> {
        self.flusher.flush(&self.db)
    }

    /// How many flushes to disk [`Store::flush`] and [`SledStore::sync`]
    /// have made (callers that shared a flush count once).
    pub fn flushes(&self) -> u64 {
        self.flusher
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finished
    }

    /// The size of the database's files, in bytes, as sled counts it.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.db
            .size_on_disk()
            .map_err(|e| self.storage("measuring the store's size", e))
    }

    /// Removes the modules that no task in the store references (waiting,
    /// running or finished but still retained); returns how many.
    ///
    /// It holds the write lock throughout, and [`Store::insert`] refuses a
    /// task whose module is not stored, so no task can end up naming a
    /// removed module. A module registered but not yet used by any task is
    /// removed too: register it again before submitting by hash.
    pub fn gc_modules(&self) -> Result<u64> {
        let _writes = self.lock_writes();
        let mut used = HashSet::new();
        for entry in self.trees.tasks.iter() {
            let (key, value) = entry.map_err(|e| self.storage("scanning tasks", e))?;
            used.insert(decode_task(&key, &value)?.module);
        }
        let mut removed = 0;
        for entry in self.trees.modules.iter() {
            let (key, _) = entry.map_err(|e| self.storage("scanning modules", e))?;
            let hash = module_hash(&key)?;
            if !used.contains(&hash) {
                self.trees
                    .modules
                    .remove(&key)
                    .map_err(|e| self.storage(&format!("removing module {hash}"), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "removed modules no task uses");
        }
        Ok(removed)
    }

    /// Reads every record and index entry and reports what does not add
    /// up: corrupted records, a task in no index or in two, index entries
    /// naming missing tasks, keys naming missing tasks, counts that differ
    /// from the records. It reads the whole store: for tests and repair
    /// tools, not for the hot path.
    pub fn check(&self) -> Result<CheckReport> {
        let writes = self.lock_writes();
        let mut report = CheckReport::default();
        let mut counts = StateCounts::default();
        let mut expected_unfinished = HashSet::new();
        let mut expected_finished = HashSet::new();
        // Ids of unreadable records: their index entries cannot be checked.
        let mut unreadable = HashSet::new();
        for entry in self.trees.tasks.iter() {
            let (key, value) = entry.map_err(|e| self.storage("scanning tasks", e))?;
            report.tasks += 1;
            match decode_task(&key, &value) {
                Ok(task) => {
                    if key.as_ref() != task.id.to_bytes() {
                        report
                            .problems
                            .push(format!("task {} is stored under another id's key", task.id));
                    }
                    counts.moved(None, Some(task.state));
                    match index_key(&task) {
                        Index::Unfinished(k) => expected_unfinished.insert(k),
                        Index::Finished(k) => expected_finished.insert(k),
                    };
                    if let Some(k) = &task.idempotency_key {
                        match self.trees.keys.get(k.as_bytes()) {
                            Ok(Some(id)) if id.as_ref() == task.id.to_bytes() => {}
                            Ok(_) => report.problems.push(format!(
                                "task {} has idempotency key `{k}`, which does not name it",
                                task.id
                            )),
                            Err(e) => return Err(self.storage("reading keys", e)),
                        }
                    }
                }
                Err(e) => {
                    unreadable.insert(key.to_vec());
                    report.problems.push(e.to_string());
                }
            }
        }
        for (name, tree, expected, count) in [
            (
                "unfinished",
                &self.trees.unfinished,
                &mut expected_unfinished,
                &mut report.unfinished,
            ),
            (
                "finished",
                &self.trees.finished,
                &mut expected_finished,
                &mut report.finished,
            ),
        ] {
            for entry in tree.iter() {
                let (key, _) = entry.map_err(|e| self.storage(&format!("scanning {name}"), e))?;
                *count += 1;
                let id = key.get(8..).unwrap_or_default();
                if !expected.remove(key.as_ref()) && !unreadable.contains(id) {
                    report.problems.push(format!(
                        "index `{name}` has entry {} that no task in that state matches",
                        hex::encode(&key)
                    ));
                }
            }
            for missing in expected.iter() {
                report.problems.push(format!(
                    "a task is missing from index `{name}` (entry {})",
                    hex::encode(missing)
                ));
            }
        }
        for entry in self.trees.keys.iter() {
            let (key, id) = entry.map_err(|e| self.storage("scanning keys", e))?;
            report.keys += 1;
            let present = self
                .trees
                .tasks
                .contains_key(&id)
                .map_err(|e| self.storage("reading tasks", e))?;
            if !present {
                report.problems.push(format!(
                    "idempotency key `{}` names a task that is not stored",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
        for entry in self.trees.modules.iter() {
            let (key, value) = entry.map_err(|e| self.storage("scanning modules", e))?;
            report.modules += 1;
            if let Err(e) = open_envelope("modules", &key, &value) {
                report.problems.push(e.to_string());
            }
        }
        if unreadable.is_empty() && strip_zeros(&writes) != strip_zeros(&counts) {
            report.problems.push(format!(
                "the counts say {:?} but the records say {:?}",
                writes.0, counts.0
            ));
        }
        Ok(report)
    }

    fn lock_writes(&self) -> MutexGuard<'_, StateCounts> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn storage(&self, what: &str, e: ::sled::Error) -> Error {
        Error::Store(format!("{what} in {}: {e}", self.dir.display()))
    }

    fn tx_error(&self, what: &str, e: TransactionError<Error>) -> Error {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.storage(what, e),
        }
    }

    /// Counts the tasks in each state by reading them all.
    fn recount(&self) -> Result<StateCounts> {
        let mut counts = StateCounts::default();
        for entry in self.trees.tasks.iter() {
            let (key, value) = entry.map_err(|e| self.storage("counting tasks", e))?;
            counts.moved(None, Some(decode_task(&key, &value)?.state));
        }
        Ok(counts)
    }

    fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let key = id.to_bytes();
        match self
            .trees
            .tasks
            .get(key)
            .map_err(|e| self.storage(&format!("reading task {id}"), e))?
        {
            Some(bytes) => Ok(Some(decode_task(&key, &bytes)?)),
            None => Ok(None),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::error!(dir = %self.dir.display(), error = %e, "flushing the store on close");
        }
    }
}

const META_SCHEMA: &[u8] = b"schema";
const META_COUNTS: &[u8] = b"counts";

fn strip_zeros(counts: &StateCounts) -> StateCounts {
    StateCounts(
        counts
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect(),
    )
}

fn check_version(dir: &Path, version: u32) -> Result<()> {
    if version > SCHEMA_VERSION {
        return Err(Error::Store(format!(
            "the store in {} has schema version {version}, written by a newer wpool; this \
             wpool reads schema version {SCHEMA_VERSION}. Upgrade wpool to open it (nothing \
             was modified)",
            dir.display()
        )));
    }
    if version == 0 {
        return Err(Error::Store(format!(
            "the store in {} has schema version 0, which no wpool writes: it is corrupted \
             (nothing was modified)",
            dir.display()
        )));
    }
    Ok(())
}

fn read_version_file(path: &Path) -> Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Store(format!("cannot read {}: {e}", path.display())));
        }
    };
    text.trim()
        .strip_prefix("wpool store schema ")
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::Store(format!(
                "{} does not name a schema version (it holds {:?}): the data directory is \
                 corrupted or not wpool's (nothing was modified)",
                path.display(),
                text.chars().take(64).collect::<String>()
            ))
        })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::Store(format!("cannot write {}: {e}", path.display())))
}

/// sled's error on open, in words: a held lock names the directory and the
/// process that recorded itself there.
fn open_error(dir: &Path, e: ::sled::Error) -> Error {
    let text = e.to_string();
    if text.contains("could not acquire lock") {
        let holder = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map(|pid| format!(" (process {pid} opened it last, per {PID_FILE})"))
            .unwrap_or_default();
        return Error::Store(format!(
            "the data directory {} is in use: another wpool process holds the lock on {}{holder}. \
             Stop that process, or use another data directory",
            dir.display(),
            dir.join(DB_DIR).join("db").display()
        ));
    }
    Error::Store(format!(
        "cannot open the store in {}: {text}",
        dir.display()
    ))
}

fn module_hash(key: &[u8]) -> Result<ModuleHash> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| {
        Error::Store(format!(
            "corrupted key {} in tree `modules`: not a 32-byte hash",
            hex::encode(key)
        ))
    })?;
    Ok(ModuleHash::from_bytes(bytes))
}

fn task_id(tree: &str, bytes: &[u8]) -> Result<TaskId> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::Store(format!(
            "corrupted entry in tree `{tree}`: {} is not a 16-byte task id",
            hex::encode(bytes)
        ))
    })?;
    Ok(TaskId::from_bytes(bytes))
}

fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

fn envelope(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&checksum(key, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn describe_key(tree: &str, key: &[u8]) -> String {
    match (tree, key.len()) {
        ("tasks", 16) => task_id(tree, key).map_or_else(|_| hex::encode(key), |id| id.to_string()),
        _ if key.iter().all(|b| b.is_ascii_graphic()) => String::from_utf8_lossy(key).into_owned(),
        _ => hex::encode(key),
    }
}

fn corrupted(tree: &str, key: &[u8], why: impl fmt::Display) -> Error {
    Error::Store(format!(
        "corrupted record {} in tree `{tree}`: {why}",
        describe_key(tree, key)
    ))
}

/// The payload of a checked envelope.
fn open_envelope<'a>(tree: &str, key: &[u8], bytes: &'a [u8]) -> Result<&'a [u8]> {
    if bytes.len() < HEADER {
        return Err(corrupted(
            tree,
            key,
            format_args!("{} bytes, shorter than its header", bytes.len()),
        ));
    }
    if bytes[0] != RECORD_VERSION {
        return Err(corrupted(
            tree,
            key,
            format_args!(
                "record version {}, this wpool reads version {RECORD_VERSION}",
                bytes[0]
            ),
        ));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER..];
    let computed = checksum(key, payload);
    if stored != computed {
        return Err(corrupted(
            tree,
            key,
            format_args!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    Ok(payload)
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: serde::Serialize>(tree: &str, key: &[u8], value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| {
        Error::Store(format!(
            "cannot encode record {} for tree `{tree}`: {e}",
            describe_key(tree, key)
        ))
    })?;
    Ok(envelope(key, &payload))
}

fn encode_task(task: &TaskRecord) -> Result<Vec<u8>> {
    encode(
        "tasks",
        &task.id.to_bytes(),
        &schema::StoredTask::from(task),
    )
}

fn decode_task(key: &[u8], bytes: &[u8]) -> Result<TaskRecord> {
    let stored: schema::StoredTask = decode("tasks", key, bytes)?;
    TaskRecord::try_from(stored).map_err(|e| corrupted("tasks", key, e))
}

fn encode_counts(counts: &StateCounts) -> Result<Vec<u8>> {
    encode("meta", META_COUNTS, &schema::counts(counts))
}

fn decode_counts(bytes: &[u8]) -> Result<StateCounts> {
    schema::counts_from(decode("meta", META_COUNTS, bytes)?)
        .map_err(|e| corrupted("meta", META_COUNTS, e))
}

fn decode<T: serde::de::DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    let payload = open_envelope(tree, key, bytes)?;
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| corrupted(tree, key, format_args!("undecodable: {e}")))?;
    if used != payload.len() {
        return Err(corrupted(
            tree,
            key,
            format_args!("{} trailing bytes", payload.len() - used),
        ));
    }
    Ok(value)
}

/// Where a task belongs: one index entry per task, always.
enum Index {
    Unfinished(Vec<u8>),
    Finished(Vec<u8>),
}

fn index_key(task: &TaskRecord) -> Index {
    let id = task.id.to_bytes();
    if task.state.is_final() {
        let at: Millis = task.finished_at.unwrap_or(task.updated_at);
        Index::Finished([&at.to_be_bytes()[..], &id[..]].concat())
    } else {
        Index::Unfinished([&task.seq.to_be_bytes()[..], &id[..]].concat())
    }
}

type Tx = ConflictableTransactionError<Error>;

fn abort(e: Error) -> Tx {
    ConflictableTransactionError::Abort(e)
}

fn put_index(
    unfinished: &TransactionalTree,
    finished: &TransactionalTree,
    index: Index,
) -> Result<(), Tx> {
    match index {
        Index::Unfinished(k) => unfinished.insert(k, &[][..])?,
        Index::Finished(k) => finished.insert(k, &[][..])?,
    };
    Ok(())
}

fn remove_index(
    unfinished: &TransactionalTree,
    finished: &TransactionalTree,
    index: Index,
) -> Result<(), Tx> {
    match index {
        Index::Unfinished(k) => unfinished.remove(k)?,
        Index::Finished(k) => finished.remove(k)?,
    };
    Ok(())
}

impl Store for SledStore {
    // --- module run settings (issue 12) -----------------------------------
    // A tree of its own, opened on first use (older stores lack it and read
    // as "no settings"; older wpool versions ignore it). Values go through
    // the checked envelope; the payload is JSON, so that fields can be added.
    fn put_module_settings(&self, hash: &ModuleHash, settings: &ModuleSettings) -> Result<()> {
        const TREE: &str = "module_settings";
        let tree = self
            .db
            .open_tree(TREE)
            .map_err(|e| self.storage("opening the module settings", e))?;
        let key = hash.as_bytes();
        if settings.is_default() {
            tree.remove(key)
                .map_err(|e| self.storage(&format!("removing the settings of module {hash}"), e))?;
            return Ok(());
        }
        let payload = serde_json::to_vec(settings).map_err(|e| {
            Error::Store(format!("cannot encode the settings of module {hash}: {e}"))
        })?;
        tree.insert(key, envelope(key, &payload))
            .map_err(|e| self.storage(&format!("storing the settings of module {hash}"), e))?;
        Ok(())
    }

    fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>> {
        const TREE: &str = "module_settings";
        let tree = self
            .db
            .open_tree(TREE)
            .map_err(|e| self.storage("opening the module settings", e))?;
        let key = hash.as_bytes();
        let Some(bytes) = tree
            .get(key)
            .map_err(|e| self.storage(&format!("reading the settings of module {hash}"), e))?
        else {
            return Ok(None);
        };
        let payload = open_envelope(TREE, key, &bytes)?;
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|e| corrupted(TREE, key, format_args!("undecodable settings: {e}")))
    }
    // --- end of module run settings ---------------------------------------

    fn gc_modules(&self) -> Result<u64> {
        SledStore::gc_modules(self)
    }

    fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()> {
        let key = hash.as_bytes();
        // Not while `gc_modules` decides what to remove.
        let _writes = self.lock_writes();
        // Content-addressed: an existing, sound record is the same bytes. A
        // corrupted one is replaced.
        if let Some(existing) = self
            .trees
            .modules
            .get(key)
            .map_err(|e| self.storage(&format!("reading module {hash}"), e))?
            && open_envelope("modules", key, &existing).is_ok()
        {
            return Ok(());
        }
        self.trees
            .modules
            .insert(key, envelope(key, bytes))
            .map_err(|e| self.storage(&format!("storing module {hash}"), e))?;
        Ok(())
    }

    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        let key = hash.as_bytes();
        match self
            .trees
            .modules
            .get(key)
            .map_err(|e| self.storage(&format!("reading module {hash}"), e))?
        {
            Some(bytes) => {
                let payload = open_envelope("modules", key, &bytes)?;
                if ModuleHash::of(payload) != *hash {
                    return Err(corrupted(
                        "modules",
                        key,
                        "the bytes do not hash to their key",
                    ));
                }
                Ok(Some(payload.to_vec()))
            }
            None => Ok(None),
        }
    }

    fn modules(&self) -> Result<Vec<StoredModule>> {
        let mut modules = Vec::new();
        for entry in self.trees.modules.iter() {
            let (key, value) = entry.map_err(|e| self.storage("listing modules", e))?;
            modules.push(StoredModule {
                hash: module_hash(&key)?,
                size: value.len().saturating_sub(HEADER) as u64,
            });
        }
        Ok(modules)
    }

    fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        // Under the write lock, which `insert` also takes: no task can name
        // the module between the check and the removal.
        let _writes = self.lock_writes();
        if self.module_in_use(hash)? {
            return Err(Error::ModuleInUse(*hash));
        }
        Ok(self
            .trees
            .modules
            .remove(hash.as_bytes())
            .map_err(|e| self.storage(&format!("removing module {hash}"), e))?
            .is_some())
    }

    fn next_seq(&self) -> Result<u64> {
        // sled persists its id generator and, after a crash, resumes above
        // anything it handed out: never reused, always increasing.
        self.db
            .generate_id()
            .map(|id| id + 1)
            .map_err(|e| self.storage("generating a sequence number", e))
    }

    fn insert(&self, task: &TaskRecord) -> Result<Inserted> {
        let id = task.id.to_bytes();
        let value = encode_task(task)?;
        let index = index_key(task);
        let mut counts = self.lock_writes();
        let mut new_counts = counts.clone();
        new_counts.moved(None, Some(task.state));
        let counts_value = encode_counts(&new_counts)?;
        let t = &self.trees;
        let result = (
            &t.tasks,
            &t.unfinished,
            &t.finished,
            &t.keys,
            &t.modules,
            &t.meta,
        )
            .transaction(|(tasks, unfinished, finished, keys, modules, meta)| {
                if let Some(key) = &task.idempotency_key
                    && let Some(existing) = keys.get(key.as_bytes())?
                {
                    return Ok(Inserted::Existing(
                        task_id("keys", &existing).map_err(abort)?,
                    ));
                }
                if tasks.get(id)?.is_some() {
                    return Err(abort(Error::Store(format!(
                        "task {} already exists",
                        task.id
                    ))));
                }
                if modules.get(task.module.as_bytes())?.is_none() {
                    return Err(abort(Error::UnknownModule(task.module)));
                }
                tasks.insert(&id[..], value.as_slice())?;
                let index = match &index {
                    Index::Unfinished(k) => Index::Unfinished(k.clone()),
                    Index::Finished(k) => Index::Finished(k.clone()),
                };
                put_index(unfinished, finished, index)?;
                if let Some(key) = &task.idempotency_key {
                    keys.insert(key.as_bytes(), &id[..])?;
                }
                meta.insert(META_COUNTS, counts_value.as_slice())?;
                Ok(Inserted::New)
            })
            .map_err(|e| self.tx_error(&format!("storing task {}", task.id), e))?;
        if result == Inserted::New {
            *counts = new_counts;
        }
        Ok(result)
    }

    fn update(&self, task: &TaskRecord, expected: TaskState) -> Result<bool> {
        let id = task.id.to_bytes();
        let value = encode_task(task)?;
        let mut counts = self.lock_writes();
        let current = &*counts;
        let t = &self.trees;
        let result = (&t.tasks, &t.unfinished, &t.finished, &t.meta)
            .transaction(|(tasks, unfinished, finished, meta)| {
                let Some(stored) = tasks.get(id)? else {
                    return Ok(None);
                };
                let stored: TaskRecord = decode_task(&id, &stored).map_err(abort)?;
                if stored.state != expected {
                    return Ok(None);
                }
                remove_index(unfinished, finished, index_key(&stored))?;
                put_index(unfinished, finished, index_key(task))?;
                tasks.insert(&id[..], value.as_slice())?;
                let mut new_counts = current.clone();
                if stored.state != task.state {
                    new_counts.moved(Some(stored.state), Some(task.state));
                    meta.insert(META_COUNTS, encode_counts(&new_counts).map_err(abort)?)?;
                }
                Ok(Some(new_counts))
            })
            .map_err(|e| self.tx_error(&format!("updating task {}", task.id), e))?;
        match result {
            Some(new_counts) => {
                *counts = new_counts;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.task(id)
    }

    fn by_key(&self, key: &str) -> Result<Option<TaskId>> {
        match self
            .trees
            .keys
            .get(key.as_bytes())
            .map_err(|e| self.storage("reading idempotency keys", e))?
        {
            Some(id) => Ok(Some(task_id("keys", &id)?)),
            None => Ok(None),
        }
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let range = match filter.before {
            Some(before) => self.trees.tasks.range(..before.to_bytes()),
            None => self.trees.tasks.iter(),
        };
        let mut out = Vec::new();
        let size = filter.page_size();
        for entry in range.rev() {
            let (key, value) = entry.map_err(|e| self.storage("listing tasks", e))?;
            let task = decode_task(&key, &value)?;
            if filter.matches(&task) {
                out.push(task);
                if out.len() >= size {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        for entry in self.trees.unfinished.iter() {
            let (key, _) = entry.map_err(|e| self.storage("reading the unfinished index", e))?;
            let id = task_id("unfinished", key.get(8..).unwrap_or_default())?;
            let task = self.task(&id)?.ok_or_else(|| {
                Error::Store(format!(
                    "corrupted index `unfinished` in {}: it names task {id}, which is not stored",
                    self.dir.display()
                ))
            })?;
            out.push(task);
        }
        Ok(out)
    }

    fn module_in_use(&self, module: &ModuleHash) -> Result<bool> {
        for task in self.unfinished()? {
            if task.module == *module {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn counts(&self) -> Result<StateCounts> {
        Ok(self.lock_writes().clone())
    }

    fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        let mut counts = self.lock_writes();
        let finished_total: u64 = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(|s| counts.get(s))
            .sum();
        let excess = keep.map_or(0, |keep| finished_total.saturating_sub(keep));
        let mut removed = 0u64;
        loop {
            // Oldest first: each entry goes if it is past retention or among
            // the excess.
            let mut doomed = Vec::new();
            for entry in self.trees.finished.iter() {
                let (key, _) = entry.map_err(|e| self.storage("reading the finished index", e))?;
                let at = key
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupted("finished", &key, "key shorter than 8 bytes"))?;
                let position = removed + doomed.len() as u64;
                if (at < before || position < excess) && doomed.len() < PURGE_BATCH {
                    doomed.push(key);
                } else {
                    break;
                }
            }
            if doomed.is_empty() {
                break;
            }
            let current = &*counts;
            let t = &self.trees;
            let new_counts = (&t.tasks, &t.finished, &t.keys, &t.meta)
                .transaction(|(tasks, finished, keys, meta)| {
                    let mut new_counts = current.clone();
                    for key in &doomed {
                        finished.remove(key)?;
                        let id_bytes = key.get(8..).unwrap_or_default();
                        let Some(value) = tasks.remove(id_bytes)? else {
                            continue;
                        };
                        let task: TaskRecord = decode_task(id_bytes, &value).map_err(abort)?;
                        new_counts.moved(Some(task.state), None);
                        if let Some(k) = &task.idempotency_key
                            && keys.get(k.as_bytes())?.as_deref() == Some(id_bytes)
                        {
                            keys.remove(k.as_bytes())?;
                        }
                    }
                    meta.insert(META_COUNTS, encode_counts(&new_counts).map_err(abort)?)?;
                    Ok(new_counts)
                })
                .map_err(|e| self.tx_error("removing finished tasks", e))?;
            *counts = new_counts;
            removed += doomed.len() as u64;
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<()> {
        match self.sync {
            SyncMode::Durable => self.flusher.flush(&self.db),
            SyncMode::Relaxed { .. } => Ok(()),
        }
    }

    fn is_durable(&self) -> bool {
        self.sync == SyncMode::Durable
    }
}

/// Group commit: a caller waits for a flush that started after it came; a
/// flush in progress serves everyone who came before it started, and one
/// more flush serves everyone who came while it ran.
#[derive(Debug, Default)]
struct Flusher {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Flushes started.
    started: u64,
    /// The last flush finished (flushes finish in order: one at a time).
    finished: u64,
    running: bool,
    /// The error of the last finished flush.
    error: Option<String>,
}

impl Flusher {
    fn flush(&self, db: &::sled::Db) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Every write this caller made is in sled's buffers now; the first
        // flush to start from now on covers them.
        let ticket = state.started + 1;
        loop {
            if state.finished >= ticket {
                return match &state.error {
                    None => Ok(()),
                    Some(e) => Err(Error::Store(format!("flushing the store to disk: {e}"))),
                };
            }
            if state.running {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.running = true;
            state.started += 1;
            let generation = state.started;
            drop(state);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush()));
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.running = false;
            state.finished = generation;
            state.error = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the flush panicked".into()),
            };
            self.done.notify_all();
        }
    }
}

/// The stored form of a task, spelled out here rather than taken from the
/// public types' serde attributes: those serve JSON (an adjacently tagged
/// [`Outcome`](crate::Outcome), a hash as hex), and a change to them must not
/// silently change what is on disk. Changing this module means a new
/// [`SCHEMA_VERSION`]. Enums are stored by explicit codes, never by
/// declaration order.
mod schema {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use crate::pool::task::{Attempt, Backoff, TaskId, TaskRecord, TaskState};
    use crate::{Limits, ModuleHash, Outcome};

    #[derive(Serialize, Deserialize)]
    pub(super) struct StoredTask {
        id: [u8; 16],
        module: [u8; 32],
        input: Vec<u8>,
        priority: i32,
        limits: StoredLimits,
        max_attempts: u32,
        backoff: StoredBackoff,
        run_at: u64,
        expires_at: Option<u64>,
        idempotency_key: Option<String>,
        labels: BTreeMap<String, String>,
        state: u8,
        seq: u64,
        submitted_at: u64,
        updated_at: u64,
        finished_at: Option<u64>,
        attempts: Vec<StoredAttempt>,
        outcome: Option<StoredOutcome>,
        output: Vec<u8>,
        log: String,
        progress: Option<(u64, u64)>,
    }

    #[derive(Serialize, Deserialize)]
    struct StoredLimits {
        timeout_ms: u64,
        fuel: Option<u64>,
        memory: u64,
        max_output: u64,
        max_log: u64,
    }

    #[derive(Serialize, Deserialize)]
    struct StoredBackoff {
        initial_ms: u64,
        max_ms: u64,
        multiplier: f64,
        jitter: bool,
    }

    #[derive(Serialize, Deserialize)]
    struct StoredAttempt {
        number: u32,
        outcome: Option<StoredOutcome>,
        started_at: u64,
        duration_us: u64,
        fuel_consumed: Option<u64>,
    }

    /// `(code, number, text)`: the code names the variant.
    #[derive(Serialize, Deserialize)]
    struct StoredOutcome(u8, i64, String);

    fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn state_code(state: TaskState) -> u8 {
        match state {
            TaskState::Queued => 1,
            TaskState::Scheduled => 2,
            TaskState::Running => 3,
            TaskState::Succeeded => 4,
            TaskState::Failed => 5,
            TaskState::Cancelled => 6,
            TaskState::Expired => 7,
        }
    }

    fn state_from(code: u8) -> Result<TaskState, String> {
        Ok(match code {
            1 => TaskState::Queued,
            2 => TaskState::Scheduled,
            3 => TaskState::Running,
            4 => TaskState::Succeeded,
            5 => TaskState::Failed,
            6 => TaskState::Cancelled,
            7 => TaskState::Expired,
            other => return Err(format!("unknown task state code {other}")),
        })
    }

    fn outcome(o: &Outcome) -> StoredOutcome {
        let text = |code, s: &String| StoredOutcome(code, 0, s.clone());
        let unit = |code| StoredOutcome(code, 0, String::new());
        match o {
            Outcome::Success => unit(1),
            Outcome::Failed(s) => text(2, s),
            Outcome::Exit(code) => StoredOutcome(3, i64::from(*code), String::new()),
            Outcome::Trap(s) => text(4, s),
            Outcome::Timeout => unit(5),
            Outcome::OutOfFuel => unit(6),
            Outcome::MemoryLimit => unit(7),
            Outcome::OutputTooLarge => unit(8),
            Outcome::Cancelled => unit(9),
            Outcome::InvalidModule(s) => text(10, s),
            Outcome::HostError(s) => text(11, s),
        }
    }

    fn outcome_from(o: StoredOutcome) -> Result<Outcome, String> {
        let StoredOutcome(code, number, text) = o;
        Ok(match code {
            1 => Outcome::Success,
            2 => Outcome::Failed(text),
            3 => Outcome::Exit(
                u32::try_from(number).map_err(|_| format!("exit code {number} out of range"))?,
            ),
            4 => Outcome::Trap(text),
            5 => Outcome::Timeout,
            6 => Outcome::OutOfFuel,
            7 => Outcome::MemoryLimit,
            8 => Outcome::OutputTooLarge,
            9 => Outcome::Cancelled,
            10 => Outcome::InvalidModule(text),
            11 => Outcome::HostError(text),
            other => return Err(format!("unknown outcome code {other}")),
        })
    }

    impl From<&TaskRecord> for StoredTask {
        fn from(t: &TaskRecord) -> Self {
            StoredTask {
                id: t.id.to_bytes(),
                module: *t.module.as_bytes(),
                input: t.input.clone(),
                priority: t.priority,
                limits: StoredLimits {
                    timeout_ms: millis(t.limits.timeout),
                    fuel: t.limits.fuel,
                    memory: t.limits.memory,
                    max_output: t.limits.max_output,
                    max_log: t.limits.max_log,
                },
                max_attempts: t.max_attempts,
                backoff: StoredBackoff {
                    initial_ms: millis(t.backoff.initial),
                    max_ms: millis(t.backoff.max),
                    multiplier: t.backoff.multiplier,
                    jitter: t.backoff.jitter,
                },
                run_at: t.run_at,
                expires_at: t.expires_at,
                idempotency_key: t.idempotency_key.clone(),
                labels: t.labels.clone(),
                state: state_code(t.state),
                seq: t.seq,
                submitted_at: t.submitted_at,
                updated_at: t.updated_at,
                finished_at: t.finished_at,
                attempts: t
                    .attempts
                    .iter()
                    .map(|a| StoredAttempt {
                        number: a.number,
                        outcome: a.outcome.as_ref().map(outcome),
                        started_at: a.started_at,
                        duration_us: a.duration_us,
                        fuel_consumed: a.fuel_consumed,
                    })
                    .collect(),
                outcome: t.outcome.as_ref().map(outcome),
                output: t.output.clone(),
                log: t.log.clone(),
                progress: t.progress,
            }
        }
    }

    impl TryFrom<StoredTask> for TaskRecord {
        type Error = String;

        fn try_from(t: StoredTask) -> Result<Self, String> {
            Ok(TaskRecord {
                id: TaskId::from_bytes(t.id),
                module: ModuleHash::from_bytes(t.module),
                input: t.input,
                priority: t.priority,
                limits: Limits {
                    timeout: Duration::from_millis(t.limits.timeout_ms),
                    fuel: t.limits.fuel,
                    memory: t.limits.memory,
                    max_output: t.limits.max_output,
                    max_log: t.limits.max_log,
                },
                max_attempts: t.max_attempts,
                backoff: Backoff {
                    initial: Duration::from_millis(t.backoff.initial_ms),
                    max: Duration::from_millis(t.backoff.max_ms),
                    multiplier: t.backoff.multiplier,
                    jitter: t.backoff.jitter,
                },
                run_at: t.run_at,
                expires_at: t.expires_at,
                idempotency_key: t.idempotency_key,
                labels: t.labels,
                state: state_from(t.state)?,
                seq: t.seq,
                submitted_at: t.submitted_at,
                updated_at: t.updated_at,
                finished_at: t.finished_at,
                attempts: t
                    .attempts
                    .into_iter()
                    .map(|a| {
                        Ok(Attempt {
                            number: a.number,
                            outcome: a.outcome.map(outcome_from).transpose()?,
                            started_at: a.started_at,
                            duration_us: a.duration_us,
                            fuel_consumed: a.fuel_consumed,
                        })
                    })
                    .collect::<Result<_, String>>()?,
                outcome: t.outcome.map(outcome_from).transpose()?,
                output: t.output,
                log: t.log,
                progress: t.progress,
            })
        }
    }

    /// The counts as stored: `(state code, tasks)`.
    pub(super) fn counts(counts: &crate::store::StateCounts) -> Vec<(u8, u64)> {
        counts
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (state_code(*s), *n))
            .collect()
    }

    pub(super) fn counts_from(stored: Vec<(u8, u64)>) -> Result<crate::store::StateCounts, String> {
        let mut counts = crate::store::StateCounts::default();
        for (code, n) in stored {
            counts.0.insert(state_from(code)?, n);
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::{Backoff, Limits, Outcome, pool::task::Attempt};

    fn record(module: ModuleHash, state: TaskState, seq: u64) -> TaskRecord {
        TaskRecord {
            id: TaskId::new(),
            module,
            input: b"input".to_vec(),
            priority: 3,
            limits: Limits::default(),
            max_attempts: 2,
            backoff: Backoff::default(),
            run_at: 10,
            expires_at: Some(99),
            idempotency_key: None,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            state,
            seq,
            submitted_at: 1,
            updated_at: 2,
            finished_at: None,
            attempts: vec![Attempt {
                number: 1,
                outcome: Some(Outcome::Trap("unreachable".into())),
                started_at: 5,
                duration_us: 7,
                fuel_consumed: Some(8),
            }],
            outcome: Some(Outcome::Exit(3)),
            output: b"out".to_vec(),
            log: "log".into(),
            progress: Some((1, 2)),
        }
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::open(dir, &SledOptions::new()).unwrap()
    }

    #[test]
    fn records_round_trip_through_the_envelope() {
        let task = record(ModuleHash::of(b"m"), TaskState::Failed, 1);
        let key = task.id.to_bytes();
        let bytes = encode_task(&task).unwrap();
        assert_eq!(decode_task(&key, &bytes).unwrap(), task);
        // A flipped bit anywhere is caught, and so is a record moved to
        // another key.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let e = decode_task(&key, &bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("corrupted record {} in tree `tasks`", task.id)),
                "{e}"
            );
        }
        assert!(decode_task(&TaskId::new().to_bytes(), &bytes).is_err());
        assert!(decode_task(&key, &bytes[..3]).is_err());
        let counts = StateCounts([(TaskState::Queued, 3), (TaskState::Expired, 1)].into());
        assert_eq!(
            decode_counts(&encode_counts(&counts).unwrap()).unwrap(),
            counts
        );
    }

    #[test]
    fn transitions_keep_one_index_entry_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let module = ModuleHash::of(b"m");
        let mut task = record(module, TaskState::Queued, store.next_seq().unwrap());
        task.idempotency_key = Some("k1".into());
        assert_eq!(
            store.insert(&task).unwrap_err().to_string(),
            Error::UnknownModule(module).to_string()
        );
        store.put_module(&module, b"m").unwrap();
        assert_eq!(store.insert(&task).unwrap(), Inserted::New);
        let mut again = record(module, TaskState::Queued, store.next_seq().unwrap());
        again.idempotency_key = Some("k1".into());
        assert_eq!(store.insert(&again).unwrap(), Inserted::Existing(task.id));
        let same_id = TaskRecord {
            idempotency_key: None,
            ..task.clone()
        };
        assert!(
            store
                .insert(&same_id)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );

        task.state = TaskState::Running;
        assert!(!store.update(&task, TaskState::Scheduled).unwrap());
        assert!(store.update(&task, TaskState::Queued).unwrap());
        task.state = TaskState::Succeeded;
        task.finished_at = Some(50);
        assert!(store.update(&task, TaskState::Running).unwrap());
        assert!(!store.update(&task, TaskState::Running).unwrap());
        assert_eq!(store.counts().unwrap().get(TaskState::Succeeded), 1);
        assert_eq!(store.counts().unwrap().total(), 1);
        assert!(store.unfinished().unwrap().is_empty());
        let report = store.check().unwrap();
        assert_eq!(
            (report.tasks, report.finished, report.unfinished),
            (1, 1, 0)
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        assert_eq!(store.purge_finished(51, None).unwrap(), 1);
        assert_eq!(store.by_key("k1").unwrap(), None);
        assert_eq!(store.counts().unwrap().total(), 0);
        assert_eq!(store.gc_modules().unwrap(), 1);
        assert!(store.modules().unwrap().is_empty());
        drop(store);

        // The counts were stored with the transitions.
        let store = open(dir.path());
        assert_eq!(store.counts().unwrap().total(), 0);
    }

    #[test]
    fn concurrent_flushes_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let module = ModuleHash::of(b"m");
        store.put_module(&module, b"m").unwrap();
        let before = store.flushes();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let task = record(module, TaskState::Queued, store.next_seq().unwrap());
                        store.insert(&task).unwrap();
                        store.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let flushes = store.flushes() - before;
        eprintln!("{flushes} flushes for 400 acknowledged inserts");
        assert!(
            flushes < 400,
            "{flushes} flushes for 400 acknowledged inserts"
        );
        assert!(flushes > 0);
        assert_eq!(store.unfinished().unwrap().len(), 400);
    }
}
