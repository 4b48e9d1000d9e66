//! A durable store on [sled](https://docs.rs/sled/0.34): tasks, indexes and
//! modules in a data directory, every transition one transaction, every
//! record checked.
//!
//! # Layout
//!
//! The data directory holds `wpool-store` (the schema version, readable
//! before anything else is opened), `wpool.pid` (the process that last
//! opened it), `wal/` (the write-ahead log every change goes through
//! first, see [`wal`]) and `sled/` (the database). The database's trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `tasks` | task id (16 bytes) | the [`TaskRecord`] |
//! | `unfinished` | seq (8 bytes BE) + id | empty: queued, scheduled and running tasks in submission order |
//! | `finished` | finished-at millis (8 bytes BE) | the ids of the final tasks that ended in that millisecond, for retention, oldest first (see [`finished`]) |
//! | `keys` | idempotency key | task id |
//! | `modules` | module hash (32 bytes) | the module's bytes |
//! | `meta` | `schema`, `counts` | the schema version; the number of tasks in each state |
//! | `module_settings` | module hash (32 bytes) | the module's run settings (JSON) |
//!
//! Inputs and outputs larger than
//! [`INLINE_PAYLOAD`](crate::task::INLINE_PAYLOAD) are files in `payloads/`,
//! not records: see [`payloads`].
//!
//! A change (a submission, a claim, a result, a removal) is one record of
//! the write-ahead log and a few plain sled writes, made under one lock;
//! sled itself is flushed only at the log's checkpoints.
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
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use self::envelope::{decode, decode_counts, decode_task, encode, module_hash, task_id};
use self::flusher::Flusher;
use self::overlay::{Layer, Merged, Overlay, write_layer};
use self::payloads::PayloadFiles;
use self::wal::{Change, Checkpoint, TreeId, Wal};
use super::Tally;
use crate::task::{IdHashing, IdMap, ModuleHash, Payload, TaskId, TaskRecord, TaskState};
use crate::{Error, Result};

mod check;
mod envelope;
mod finished;
mod flusher;
mod overlay;
mod payloads;
mod schema;
mod submitted;
mod tasks;
mod wal;

pub use check::CheckReport;
pub use flusher::{FlushStats, SizeClass};

/// The schema version this build writes and reads. A store written by a
/// newer wpool (a higher version) is refused, never modified.
///
/// Schema 4 added the write-ahead log (`wal/`): a schema 4 store killed
/// while open holds acknowledged changes in its log only, which a wpool
/// that knows schema 3 at most would not replay, so it must refuse the
/// store rather than open it without them. Task records are unchanged.
///
/// Schema 5 logs a claim and an end without the task's input, which the
/// submission logged (a set keeping bytes, see the log's format in `wal.rs`): a wpool that knows
/// schema 4 at most could not replay such a record. Upgrading a schema 4
/// store changes nothing but the version, and its log replays as it is.
///
/// Schema 6 keeps the `finished` index in sled as one value per
/// millisecond of end time (module `finished`); the log and the task
/// records are unchanged. Opening an older store groups its index first,
/// in batches, before the version changes: a crash meanwhile leaves an
/// older store, partly grouped, which the next open finishes grouping.
pub const SCHEMA_VERSION: u32 = 6;

/// Entries of the `finished` index grouped per batch when a store
/// before schema 6 is opened.
const GROUPING_PASS: usize = 10_000;
/// The file beside the database that names the schema version.
const VERSION_FILE: &str = "wpool-store";
/// The file that names the process holding the directory.
const PID_FILE: &str = "wpool.pid";
/// The database's own directory inside the data directory.
const DB_DIR: &str = "sled";
/// Tasks removed per transaction by retention.
const PURGE_BATCH: usize = 256;

/// When writes reach the disk.
///
/// Either way, every write is a record of the store's write-ahead log
/// (`wal/` in the data directory) before sled applies it, and what reached
/// the log is replayed when the store is opened after a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// [`Store::flush`](crate::store::Store::flush) returns once every write before it is on disk
    /// (the log written and `fdatasync`ed). Concurrent callers share one
    /// flush (group commit), so a burst of submissions costs a few
    /// `fdatasync`s, not one each. Writes that no flush follows (state
    /// changes, results) reach the disk within about 100 ms by a
    /// background flush. The default.
    #[default]
    Durable,
    /// [`Store::flush`](crate::store::Store::flush) returns at once; a background thread writes the log
    /// out and `fdatasync`s it every `interval`.
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

/// A durable [`Store`](crate::store::Store) on sled, in a data directory. See the module docs
/// for the layout.
///
/// One process at a time: opening a directory that another process holds
/// fails with [`Error::Store`] naming the directory (and, if it recorded
/// itself, the process).
pub struct SledStore {
    dir: PathBuf,
    db: ::sled::Db,
    trees: Trees,
    /// Serialises every write; holds what those writes keep up to date
    /// (the counts, and what the hot path remembers of the records it
    /// wrote). Changes are logged and applied to sled under it, so the
    /// log's order is sled's, and a reader holding it sees no change
    /// half-applied.
    writes: Arc<Mutex<Writes>>,
    /// The write-ahead log (see [`wal`]).
    wal: Wal,
    /// The changes sled does not hold yet (see [`overlay`]).
    overlay: Arc<Overlay>,
    /// Checkpoints made since the store was opened.
    checkpoints: Arc<AtomicU64>,
    /// Writes the log out (group commit).
    flusher: Flusher,
    sync: SyncMode,
    /// Records of the log replayed when the store was opened.
    replayed: u64,
    /// Inputs and outputs too large for a record.
    payloads: PayloadFiles,
    /// The newest records submitted, until their first change (see
    /// [`submitted`]).
    submitted: submitted::Submitted,
}

/// What the write lock guards beside the order of writes.
#[derive(Debug, Default)]
struct Writes {
    /// The number of tasks in each state, as the `counts` record says.
    counts: Tally,
    /// What `update` needs of the stored record of an unfinished task this
    /// process wrote (see [`Head`]), so that a claim or an end does not read
    /// and decode the record it replaces. Every write of a task record
    /// goes through the write lock and sets or drops its head; a task
    /// without one (written before the store was opened, or past
    /// [`MAX_HEADS`]) is read from the store as before.
    ///
    /// Hashed as the pool's maps of ids are ([`IdHashing`]; ids are made
    /// by the host, never chosen by a client): a claim and an end each
    /// look their task up here and write it back, under the write lock,
    /// and std's SipHash took about 1,100 instructions a task.
    heads: IdMap<Head>,
    /// Modules known to be stored, so that `insert` does not look each
    /// one up again. Dropped by every removal of a module.
    modules: HashSet<ModuleHash, IdHashing>,
    /// No stored task has an id above this one (the key of the newest
    /// task when the store was opened, raised by every insert since;
    /// removals leave it): `insert` looks up a new task's id only when
    /// it is not above it. The ids a process makes only grow (they start
    /// with the time, and [`TaskId::new`] keeps them increasing), so a
    /// submission does not look up its id in sled, under the write lock.
    newest_id: Option<[u8; 16]>,
}

/// What `update` needs of a stored, unfinished task record: its state
/// (the compare of compare-and-set), its sequence number (its index key)
/// and whether its output is a file (then `update` reads the record, to
/// name the file it replaces).
#[derive(Clone, Copy, Debug)]
struct Head {
    state: TaskState,
    seq: u64,
    output_in_file: bool,
}

impl Head {
    /// The head of `task` if it is unfinished: a final task's record is
    /// not updated on the hot path (only removed).
    fn of(task: &TaskRecord) -> Option<Head> {
        (!task.state.is_final()).then_some(Head {
            state: task.state,
            seq: task.seq,
            output_in_file: matches!(task.output, Payload::File { .. }),
        })
    }
}

/// Heads kept at most for tasks submitted (a claimed task's head is kept
/// regardless: running tasks are few). About 40 bytes each: a deep queue
/// costs at most a few MiB, and its oldest tasks, claimed first, are read
/// from the store as before.
const MAX_HEADS: usize = 1 << 16;

impl Writes {
    /// Remembers the head of `task`, just written, or forgets it if the
    /// task is final. `submitted`: keep it only while there is room.
    fn wrote(&mut self, task: &TaskRecord, submitted: bool) {
        match Head::of(task) {
            Some(head) if !submitted || self.heads.len() < MAX_HEADS => {
                self.heads.insert(task.id, head);
            }
            _ => {
                self.heads.remove(&task.id);
            }
        }
    }
}

#[derive(Clone)]
struct Trees {
    tasks: ::sled::Tree,
    unfinished: ::sled::Tree,
    finished: ::sled::Tree,
    keys: ::sled::Tree,
    modules: ::sled::Tree,
    meta: ::sled::Tree,
    module_settings: ::sled::Tree,
}

impl Trees {
    fn get(&self, id: TreeId) -> &::sled::Tree {
        match id {
            TreeId::Tasks => &self.tasks,
            TreeId::Unfinished => &self.unfinished,
            TreeId::Finished => &self.finished,
            TreeId::Keys => &self.keys,
            TreeId::Modules => &self.modules,
            TreeId::Meta => &self.meta,
            TreeId::ModuleSettings => &self.module_settings,
        }
    }
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
        // sled is flushed at the log's checkpoints, not on its own timer:
        // its flush stalls every write while it runs.
        let db = open_db(
            &dir,
            &::sled::Config::new()
                .path(dir.join(DB_DIR))
                .cache_capacity(options.cache_capacity)
                .flush_every_ms(None),
        )?;
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
            module_settings: open_tree("module_settings")?,
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
            // Older stores are read as they are (their task records keep
            // their versions, read with defaults for what later versions
            // added) and marked with this schema, so that an older wpool
            // refuses them rather than misreading the records written from
            // now on.
            Some(version) if version < SCHEMA_VERSION => {
                check_version(&dir, version)?;
                if version < 6 {
                    // Before the log is replayed onto it: the replay
                    // writes the index grouped.
                    let moved = finished::group_entries(&trees.finished, GROUPING_PASS)
                        .and_then(|moved| db.flush().map(|_| moved))
                        .map_err(|e| {
                            Error::Store(format!(
                                "grouping the finished index by millisecond in {} (schema \
                                 {version} to {SCHEMA_VERSION}): {e}; nothing was lost, and the \
                                 next open goes on from where this one stopped",
                                dir.display()
                            ))
                        })?;
                    tracing::info!(entries = moved, "grouped the finished index by millisecond");
                }
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

        // What reached the log and maybe not sled, before anything is read.
        let writes = Arc::new(Mutex::new(Writes::default()));
        let overlay = Arc::new(Overlay::default());
        let checkpoints = Arc::new(AtomicU64::new(0));
        let target = Box::new(CheckpointTarget {
            writes: writes.clone(),
            overlay: overlay.clone(),
            done: checkpoints.clone(),
            trees: trees.clone(),
            db: db.clone(),
        });
        let (wal, mut writer, replayed) = Wal::open(&dir, &db, |id| trees.get(id).clone(), target)?;

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
        let payloads = PayloadFiles::open(&dir, |task| {
            let key = task.to_bytes();
            let record = trees.tasks.get(key).map_err(|e| {
                Error::Store(format!("reading task {task} in {}: {e}", dir.display()))
            })?;
            record.map(|bytes| decode_task(&key, &bytes)).transpose()
        })?;
        let flusher = Flusher::start(Box::new(move || writer.write_out()), flush_every)?;
        let store = SledStore {
            dir,
            db,
            trees,
            writes,
            wal,
            overlay,
            checkpoints,
            flusher,
            sync: options.sync,
            replayed,
            payloads,
            submitted: submitted::Submitted::default(),
        };
        let counts = match counts {
            Some(counts) => counts,
            None => store.recount()?,
        };
        // The newest task, with what the log's replay left in the overlay.
        let newest_id = match store.scan(TreeId::Tasks, Bound::Unbounded, true).next() {
            Some(Ok((key, _))) => Some(task_id("tasks", &key)?.to_bytes()),
            Some(Err(e)) => return Err(store.storage("reading the newest task", e)),
            None => None,
        };
        let mut writes = store.lock_writes();
        writes.counts = counts;
        writes.newest_id = newest_id;
        drop(writes);
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

    /// How many records of the write-ahead log were replayed when the store
    /// was opened: the writes a crash (or a kill) left in the log only.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// How many checkpoints (the log's changes written to sled, sled
    /// flushed, the log's old segments removed) were made since the store
    /// was opened.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// Flushes every write so far to disk, in either [`SyncMode`] (with
    /// group commit, as [`Store::flush`](crate::store::Store::flush) in durable mode).
    pub fn sync(&self) -> Result<()> {
        self.flusher.flush()
    }

    /// How many flushes to disk [`Store::flush`](crate::store::Store::flush) and [`SledStore::sync`]
    /// have made (callers that shared a flush count once).
    pub fn flushes(&self) -> u64 {
        self.flusher.flushes()
    }

    /// What the flushes so far carried (bytes, callers served) and cost.
    pub fn flush_stats(&self) -> FlushStats {
        self.flusher.stats()
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
    /// It holds the write lock throughout, and [`Store::insert`](crate::store::Store::insert) refuses a
    /// task whose module is not stored, so no task can end up naming a
    /// removed module. A module registered but not yet used by any task is
    /// removed too: register it again before submitting by hash.
    pub fn gc_modules(&self) -> Result<u64> {
        let mut writes = self.lock_writes();
        let mut used = HashSet::new();
        for entry in self.scan(TreeId::Tasks, Bound::Unbounded, false) {
            let (key, value) = entry.map_err(|e| self.storage("scanning tasks", e))?;
            used.insert(decode_task(&key, &value)?.module);
        }
        let mut removed = 0;
        let mut change = Change::default();
        for entry in self.scan(TreeId::Modules, Bound::Unbounded, false) {
            let (key, _) = entry.map_err(|e| self.storage("scanning modules", e))?;
            let hash = module_hash(&key)?;
            if !used.contains(&hash) {
                change.remove(TreeId::Modules, key.to_vec());
                removed += 1;
            }
        }
        self.commit(&writes, change)?;
        writes.modules.clear();
        if removed > 0 {
            tracing::debug!(removed, "removed modules no task uses");
        }
        Ok(removed)
    }

    fn lock_writes(&self) -> MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn storage(&self, what: &str, e: ::sled::Error) -> Error {
        Error::Store(format!("{what} in {}: {e}", self.dir.display()))
    }

    /// Logs `change` and takes it into the overlay, under the write lock
    /// (`_writes` proves it is held): from then on every read sees it, and
    /// the next checkpoint writes it to sled.
    fn commit(&self, _writes: &MutexGuard<'_, Writes>, change: Change) -> Result<()> {
        if change.is_empty() {
            return Ok(());
        }
        self.wal.log.append(&change)?;
        self.overlay.apply(change);
        Ok(())
    }

    /// The newest value of `key` in `tree`.
    fn read(&self, tree: TreeId, key: &[u8]) -> Result<Option<::sled::IVec>> {
        match self.overlay.get(tree, key) {
            Some(value) => Ok(value),
            None => self
                .trees
                .get(tree)
                .get(key)
                .map_err(|e| self.storage("reading the database", e)),
        }
    }

    /// Whether `tree` holds `key`.
    fn contains(&self, tree: TreeId, key: &[u8]) -> Result<bool> {
        Ok(self.read(tree, key)?.is_some())
    }

    /// The entries of `tree` (below `below`, if bounded), in key order or
    /// (`rev`) the reverse, with the changes sled does not hold yet.
    fn scan(
        &self,
        tree: TreeId,
        below: Bound<&[u8]>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = ::sled::Result<(::sled::IVec, ::sled::IVec)>> + '_> {
        let overlay = self.overlay.range(tree, Bound::Unbounded, below);
        if tree == TreeId::Finished {
            let groups = finished::entries(self.trees.get(tree), below, rev);
            return Box::new(Merged::new(overlay, groups, rev));
        }
        let range = self
            .trees
            .get(tree)
            .range::<&[u8], _>((Bound::Unbounded, below));
        if rev {
            Box::new(Merged::new(overlay, range.rev(), true))
        } else {
            Box::new(Merged::new(overlay, range, false))
        }
    }

    /// Counts the tasks in each state by reading them all.
    fn recount(&self) -> Result<Tally> {
        let mut counts = Tally::default();
        for entry in self.scan(TreeId::Tasks, Bound::Unbounded, false) {
            let (key, value) = entry.map_err(|e| self.storage("counting tasks", e))?;
            counts.moved(None, Some(decode_task(&key, &value)?.state));
        }
        Ok(counts)
    }

    fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        if let Some(record) = self.submitted.get(id) {
            return Ok(Some(record));
        }
        let key = id.to_bytes();
        match self.read(TreeId::Tasks, &key)? {
            Some(bytes) => Ok(Some(decode_task(&key, &bytes)?)),
            None => Ok(None),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // The log's writer and the checkpoints stop first; then sled takes
        // every change the log holds, and once flushed the log is removed
        // (nothing to replay).
        self.flusher.stop();
        self.wal.stop_checkpoints();
        let written = self
            .overlay
            .drain()
            .iter()
            .try_for_each(|layer| write_layer(layer, |id| self.trees.get(id)))
            .and_then(|()| self.db.flush().map(drop));
        match written {
            Ok(()) => self.wal.remove(),
            Err(e) => tracing::error!(
                dir = %self.dir.display(),
                error = %e,
                "writing the store to sled on close failed; its log is kept and replayed on the \
                 next open"
            ),
        }
    }
}

/// A checkpoint of a [`SledStore`]: its overlay written to sled.
struct CheckpointTarget {
    writes: Arc<Mutex<Writes>>,
    overlay: Arc<Overlay>,
    done: Arc<AtomicU64>,
    trees: Trees,
    db: ::sled::Db,
}

impl Checkpoint for CheckpointTarget {
    fn freeze(&self) -> Arc<Layer> {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.overlay.freeze()
    }

    fn write(&self, frozen: &Layer) -> std::result::Result<(), String> {
        write_layer(frozen, |id| self.trees.get(id))
            .and_then(|()| self.db.flush().map(drop))
            .map_err(|e| e.to_string())
    }

    fn thaw(&self) {
        self.overlay.thaw();
        self.done.fetch_add(1, Ordering::Relaxed);
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

/// How long [`open_db`] waits for a lock that this very process holds.
const OWN_LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens sled's database in `dir`.
///
/// sled lets go of its lock when the last handle of its database is
/// dropped, and its own writer threads hold one for a moment after a
/// flush they made has returned: a store of this process dropped just
/// now (a pool closed and opened again on the same directory) may still
/// hold the lock. A lock that this process holds, per [`PID_FILE`], is
/// therefore waited for up to [`OWN_LOCK_WAIT`]; one that another process
/// holds fails at once.
fn open_db(dir: &Path, config: &::sled::Config) -> Result<::sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e)
                if is_lock_error(&e)
                    && lock_holder(dir) == Some(std::process::id())
                    && started.elapsed() < OWN_LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(open_error(dir, e)),
        }
    }
}

fn is_lock_error(e: &::sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// The process that recorded itself as the directory's last opener.
fn lock_holder(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// sled's error on open, in words: a held lock names the directory and the
/// process that recorded itself there.
fn open_error(dir: &Path, e: ::sled::Error) -> Error {
    if is_lock_error(&e) {
        let holder = lock_holder(dir);
        if holder == Some(std::process::id()) {
            return Error::InUse(format!(
                "the data directory {} is in use by this very process: a store (or a pool) \
                 opened on it earlier is still open. Drop it before opening the directory \
                 again, or use another data directory",
                dir.display()
            ));
        }
        let holder = holder
            .map(|pid| format!(" (process {pid} opened it last, per {PID_FILE})"))
            .unwrap_or_default();
        return Error::InUse(format!(
            "the data directory {} is in use: another wpool process holds the lock on {}{holder}. \
             Stop that process, or use another data directory",
            dir.display(),
            dir.join(DB_DIR).join("db").display()
        ));
    }
    Error::Store(format!("cannot open the store in {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests;
