//! The store's write-ahead log: every change to the database, as the keys
//! it sets and removes, appended to a file and made durable by one
//! `fdatasync` for everyone waiting (group commit). The same change goes
//! into the store's [overlay](super::overlay) in memory, where every read
//! sees it at once; sled receives it only at a checkpoint, with the other
//! changes since the previous one, and is flushed then, off the path that
//! acknowledges work.
//!
//! Why not sled's own transactions and flush: each transaction seals and
//! writes one of sled's I/O buffers (a `pwrite` and a `sync_file_range`
//! per transition, measured), `Db::flush` holds the lock every transaction
//! takes, so while one flush runs no task can be claimed or recorded, and
//! even sled's plain inserts cost a fifth of a task's CPU time when every
//! transition makes them. Atomicity and durability come from this log
//! instead: a change is one record, and a record is either wholly in the
//! log or not at all.
//!
//! # Files
//!
//! `wal/` in the data directory holds segments named by the sequence
//! number of their first record (`00000000000000000042.wal`). A segment is
//! the 8-byte magic `WPWAL\x01\n\0`, the first record's sequence number (8
//! bytes, little-endian), then records:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | length of the body, little-endian |
//! | 4 | CRC-32 of the body |
//! | n | the body: sequence number (8), operation count (4), then per operation its tree (1), kind (1: set, 0: remove, 2: set keeping bytes), key length (4) and key, for a set the value's length (4) and value (for a set keeping bytes, without them), and for a set keeping bytes where they go in the value (4), their length (4) and their CRC-32 (4) |
//!
//! A set keeping bytes (schema 5) leaves out of its record a run of the
//! value that the key's previous value holds at the same offset: a task's
//! input, which no transition changes, is logged with the submission and
//! not again with the claim and the end. Such a record is replayed by
//! taking the bytes from the previous value, as sled or an earlier record
//! holds it, and checking them against the CRC.
//!
//! # Recovery
//!
//! Opening a store replays every segment, in order, onto sled, flushes
//! sled and removes them. Operations are blind sets and removals, so
//! replaying a change that sled already holds changes nothing, and the
//! last record touching a key decides its value, whatever sled had. A set
//! keeping bytes takes them from the key's value as replayed so far; where
//! that value is gone (sled already holds a later removal, when a crash
//! came between a checkpoint's flush and the removal of its segment), the
//! set is passed over, and a later record must decide the key: if none
//! does, the log is damaged.
//! Segments are extended with zeros ahead of their records (see
//! [`Writer`]): zeros after a segment's last record are its end, and the
//! next segment must begin with the sequence number that follows. In the
//! last segment, a record that does not check out and that no good record
//! follows is a write that was never acknowledged (the process died while
//! writing it): it and what follows it are ignored. Anywhere else it is
//! damage, and the store is not opened: the error names the file and the
//! offset.
//!
//! # Checkpoints
//!
//! When the segment being written reaches [`CHECKPOINT_BYTES`], holds
//! writes older than [`CHECKPOINT_EVERY`], or has had none for
//! [`CHECKPOINT_IDLE`], the writer starts a new one and hands the old one
//! to the checkpoint thread. That thread freezes the overlay (under the
//! store's write lock: every change in the old segment is in it), writes
//! the frozen layer to sled with plain inserts and removals, flushes sled,
//! drops the layer and removes the old segment. A failed checkpoint keeps
//! both, and is tried again.
//!
//! # Failure
//!
//! A failed write or `fdatasync` of the log fails the log for good: after
//! a failed `fsync` the kernel may have dropped the pages it could not
//! write, so retrying could report success for data that is gone. Every
//! later write and flush is refused with the first error, and the process
//! must reopen the store (which replays what did reach the log).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::overlay::Layer;
use crate::{Error, Result};

/// The log's directory inside the data directory.
pub(super) const WAL_DIR: &str = "wal";
/// Start a new segment (and a checkpoint) once this many bytes are written
/// to the current one.
pub(super) const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Start a new segment (and a checkpoint) once the current one holds
/// writes this old: it bounds both the log replayed after a crash and the
/// data sled holds unflushed.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Start a new segment (and a checkpoint) once the current one has had no
/// write for this long: an idle store's log is empty, so a restart replays
/// nothing and the data directory holds sled's files alone.
pub(super) const CHECKPOINT_IDLE: Duration = Duration::from_millis(200);

/// The least a segment is extended by, ahead of its records; also the
/// size from which a write-out is not worth extending for.
const EXTEND_MIN: u64 = 64 << 10;
/// The most (a bound on the time one write-out spends writing zeros).
const EXTEND_MAX: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"WPWAL\x01\n\0";
const SEGMENT_HEADER: usize = 16;
const RECORD_HEADER: usize = 8;
const SUFFIX: &str = ".wal";

/// The trees a change can touch, by their number in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TreeId {
    Tasks = 0,
    Unfinished = 1,
    Finished = 2,
    Keys = 3,
    Modules = 4,
    Meta = 5,
    ModuleSettings = 6,
}

impl TreeId {
    /// Every tree, in the order of their numbers.
    pub(super) const ALL: [TreeId; 7] = [
        TreeId::Tasks,
        TreeId::Unfinished,
        TreeId::Finished,
        TreeId::Keys,
        TreeId::Modules,
        TreeId::Meta,
        TreeId::ModuleSettings,
    ];

    fn from_u8(n: u8) -> Option<TreeId> {
        TreeId::ALL.get(usize::from(n)).copied()
    }
}

/// One change to the database: keys set and removed, applied together.
#[derive(Debug, Default)]
pub(super) struct Change {
    ops: Vec<Op>,
}

#[derive(Debug)]
struct Op {
    tree: TreeId,
    key: Vec<u8>,
    /// `None` removes the key.
    value: Option<Vec<u8>>,
    /// Set by [`Change::set_new`]: neither sled nor the overlay holds the
    /// key. Not logged (replay applies every operation to sled anyway).
    new: bool,
    /// Set by [`Change::set_keeping`]: bytes of the value the log leaves
    /// out. In an operation read back from the log, `value` lacks them
    /// until [`Op::restore`] puts them back.
    kept: Option<Kept>,
}

/// A run of a value's bytes that the key's previous value holds at the
/// same offset, so that its log record can leave them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Kept {
    at: u32,
    len: u32,
    crc: u32,
}

impl Kept {
    /// The bytes `range` of `value`; `None` when they are too few to be
    /// worth leaving out (the operation is then logged whole).
    pub(super) fn of(value: &[u8], range: std::ops::Range<usize>) -> Option<Kept> {
        const LEAST: usize = 64;
        let bytes = value.get(range.clone())?;
        if bytes.len() < LEAST {
            return None;
        }
        Some(Kept {
            at: u32::try_from(range.start).ok()?,
            len: u32::try_from(bytes.len()).ok()?,
            crc: crc32fast::hash(bytes),
        })
    }

    fn range(self) -> std::ops::Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

impl Op {
    /// Puts the kept bytes back into an operation read from the log,
    /// taking them from `previous`, the key's previous value.
    fn restore(&mut self, previous: &[u8]) -> std::result::Result<(), &'static str> {
        let (Some(kept), Some(value)) = (self.kept, self.value.as_mut()) else {
            return Ok(());
        };
        let bytes = previous
            .get(kept.range())
            .filter(|bytes| crc32fast::hash(bytes) == kept.crc)
            .ok_or("a record keeping bytes its key's previous value does not hold")?;
        value.splice(kept.at as usize..kept.at as usize, bytes.iter().copied());
        self.kept = None;
        Ok(())
    }
}

/// An operation of a [`Change`], as the overlay takes it.
pub(super) struct OpParts {
    pub(super) tree: TreeId,
    pub(super) key: Vec<u8>,
    /// `None` removes the key.
    pub(super) value: Option<Vec<u8>>,
    /// See [`Change::set_new`].
    pub(super) new: bool,
}

impl Change {
    /// Sets `key` of `tree` to `value`.
    pub(super) fn set(&mut self, tree: TreeId, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: Some(value),
            new: false,
            kept: None,
        });
    }

    /// Sets `key` of the tasks tree to `value`, whose bytes `kept` the
    /// key's present value holds at the same offset (see [`Kept::of`]):
    /// the log leaves them out. Only for the tasks tree, whose records
    /// replay tracks.
    pub(super) fn set_keeping(&mut self, key: impl Into<Vec<u8>>, value: Vec<u8>, kept: Kept) {
        debug_assert!(value.get(kept.range()).is_some());
        self.ops.push(Op {
            tree: TreeId::Tasks,
            key: key.into(),
            value: Some(value),
            new: false,
            kept: Some(kept),
        });
    }

    /// Sets `key` of `tree`, a key the caller knows nothing holds yet
    /// (sled, the overlay, this change): a key made for a new task. If it
    /// is removed again before the next checkpoint, sled is left nothing
    /// to do for it (a task submitted, run and finished between two
    /// checkpoints costs sled no removal of its queue entry).
    pub(super) fn set_new(&mut self, tree: TreeId, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: Some(value),
            new: true,
            kept: None,
        });
    }

    /// Removes `key` of `tree`.
    pub(super) fn remove(&mut self, tree: TreeId, key: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: None,
            new: false,
            kept: None,
        });
    }

    /// Its operations, in order.
    pub(super) fn into_ops(self) -> impl Iterator<Item = OpParts> {
        self.ops.into_iter().map(|op| OpParts {
            tree: op.tree,
            key: op.key,
            value: op.value,
            new: op.new,
        })
    }

    /// Whether it changes nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies a change read from the log to sled's trees, in order. A set
    /// keeping bytes takes them from the key's value in sled; if sled holds
    /// none, it is passed over (the replay's check found a later record
    /// that decides the key).
    fn apply<'a>(
        self,
        tree: impl Fn(TreeId) -> &'a ::sled::Tree,
    ) -> std::result::Result<(), Apply> {
        for mut op in self.ops {
            let tree = tree(op.tree);
            if op.tree == TreeId::Finished {
                super::finished::write_one(tree, &op.key, op.value.is_some())
                    .map_err(Apply::Sled)?;
                continue;
            }
            if op.kept.is_some() {
                match tree.get(&op.key[..]).map_err(Apply::Sled)? {
                    Some(previous) => op.restore(&previous).map_err(Apply::Bad)?,
                    None => continue,
                }
            }
            match &op.value {
                Some(value) => {
                    tree.insert(&op.key[..], &value[..]).map_err(Apply::Sled)?;
                }
                None => {
                    tree.remove(&op.key[..]).map_err(Apply::Sled)?;
                }
            }
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        12 + self
            .ops
            .iter()
            .map(|op| {
                // A set keeping bytes leaves them out, and says where
                // they go (12 bytes).
                let value = match (&op.value, op.kept) {
                    (None, _) => 0,
                    (Some(v), None) => 4 + v.len(),
                    (Some(v), Some(kept)) => 4 + v.len() - kept.len as usize + 12,
                };
                6 + op.key.len() + value
            })
            .sum::<usize>()
    }

    /// Appends it to `out` as the record `seq`.
    fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        let len = self.encoded_len();
        out.reserve(RECORD_HEADER + len);
        let start = out.len();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            out.push(op.tree as u8);
            out.push(match (&op.value, op.kept) {
                (None, _) => 0,
                (Some(_), None) => 1,
                (Some(_), Some(_)) => 2,
            });
            out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&op.key);
            match (&op.value, op.kept) {
                (None, _) => {}
                (Some(value), None) => {
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(value);
                }
                (Some(value), Some(kept)) => {
                    let range = kept.range();
                    out.extend_from_slice(&((value.len() - range.len()) as u32).to_le_bytes());
                    out.extend_from_slice(&value[..range.start]);
                    out.extend_from_slice(&value[range.end..]);
                    out.extend_from_slice(&kept.at.to_le_bytes());
                    out.extend_from_slice(&kept.len.to_le_bytes());
                    out.extend_from_slice(&kept.crc.to_le_bytes());
                }
            }
        }
        let body = start + RECORD_HEADER;
        let crc = crc32fast::hash(&out[body..]);
        out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    }

    /// The change in a record's body, and its sequence number.
    fn decode(body: &[u8]) -> std::result::Result<(u64, Change), &'static str> {
        let mut r = Reader(body);
        let seq = r.u64()?;
        let count = r.u32()? as usize;
        let mut ops = Vec::with_capacity(count.min(body.len() / 6));
        for _ in 0..count {
            let tree = TreeId::from_u8(r.u8()?).ok_or("an unknown tree")?;
            let kind = r.u8()?;
            if kind > 2 {
                return Err("an unknown operation");
            }
            let key = r.bytes()?.to_vec();
            let value = if kind > 0 {
                Some(r.bytes()?.to_vec())
            } else {
                None
            };
            let kept = if kind == 2 {
                let kept = Kept {
                    at: r.u32()?,
                    len: r.u32()?,
                    crc: r.u32()?,
                };
                if tree != TreeId::Tasks
                    || value.as_ref().is_none_or(|v| kept.at as usize > v.len())
                {
                    return Err("an operation keeping bytes it cannot hold");
                }
                Some(kept)
            } else {
                None
            };
            ops.push(Op {
                tree,
                key,
                value,
                new: false,
                kept,
            });
        }
        if !r.0.is_empty() {
            return Err("bytes after its last operation");
        }
        Ok((seq, Change { ops }))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a truncated operation");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], &'static str> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The log as writers see it: changes are appended to a buffer in memory,
/// which the [`Writer`] writes out.
#[derive(Debug)]
pub(super) struct Log {
    dir: PathBuf,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The sequence number of the next record.
    seq: u64,
    /// Set when a write or `fdatasync` of the log failed: the first error.
    failed: Option<String>,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `change` to the log (in memory, until the next write-out).
    /// Callers append in the order they apply changes to sled.
    pub(super) fn append(&self, change: &Change) -> Result<()> {
        let mut pending = self.lock();
        if let Some(e) = &pending.failed {
            return Err(self.failed_error(e));
        }
        let seq = pending.seq;
        pending.seq += 1;
        change.encode(seq, &mut pending.bytes);
        Ok(())
    }

    fn failed_error(&self, e: &str) -> Error {
        Error::Store(format!(
            "the store's write-ahead log in {} failed ({e}); nothing more can be made durable. \
             Restart the process: reopening the store replays what reached the log",
            self.dir.display()
        ))
    }
}

/// The write-ahead log of a store: its writers' side ([`Log`]) and the
/// checkpoint thread. The [`Writer`] that writes it out belongs to the
/// flushing thread.
pub(super) struct Wal {
    pub(super) log: Arc<Log>,
    checkpoints: Checkpoints,
}

impl Wal {
    /// Replays the log found in `data_dir` onto `db` (see the module docs),
    /// flushes sled and removes the replayed segments, then starts a new
    /// segment, and the checkpoint thread that writes `target`'s changes
    /// to sled. Returns the log, its writer and the number of records
    /// replayed.
    pub(super) fn open(
        data_dir: &Path,
        db: &::sled::Db,
        tree: impl Fn(TreeId) -> ::sled::Tree,
        target: Box<dyn Checkpoint>,
    ) -> Result<(Wal, Writer, u64)> {
        let dir = data_dir.join(WAL_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let segments = segments(&dir)?;
        let mut total = 0u64;
        let trees: Vec<::sled::Tree> = TreeId::ALL.iter().map(|t| tree(*t)).collect();
        let damaged = |path: &Path, at: usize, why: &str| {
            Error::Store(format!(
                "the store's write-ahead log {} is damaged at byte {at} ({why}), before its end: \
                 the writes it holds from there on cannot be replayed, and the store was not \
                 opened (nothing was modified). To open it without them (they may include \
                 acknowledged work), move that file and the later ones out of {}",
                path.display(),
                dir.display()
            ))
        };
        // Checked whole before anything is applied: a damaged log leaves
        // the store as it was.
        let mut check = ReplayCheck {
            tasks: &trees[TreeId::Tasks as usize],
            known: HashMap::new(),
        };
        for apply in [false, true] {
            let mut next_seq: Option<u64> = None;
            let mut replayed = 0u64;
            for (i, (first, path)) in segments.iter().enumerate() {
                let last_segment = i + 1 == segments.len();
                let bytes = std::fs::read(path).map_err(|e| io_error("read", path, &e))?;
                let (records, seq) =
                    replay_segment(&bytes, *first, next_seq, last_segment, |c, at| {
                        if apply {
                            c.apply(|t| &trees[t as usize])
                        } else {
                            check.check(c, i, at)
                        }
                    })
                    .map_err(|bad| match bad {
                        Replay::Damaged(at, why) => damaged(path, at, why),
                        Replay::Sled(e) => Error::Store(format!(
                            "replaying the write-ahead log {} onto sled: {e}",
                            path.display()
                        )),
                    })?;
                replayed += records;
                next_seq = seq.or(next_seq);
            }
            if let Some((segment, at)) = check.undecided() {
                return Err(damaged(
                    &segments[segment].1,
                    at,
                    "a record keeping bytes of a task whose value neither the store nor the log \
                     holds",
                ));
            }
            total = replayed;
        }
        if !segments.is_empty() {
            db.flush()
                .map_err(|e| Error::Store(format!("flushing the replayed log to sled: {e}")))?;
            for (_, path) in &segments {
                std::fs::remove_file(path).map_err(|e| io_error("remove", path, &e))?;
            }
            sync_dir(&dir)?;
            if total > 0 {
                tracing::info!(records = total, "replayed the store's write-ahead log");
            }
        }
        let log = Arc::new(Log {
            dir: dir.clone(),
            pending: Mutex::new(Pending::default()),
        });
        let checkpoints = Checkpoints::start(dir.clone(), target)?;
        let writer = Writer::create(log.clone(), 0, checkpoints.sender(), 0)?;
        Ok((Wal { log, checkpoints }, writer, total))
    }

    /// Stops the checkpoint thread (once the writer is gone).
    pub(super) fn stop_checkpoints(&mut self) {
        self.checkpoints.stop();
    }

    /// Removes the log's segments, once sled holds every change: a clean
    /// close leaves nothing to replay.
    pub(super) fn remove(&mut self) {
        let dir = &self.log.dir;
        let removed = segments(dir).and_then(|segments| {
            for (_, path) in segments {
                std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, &e))?;
            }
            sync_dir(dir)
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing the write-ahead log on close");
        }
    }
}

/// Why a change read from the log cannot be applied.
enum Apply {
    /// sled refused it.
    Sled(::sled::Error),
    /// It does not fit what the store holds.
    Bad(&'static str),
}

/// What the check before a replay knows of a key of the tasks tree.
enum Known {
    /// Its value, as the records so far leave it.
    Value(Vec<u8>),
    /// Removed by a record so far.
    Removed,
    /// Set by a record keeping bytes when it had no value (at this segment
    /// and offset): a later record must decide it.
    Undecided(usize, usize),
}

/// The check of a log before it is replayed, for what a record's bytes
/// alone cannot show: that every set keeping bytes finds them in the value
/// the key has when it is replayed (from an earlier record, or from sled),
/// or is followed by a record that decides the key.
struct ReplayCheck<'a> {
    tasks: &'a ::sled::Tree,
    known: HashMap<Vec<u8>, Known>,
}

impl ReplayCheck<'_> {
    /// Checks the record at offset `at` of segment `segment`.
    fn check(
        &mut self,
        change: Change,
        segment: usize,
        at: usize,
    ) -> std::result::Result<(), Apply> {
        for mut op in change.ops {
            if op.tree != TreeId::Tasks {
                continue;
            }
            if op.kept.is_some() {
                let restored = match self.known.get(&op.key) {
                    Some(Known::Value(previous)) => Some(op.restore(previous)),
                    Some(Known::Removed | Known::Undecided(..)) => None,
                    None => self
                        .tasks
                        .get(&op.key[..])
                        .map_err(Apply::Sled)?
                        .map(|previous| op.restore(&previous)),
                };
                match restored {
                    Some(restored) => restored.map_err(Apply::Bad)?,
                    None => {
                        self.known
                            .entry(op.key)
                            .and_modify(|known| {
                                if !matches!(known, Known::Undecided(..)) {
                                    *known = Known::Undecided(segment, at);
                                }
                            })
                            .or_insert(Known::Undecided(segment, at));
                        continue;
                    }
                }
            }
            let known = match op.value {
                Some(value) => Known::Value(value),
                None => Known::Removed,
            };
            self.known.insert(op.key, known);
        }
        Ok(())
    }

    /// The first record keeping bytes that no later record decided.
    fn undecided(&self) -> Option<(usize, usize)> {
        self.known
            .values()
            .filter_map(|known| match known {
                Known::Undecided(segment, at) => Some((*segment, *at)),
                _ => None,
            })
            .min()
    }
}

/// Why a segment cannot be replayed.
enum Replay {
    /// Damage at this offset, for this reason.
    Damaged(usize, &'static str),
    /// sled refused a change.
    Sled(::sled::Error),
}

/// Checks the segment `bytes` named `first` and gives each of its records
/// to `apply`, in order; `expected` is the sequence number the previous
/// segment ended before. The number of records and the sequence number
/// after the last (`None` for an empty file left by a crash).
fn replay_segment(
    bytes: &[u8],
    first: u64,
    expected: Option<u64>,
    last_segment: bool,
    mut apply: impl FnMut(Change, usize) -> std::result::Result<(), Apply>,
) -> std::result::Result<(u64, Option<u64>), Replay> {
    if bytes.len() < SEGMENT_HEADER || &bytes[..8] != MAGIC {
        if last_segment && (bytes.len() < SEGMENT_HEADER || bytes.iter().all(|b| *b == 0)) {
            // Created, its header not written: a crash right after a new
            // segment was started.
            return Ok((0, None));
        }
        return Err(Replay::Damaged(0, "not a segment of wpool's log"));
    }
    let header_seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    if header_seq != first {
        return Err(Replay::Damaged(
            8,
            "its first sequence number is not its name's",
        ));
    }
    if expected.is_some_and(|expected| expected != header_seq) {
        return Err(Replay::Damaged(
            8,
            "it does not follow the previous segment: records are missing between them",
        ));
    }
    let mut seq = header_seq;
    let mut at = SEGMENT_HEADER;
    let mut records = 0;
    while at < bytes.len() {
        match record_at(bytes, at, seq) {
            Ok((end, change)) => {
                apply(change, at).map_err(|e| match e {
                    Apply::Sled(e) => Replay::Sled(e),
                    Apply::Bad(why) => Replay::Damaged(at, why),
                })?;
                records += 1;
                seq += 1;
                at = end;
            }
            // The zeros a segment is extended with, after its last
            // record: its end. (Records lost from the end of a segment
            // other than the last are caught by the next one's first
            // sequence number.)
            Err(_) if bytes[at..].iter().all(|b| *b == 0) => break,
            Err(bad) if last_segment && !later_record(bytes, at, seq) => {
                tracing::warn!(
                    offset = at,
                    why = bad.why,
                    "ignored the end of the write-ahead log: a write the process did not \
                     finish, so never acknowledged"
                );
                break;
            }
            Err(bad) => return Err(Replay::Damaged(at, bad.why)),
        }
    }
    Ok((records, Some(seq)))
}

/// Why the bytes at some offset of a segment are not the record expected
/// there.
#[derive(Debug, PartialEq, Eq)]
struct BadRecord {
    why: &'static str,
}

/// Whether a record that checks out, numbered `seq` or later, starts
/// anywhere after `at` in `bytes`.
///
/// It tells damage from the tail of a write the process did not finish
/// (the last segment's bad record at `at`): records are acknowledged only
/// once every byte before them is on disk, so an unfinished write is
/// followed by nothing acknowledged, whatever it left (a record cut short,
/// zeros, or parts of it written out of order, inside the zeros a segment
/// is extended with); a bad record followed by a later good one lost
/// acknowledged work in between.
fn later_record(bytes: &[u8], at: usize, seq: u64) -> bool {
    (at + 1..bytes.len().saturating_sub(RECORD_HEADER + 8)).any(|from| {
        let len = u32::from_le_bytes(bytes[from..from + 4].try_into().unwrap_or_default()) as usize;
        let Some(body) = bytes.get(from + RECORD_HEADER..from + RECORD_HEADER + len) else {
            return false;
        };
        // The sequence number first, a cheap test that garbage fails.
        let found = u64::from_le_bytes(
            body.get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        let crc = u32::from_le_bytes(bytes[from + 4..from + 8].try_into().unwrap_or_default());
        len >= 8 && found >= seq && found - seq < 1 << 32 && crc32fast::hash(body) == crc
    })
}

/// The record at `at` of a segment, if it checks out and is number `seq`:
/// where it ends, and its change.
fn record_at(bytes: &[u8], at: usize, seq: u64) -> std::result::Result<(usize, Change), BadRecord> {
    let bad = |why| BadRecord { why };
    let header = bytes
        .get(at..at + RECORD_HEADER)
        .ok_or(bad("a truncated record header"))?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
    let end = at + RECORD_HEADER + len;
    if len == 0 {
        return Err(bad("an empty record"));
    }
    let body = bytes
        .get(at + RECORD_HEADER..end)
        .ok_or(bad("a truncated record"))?;
    if crc32fast::hash(body) != crc {
        return Err(bad("a record whose checksum does not match"));
    }
    let (found, change) = Change::decode(body).map_err(bad)?;
    if found != seq {
        return Err(bad("a record out of sequence"));
    }
    Ok((end, change))
}

/// The segments in `dir`, by their first sequence number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, &e))? {
        let entry = entry.map_err(|e| io_error("list", dir, &e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, &e))
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Store(format!(
        "cannot {what} {} (the store's write-ahead log): {e}",
        path.display()
    ))
}

/// Writes the log out: owned by the flushing thread, the only one that
/// touches the segment files while the store is open.
pub(super) struct Writer {
    log: Arc<Log>,
    file: File,
    path: PathBuf,
    /// Bytes of records in the current segment.
    written: u64,
    /// The offset up to which the file is written (its header, records,
    /// then zeros): records written below it need no change of the file's
    /// size or blocks, so their `fdatasync` writes no metadata.
    allocated: u64,
    /// Bytes of records the previous segment received: how far a new one
    /// is extended at its first write.
    previous: u64,
    /// When the current segment received its first record.
    first_write: Option<Instant>,
    /// When it received its last.
    last_write: Instant,
    /// The buffer swapped with the log's, so neither reallocates.
    spare: Vec<u8>,
    closed: Sender<PathBuf>,
}

impl Writer {
    fn create(log: Arc<Log>, seq: u64, closed: Sender<PathBuf>, previous: u64) -> Result<Writer> {
        let path = segment_path(&log.dir, seq);
        let mut file = File::create(&path).map_err(|e| io_error("create", &path, &e))?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&seq.to_le_bytes());
        file.write_all(&header)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error("write", &path, &e))?;
        sync_dir(&log.dir)?;
        Ok(Writer {
            log,
            file,
            path,
            written: 0,
            allocated: SEGMENT_HEADER as u64,
            previous,
            first_write: None,
            last_write: Instant::now(),
            spare: Vec::new(),
            closed,
        })
    }

    /// Writes out and `fdatasync`s every change appended so far; starts a
    /// new segment when one is due. Returns the bytes written.
    pub(super) fn write_out(&mut self) -> std::result::Result<u64, String> {
        let next_seq = {
            let mut pending = self.log.lock();
            if let Some(e) = &pending.failed {
                return Err(e.clone());
            }
            std::mem::swap(&mut pending.bytes, &mut self.spare);
            pending.seq
        };
        if self.spare.is_empty() {
            if self.written > 0 && self.last_write.elapsed() >= CHECKPOINT_IDLE {
                self.rotate(next_seq)?;
            }
            return Ok(0);
        }
        let written = self.write_records().and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let e = format!("writing {}: {e}", self.path.display());
            self.log.lock().failed = Some(e.clone());
            return Err(e);
        }
        let n = self.spare.len() as u64;
        self.spare.clear();
        // Don't keep a burst's buffer for ever.
        if self.spare.capacity() > 4 << 20 {
            self.spare = Vec::new();
        }
        self.written += n;
        self.last_write = Instant::now();
        let first_write = *self.first_write.get_or_insert_with(Instant::now);
        if self.written >= CHECKPOINT_BYTES || first_write.elapsed() >= CHECKPOINT_EVERY {
            self.rotate(next_seq)?;
        }
        Ok(n)
    }

    /// Writes the records in `spare` after the segment's last, extending
    /// the file with zeros well past them first when they would not fit
    /// in what is written already.
    ///
    /// Why zeros ahead: an `fdatasync` after a write that grows a file
    /// must also commit the file's new size and blocks (on ext4, a journal
    /// commit), and one after a write into blocks the file already has
    /// need not. Measured here, 6 KB written and `fdatasync`ed took 302
    /// µs growing the file and 150 µs inside it (PostgreSQL fills its new
    /// WAL segments with zeros for the same reason). The extension is
    /// sized by the segment's records so far (or the previous segment's),
    /// between [`EXTEND_MIN`] and [`EXTEND_MAX`], so an idle store writes
    /// little and a busy one extends rarely. A write-out of
    /// [`EXTEND_MIN`] or more just grows the file: its own bytes outweigh
    /// the metadata, and zeros ahead of large writes would double what
    /// the disk receives. Replay reads zeros after the last record as the
    /// end of a segment.
    fn write_records(&mut self) -> std::io::Result<()> {
        let at = SEGMENT_HEADER as u64 + self.written;
        let len = self.spare.len() as u64;
        let end = at + len;
        self.file.write_all_at(&self.spare, at)?;
        if end > self.allocated {
            self.allocated = if len >= EXTEND_MIN {
                end
            } else {
                let extend = self
                    .written
                    .max(self.previous)
                    .clamp(EXTEND_MIN, EXTEND_MAX);
                let target = (end + extend).next_multiple_of(4096);
                write_zeros(&self.file, end, target)?;
                target
            };
        }
        Ok(())
    }

    /// Starts the segment whose first record is `seq`, and hands the
    /// current one to the checkpoint thread.
    fn rotate(&mut self, seq: u64) -> std::result::Result<(), String> {
        let previous = self.written;
        match Writer::create(self.log.clone(), seq, self.closed.clone(), previous) {
            Ok(next) => {
                let old = std::mem::replace(self, next);
                // The thread is gone only when the store closes, which
                // flushes sled and removes every segment itself.
                let _ = old.closed.send(old.path.clone());
                Ok(())
            }
            Err(e) => {
                // The current segment stays in use: nothing is lost, the
                // checkpoint waits for the next try.
                tracing::warn!(error = %e, "cannot start a new segment of the write-ahead log");
                Ok(())
            }
        }
    }
}

/// Writes zeros to `file` from `from` up to `to`.
fn write_zeros(file: &File, mut from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], from)?;
        from += n;
    }
    Ok(())
}

/// What a checkpoint does to the store (see the module docs).
pub(super) trait Checkpoint: Send {
    /// Sets aside the changes made so far, once none is half made (it
    /// takes the store's write lock), and returns them; those set aside
    /// before and not yet written, if any.
    fn freeze(&self) -> Arc<Layer>;
    /// Writes them to sled and flushes it.
    fn write(&self, frozen: &Layer) -> std::result::Result<(), String>;
    /// Forgets them: sled holds them.
    fn thaw(&self);
}

/// The checkpoint thread: writes the changes to sled, flushes it, and
/// removes the segments it no longer needs.
struct Checkpoints {
    closed: Option<Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    fn start(dir: PathBuf, target: Box<dyn Checkpoint>) -> Result<Checkpoints> {
        let (closed, receive) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wpool-checkpoint".into())
            .spawn(move || checkpoints(&receive, &*target, &dir))
            .map_err(|e| Error::Store(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpoints {
            closed: Some(closed),
            thread: Some(thread),
        })
    }

    fn sender(&self) -> Sender<PathBuf> {
        self.closed
            .clone()
            .expect("the checkpoint thread runs while the store is open")
    }

    fn stop(&mut self) {
        self.closed = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a failed checkpoint waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

fn checkpoints(receive: &Receiver<PathBuf>, target: &dyn Checkpoint, dir: &Path) {
    // Segments closed and not yet covered by a frozen layer.
    let mut closed = Vec::new();
    // The frozen layer and the segments it covers: every change in them
    // was made before it was frozen.
    let mut frozen: Option<(Arc<Layer>, Vec<PathBuf>)> = None;
    loop {
        if frozen.is_none() && closed.is_empty() {
            match receive.recv() {
                Ok(path) => closed.push(path),
                Err(_) => return,
            }
        }
        closed.extend(receive.try_iter());
        let (layer, covered) =
            frozen.get_or_insert_with(|| (target.freeze(), std::mem::take(&mut closed)));
        let started = Instant::now();
        if let Err(e) = target.write(layer) {
            tracing::error!(error = %e, "checkpoint failed; the log is kept, and it is tried again");
            match receive.recv_timeout(RETRY) {
                Ok(path) => closed.push(path),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        target.thaw();
        // Oldest first, so that a crash midway leaves a run of segments
        // that follow one another.
        covered.sort();
        let mut removed = 0;
        for path in covered.iter() {
            match std::fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "checkpoint: cannot remove");
                    break;
                }
            }
        }
        // What could not be removed is covered by the next checkpoint.
        closed.extend(covered.drain(removed..));
        frozen = None;
        if let Err(e) = sync_dir(dir) {
            tracing::warn!(error = %e, "checkpoint");
        }
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            segments = removed,
            "checkpoint"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8) -> Change {
        let mut change = Change::default();
        change.set(TreeId::Tasks, vec![n; 16], vec![n; 40]);
        change.remove(TreeId::Unfinished, vec![n; 24]);
        change
    }

    #[test]
    fn records_round_trip_and_check_their_place() {
        let mut out = Vec::new();
        change(1).encode(7, &mut out);
        change(2).encode(8, &mut out);
        let (end, first) = record_at(&out, 0, 7).unwrap();
        assert_eq!(first.ops.len(), 2);
        assert_eq!(first.ops[0].value.as_deref(), Some(&[1; 40][..]));
        assert_eq!(first.ops[1].value, None);
        let (last, second) = record_at(&out, end, 8).unwrap();
        assert_eq!(last, out.len());
        assert_eq!(second.ops[0].key, vec![2; 16]);
        let out_of_sequence = record_at(&out, end, 9).unwrap_err();
        assert_eq!(out_of_sequence.why, "a record out of sequence");
        let mut damaged = out.clone();
        damaged[end + 20] ^= 1;
        let flipped = record_at(&damaged, end, 8).unwrap_err();
        assert_eq!(flipped.why, "a record whose checksum does not match");
        let cut = record_at(&out[..out.len() - 1], end, 8).unwrap_err();
        assert_eq!(cut.why, "a truncated record");
    }

    /// A value of the tasks tree whose bytes 8..108 are `fill`.
    fn task_value(fill: u8, tail: u8) -> Vec<u8> {
        let mut value = vec![tail; 8];
        value.extend_from_slice(&[fill; 100]);
        value.extend_from_slice(&[tail; 20]);
        value
    }

    /// The change setting `key` to `value`, keeping its bytes 8..108.
    fn keeping(key: u8, value: &[u8]) -> Change {
        let mut change = Change::default();
        let kept = Kept::of(value, 8..108).unwrap();
        change.set_keeping(vec![key; 16], value.to_vec(), kept);
        change
    }

    /// Encodes `changes` and reads them back, as a replay does.
    fn logged(changes: &[Change]) -> Vec<(Change, usize)> {
        let mut bytes = Vec::new();
        for (seq, change) in changes.iter().enumerate() {
            change.encode(seq as u64, &mut bytes);
        }
        let mut at = 0;
        let mut read = Vec::new();
        for seq in 0.. {
            if at == bytes.len() {
                break;
            }
            let (end, change) = record_at(&bytes, at, seq).unwrap();
            read.push((change, at));
            at = end;
        }
        read
    }

    /// Replays `changes` as opening a store does: checks them all, then
    /// applies them if they pass. The first record left undecided (and
    /// nothing applied), or why one does not fit.
    fn replay_onto(
        tasks: &::sled::Tree,
        changes: &[Change],
    ) -> std::result::Result<Option<usize>, &'static str> {
        let mut check = ReplayCheck {
            tasks,
            known: HashMap::new(),
        };
        for (change, at) in logged(changes) {
            match check.check(change, 0, at) {
                Err(Apply::Bad(why)) => return Err(why),
                Err(Apply::Sled(e)) => panic!("{e}"),
                Ok(()) => {}
            }
        }
        if let Some((_, at)) = check.undecided() {
            return Ok(Some(at));
        }
        for (change, _) in logged(changes) {
            match change.apply(|_| tasks) {
                Err(Apply::Bad(why)) => return Err(why),
                Err(Apply::Sled(e)) => panic!("{e}"),
                Ok(()) => {}
            }
        }
        Ok(None)
    }

    #[test]
    fn a_set_keeping_bytes_is_logged_without_them_and_replayed_with_them() {
        let db = ::sled::Config::new().temporary(true).open().unwrap();
        let tasks = db.open_tree("tasks").unwrap();
        let first = task_value(1, 2);
        let second = task_value(1, 3);

        // Logged without the kept bytes: the record is 100 bytes shorter
        // than the same set logged whole.
        let mut whole = Vec::new();
        let mut plain = Change::default();
        plain.set(TreeId::Tasks, vec![9; 16], second.clone());
        plain.encode(0, &mut whole);
        let mut short = Vec::new();
        keeping(9, &second).encode(0, &mut short);
        assert_eq!(whole.len() - short.len(), 100 - 12);
        let (_, read) = record_at(&short, 0, 0).unwrap();
        assert_eq!(
            read.ops[0].value.as_ref().unwrap().len(),
            second.len() - 100
        );

        // The bytes from sled's value.
        tasks.insert([9; 16], first.clone()).unwrap();
        assert_eq!(replay_onto(&tasks, &[keeping(9, &second)]), Ok(None));
        assert_eq!(tasks.get([9; 16]).unwrap().unwrap(), second);

        // From an earlier record, sled holding nothing.
        let mut set = Change::default();
        set.set(TreeId::Tasks, vec![8; 16], first.clone());
        assert_eq!(replay_onto(&tasks, &[set, keeping(8, &second)]), Ok(None));
        assert_eq!(tasks.get([8; 16]).unwrap().unwrap(), second);

        // Nothing holds the key, and a later record removes it (sled held
        // that removal already): passed over.
        let mut removed = Change::default();
        removed.remove(TreeId::Tasks, vec![7; 16]);
        assert_eq!(
            replay_onto(&tasks, &[keeping(7, &second), removed]),
            Ok(None)
        );
        assert_eq!(tasks.get([7; 16]).unwrap(), None);

        // Nothing holds it and nothing decides it: the record's offset.
        let undecided = replay_onto(&tasks, &[keeping(9, &second), keeping(6, &second)]);
        assert!(matches!(undecided, Ok(Some(at)) if at > 0), "{undecided:?}");

        // The previous value holds other bytes there: damage.
        let other = task_value(4, 2);
        assert_eq!(
            replay_onto(&tasks, &[keeping(9, &other)]),
            Err("a record keeping bytes its key's previous value does not hold")
        );

        // Too few bytes to leave out; out of the value: logged whole.
        assert_eq!(Kept::of(&second, 8..40), None);
        assert_eq!(Kept::of(&second, 100..200), None);
    }

    /// A segment whose first record is 7, holding records 7, 8 and 9, and
    /// where each starts.
    fn segment() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        let mut starts = Vec::new();
        for n in 7..10u8 {
            starts.push(bytes.len());
            change(n).encode(u64::from(n), &mut bytes);
        }
        (bytes, starts)
    }

    /// What replaying `bytes` as the last segment, and as another, gives:
    /// the records replayed, or the offset of the damage.
    fn replay(bytes: &[u8]) -> [std::result::Result<u64, usize>; 2] {
        [true, false].map(
            |last| match replay_segment(bytes, 7, Some(7), last, |_, _| Ok(())) {
                Ok((records, _)) => Ok(records),
                Err(Replay::Damaged(at, _)) => Err(at),
                Err(Replay::Sled(e)) => panic!("{e}"),
            },
        )
    }

    #[test]
    fn replay_ends_at_the_zeros_and_tells_an_unfinished_write_from_damage() {
        let (whole, starts) = segment();
        let mut zeros = whole.clone();
        zeros.resize(whole.len() + 5000, 0);
        // Records, then the zeros a segment is extended with: the end, in
        // any segment.
        assert_eq!(replay(&whole), [Ok(3), Ok(3)]);
        assert_eq!(replay(&zeros), [Ok(3), Ok(3)]);

        // The last record cut short, at the end of the file or in the
        // zeros: an unfinished write in the last segment, damage in
        // another (every write to it was flushed before the next began).
        let cut = &whole[..whole.len() - 3];
        assert_eq!(replay(cut), [Ok(2), Err(starts[2])]);
        let mut cut_in_zeros = zeros.clone();
        cut_in_zeros[whole.len() - 3..whole.len()].fill(0);
        assert_eq!(replay(&cut_in_zeros), [Ok(2), Err(starts[2])]);

        // The last record's checksum wrong, nothing after it: unfinished.
        let mut flipped_last = zeros.clone();
        flipped_last[starts[2] + 12] ^= 1;
        assert_eq!(replay(&flipped_last), [Ok(2), Err(starts[2])]);

        // A bad record that a good one follows: acknowledged work was
        // lost, in any segment. Whether flipped or zeroed.
        let mut flipped = zeros.clone();
        flipped[starts[1] + 12] ^= 1;
        assert_eq!(replay(&flipped), [Err(starts[1]), Err(starts[1])]);
        let mut hole = zeros.clone();
        hole[starts[1]..starts[2]].fill(0);
        assert_eq!(replay(&hole), [Err(starts[1]), Err(starts[1])]);
        // Garbage after the last record, not zeros: no later record, so
        // the tail of a write in the last segment.
        let mut garbage = zeros;
        garbage[whole.len() + 100..whole.len() + 200].fill(0xa5);
        assert_eq!(replay(&garbage), [Ok(3), Err(whole.len())]);
    }

    #[test]
    fn the_writer_extends_its_segment_with_zeros_and_replay_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log {
            dir: dir.path().to_path_buf(),
            pending: Mutex::new(Pending::default()),
        });
        let (closed, _receive) = std::sync::mpsc::channel();
        let mut writer = Writer::create(log.clone(), 0, closed, 0).unwrap();
        let path = writer.path.clone();
        let mut expected = 0u64;
        for round in 0..50u8 {
            for n in 0..=round % 7 {
                log.append(&change(n)).unwrap();
                expected += 1;
            }
            assert!(writer.write_out().unwrap() > 0);
            let len = std::fs::metadata(&path).unwrap().len();
            // Ahead of the records by at least the least extension, until
            // the next one; in whole pages.
            assert_eq!(len % 4096, 0);
            assert!(len >= SEGMENT_HEADER as u64 + writer.written, "{len}");
            assert_eq!(writer.allocated, len);
            let bytes = std::fs::read(&path).unwrap();
            let replayed = replay_segment(&bytes, 0, None, true, |_, _| Ok(()))
                .unwrap_or_else(|_| panic!("damaged"));
            assert_eq!(replayed, (expected, Some(expected)));
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len >= EXTEND_MIN, "{len}");
        // Few extensions: the segment's size was written a handful of
        // times, not once per write-out.
        assert!(
            len < SEGMENT_HEADER as u64 + writer.written + 2 * EXTEND_MIN + 4096,
            "{len}"
        );

        // A large write-out past the zeros grows the file by itself only,
        // and the next small one extends it again.
        let large = (EXTEND_MIN + len) as usize / 100;
        for _ in 0..large {
            log.append(&change(9)).unwrap();
        }
        expected += large as u64;
        writer.write_out().unwrap();
        let grown = std::fs::metadata(&path).unwrap().len();
        assert_eq!(grown, SEGMENT_HEADER as u64 + writer.written);
        log.append(&change(1)).unwrap();
        expected += 1;
        writer.write_out().unwrap();
        let extended = std::fs::metadata(&path).unwrap().len();
        assert!(extended >= grown + EXTEND_MIN, "{extended}");
        let bytes = std::fs::read(&path).unwrap();
        let replayed = replay_segment(&bytes, 0, None, true, |_, _| Ok(()))
            .unwrap_or_else(|_| panic!("damaged"));
        assert_eq!(replayed, (expected, Some(expected)));
    }
}
