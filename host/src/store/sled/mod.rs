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
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use self::envelope::{
    HEADER, corrupted, decode, decode_counts, decode_task, encode, encode_counts, encode_task,
    envelope, module_hash, open_envelope, task_id,
};
use self::flusher::Flusher;
use super::{Inserted, StateCounts, Store, StoredModule, TaskFilter};
use crate::task::{Millis, TaskId, TaskRecord, TaskState};
use crate::{Error, ModuleHash, ModuleSettings, Result};

mod check;
mod envelope;
mod flusher;
mod schema;

pub use check::CheckReport;

/// The schema version this build writes and reads. A store written by a
/// newer wpool (a higher version) is refused, never modified.
pub const SCHEMA_VERSION: u32 = 2;

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
        let write_schema = || -> Result<()> {
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
                Error::Store(format!("flushing the store in {}: {e}", dir.display()))
            })?;
            Ok(())
        };
        let upgraded = match store_version {
            // Schema 1 stores are read as they are (their task records are
            // version 1, read with defaults for what version 2 added) and
            // marked schema 2, so that an older wpool refuses them rather
            // than misreading the records written from now on.
            Some(version) if version < SCHEMA_VERSION => {
                check_version(&dir, version)?;
                write_schema()?;
                tracing::info!(
                    dir = %dir.display(),
                    from = version,
                    to = SCHEMA_VERSION,
                    "upgraded the store's schema"
                );
                true
            }
            Some(version) => {
                check_version(&dir, version)?;
                false
            }
            None if trees.tasks.is_empty() && trees.modules.is_empty() => {
                write_schema()?;
                true
            }
            None => {
                return Err(Error::Store(format!(
                    "the store in {} holds tasks but no schema version record: it is corrupted \
                     or was not written by wpool",
                    dir.display()
                )));
            }
        };
        if known_version.is_none() || upgraded {
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
        let flusher = Flusher::start(db.clone())?;
        let store = SledStore {
            dir,
            db,
            trees,
            writes: Mutex::new(StateCounts::default()),
            flusher,
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
        self.flusher.flush()
    }

    /// How many flushes to disk [`Store::flush`] and [`SledStore::sync`]
    /// have made (callers that shared a flush count once).
    pub fn flushes(&self) -> u64 {
        self.flusher.flushes()
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
pub(super) const META_COUNTS: &[u8] = b"counts";

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

#[async_trait::async_trait]
impl Store for SledStore {
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

    fn insert(&self, batch: &[TaskRecord]) -> Result<Vec<Inserted>> {
        let encoded = batch
            .iter()
            .map(|task| Ok((task.id.to_bytes(), encode_task(task)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut counts = self.lock_writes();
        let current = &*counts;
        let t = &self.trees;
        let what = match batch {
            [task] => format!("storing task {}", task.id),
            _ => format!("storing {} tasks", batch.len()),
        };
        let (answers, new_counts) = (
            &t.tasks,
            &t.unfinished,
            &t.finished,
            &t.keys,
            &t.modules,
            &t.meta,
        )
            .transaction(|(tasks, unfinished, finished, keys, modules, meta)| {
                let mut new_counts = current.clone();
                let mut answers = Vec::with_capacity(batch.len());
                for (task, (id, value)) in batch.iter().zip(&encoded) {
                    if let Some(key) = &task.idempotency_key
                        && let Some(existing) = keys.get(key.as_bytes())?
                    {
                        answers.push(Inserted::Existing(
                            task_id("keys", &existing).map_err(abort)?,
                        ));
                        continue;
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
                    put_index(unfinished, finished, index_key(task))?;
                    if let Some(key) = &task.idempotency_key {
                        keys.insert(key.as_bytes(), &id[..])?;
                    }
                    new_counts.moved(None, Some(task.state));
                    answers.push(Inserted::New);
                }
                meta.insert(
                    META_COUNTS,
                    encode_counts(&new_counts).map_err(abort)?.as_slice(),
                )?;
                Ok((answers, new_counts))
            })
            .map_err(|e| self.tx_error(&what, e))?;
        *counts = new_counts;
        Ok(answers)
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

    async fn flush(&self) -> Result<()> {
        match self.sync {
            SyncMode::Durable => self.flusher.flush_async().await,
            SyncMode::Relaxed { .. } => Ok(()),
        }
    }

    fn flush_blocking(&self) -> Result<()> {
        match self.sync {
            SyncMode::Durable => self.flusher.flush(),
            SyncMode::Relaxed { .. } => Ok(()),
        }
    }

    fn is_durable(&self) -> bool {
        self.sync == SyncMode::Durable
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::{Backoff, Limits, Outcome, task::Attempt};

    fn record(module: ModuleHash, state: TaskState, seq: u64) -> TaskRecord {
        let id = TaskId::new();
        let mut record = TaskRecord {
            id,
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
            interruptions: 2,
            lease: Some(crate::task::Lease {
                task: TaskId::from_bytes([7; 16]),
                token: 11,
                expires_at: 12,
            }),
            cancel_requested: true,
            max_interruptions: 4,
            outcome: Some(Outcome::Exit(3)),
            output: b"out".to_vec(),
            log: "log".into(),
            progress: Some((1, 2)),
        };
        record.lease.as_mut().unwrap().task = id;
        record
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
            store
                .insert(std::slice::from_ref(&task))
                .unwrap_err()
                .to_string(),
            Error::UnknownModule(module).to_string()
        );
        store.put_module(&module, b"m").unwrap();
        assert_eq!(
            store.insert(std::slice::from_ref(&task)).unwrap(),
            [Inserted::New]
        );
        let mut again = record(module, TaskState::Queued, store.next_seq().unwrap());
        again.idempotency_key = Some("k1".into());
        assert_eq!(
            store.insert(&[again]).unwrap(),
            [Inserted::Existing(task.id)]
        );
        let same_id = TaskRecord {
            idempotency_key: None,
            ..task.clone()
        };
        assert!(
            store
                .insert(&[same_id])
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
                        store.insert(&[task]).unwrap();
                        store.flush_blocking().unwrap();
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
