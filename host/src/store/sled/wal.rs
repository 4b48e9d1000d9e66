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
//! | n | the body: sequence number (8), operation count (4), then per operation its tree (1), kind (1: set, 0: remove), key length (4) and key, and for a set the value's length (4) and value |
//!
//! # Recovery
//!
//! Opening a store replays every segment, in order, onto sled, flushes
//! sled and removes them. Operations are blind sets and removals, so
//! replaying a change that sled already holds changes nothing, and the
//! last record touching a key decides its value, whatever sled had. A
//! record that does not check out at the end of the last segment is a
//! write that was never acknowledged (the process died while writing it):
//! it and what follows it are ignored. Anywhere else it is damage, and the
//! store is not opened: the error names the file and the offset.
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

use std::fs::File;
use std::io::Write as _;
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
}

impl Change {
    /// Sets `key` of `tree` to `value`.
    pub(super) fn set(&mut self, tree: TreeId, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: Some(value),
        });
    }

    /// Removes `key` of `tree`.
    pub(super) fn remove(&mut self, tree: TreeId, key: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: None,
        });
    }

    /// Its operations, in order: tree, key, and the value set (`None`
    /// removes the key).
    pub(super) fn into_ops(self) -> impl Iterator<Item = (TreeId, Vec<u8>, Option<Vec<u8>>)> {
        self.ops.into_iter().map(|op| (op.tree, op.key, op.value))
    }

    /// Whether it changes nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies it to sled's trees, in order.
    pub(super) fn apply<'a>(
        &self,
        tree: impl Fn(TreeId) -> &'a ::sled::Tree,
    ) -> std::result::Result<(), ::sled::Error> {
        for op in &self.ops {
            let tree = tree(op.tree);
            match &op.value {
                Some(value) => {
                    tree.insert(&op.key[..], &value[..])?;
                }
                None => {
                    tree.remove(&op.key[..])?;
                }
            }
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        12 + self
            .ops
            .iter()
            .map(|op| 6 + op.key.len() + op.value.as_ref().map_or(0, |v| 4 + v.len()))
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
            out.push(u8::from(op.value.is_some()));
            out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&op.key);
            if let Some(value) = &op.value {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
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
            let set = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err("an unknown operation"),
            };
            let key = r.bytes()?.to_vec();
            let value = if set { Some(r.bytes()?.to_vec()) } else { None };
            ops.push(Op { tree, key, value });
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
        // Checked whole before anything is applied: a damaged log leaves
        // the store as it was.
        for apply in [false, true] {
            let mut next_seq: Option<u64> = None;
            let mut replayed = 0u64;
            for (i, (first, path)) in segments.iter().enumerate() {
                let last_segment = i + 1 == segments.len();
                let bytes = std::fs::read(path).map_err(|e| io_error("read", path, &e))?;
                let (records, seq) = replay_segment(&bytes, *first, next_seq, last_segment, |c| {
                    if apply {
                        c.apply(|t| &trees[t as usize])
                    } else {
                        Ok(())
                    }
                })
                .map_err(|bad| match bad {
                    Replay::Damaged(at, why) => Error::Store(format!(
                        "the store's write-ahead log {} is damaged at byte {at} ({why}), before \
                         its end: the writes it holds from there on cannot be replayed, and the \
                         store was not opened (nothing was modified). To open it without them \
                         (they may include acknowledged work), move that file and the later ones \
                         out of {}",
                        path.display(),
                        dir.display()
                    )),
                    Replay::Sled(e) => Error::Store(format!(
                        "replaying the write-ahead log {} onto sled: {e}",
                        path.display()
                    )),
                })?;
                replayed += records;
                next_seq = seq.or(next_seq);
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
        let writer = Writer::create(log.clone(), 0, checkpoints.sender())?;
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
    mut apply: impl FnMut(Change) -> std::result::Result<(), ::sled::Error>,
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
            "it does not follow the previous segment: a segment is missing",
        ));
    }
    let mut seq = header_seq;
    let mut at = SEGMENT_HEADER;
    let mut records = 0;
    while at < bytes.len() {
        match record_at(bytes, at, seq) {
            Ok((end, change)) => {
                apply(change).map_err(Replay::Sled)?;
                records += 1;
                seq += 1;
                at = end;
            }
            Err(bad) if last_segment && bad.torn(bytes, at) => {
                tracing::warn!(
                    offset = at,
                    bytes = bytes.len() - at,
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
    /// Where the record would end by its header, if it has one.
    end: Option<usize>,
}

impl BadRecord {
    /// Whether it looks like the tail of a write the process did not
    /// finish: cut short, zeros, or a bad record that ends exactly where
    /// the file does. Anything followed by more bytes is damage.
    fn torn(&self, bytes: &[u8], at: usize) -> bool {
        self.end.is_none_or(|end| end >= bytes.len()) || bytes[at..].iter().all(|b| *b == 0)
    }
}

/// The record at `at` of a segment, if it checks out and is number `seq`:
/// where it ends, and its change.
fn record_at(bytes: &[u8], at: usize, seq: u64) -> std::result::Result<(usize, Change), BadRecord> {
    let bad = |why, end| BadRecord { why, end };
    let header = bytes
        .get(at..at + RECORD_HEADER)
        .ok_or(bad("a truncated record header", None))?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
    let end = at + RECORD_HEADER + len;
    if len == 0 {
        return Err(bad("an empty record", Some(end)));
    }
    let body = bytes
        .get(at + RECORD_HEADER..end)
        .ok_or(bad("a truncated record", None))?;
    if crc32fast::hash(body) != crc {
        return Err(bad("a record whose checksum does not match", Some(end)));
    }
    let (found, change) = Change::decode(body).map_err(|why| bad(why, Some(end)))?;
    if found != seq {
        return Err(bad("a record out of sequence", Some(end)));
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
    /// When the current segment received its first record.
    first_write: Option<Instant>,
    /// When it received its last.
    last_write: Instant,
    /// The buffer swapped with the log's, so neither reallocates.
    spare: Vec<u8>,
    closed: Sender<PathBuf>,
}

impl Writer {
    fn create(log: Arc<Log>, seq: u64, closed: Sender<PathBuf>) -> Result<Writer> {
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
        let written = self
            .file
            .write_all(&self.spare)
            .and_then(|()| self.file.sync_data());
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

    /// Starts the segment whose first record is `seq`, and hands the
    /// current one to the checkpoint thread.
    fn rotate(&mut self, seq: u64) -> std::result::Result<(), String> {
        match Writer::create(self.log.clone(), seq, self.closed.clone()) {
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
        // The last record, bad: the tail of an unfinished write.
        assert!(out_of_sequence.torn(&out, end));
        let mut damaged = out.clone();
        damaged[end + 20] ^= 1;
        let flipped = record_at(&damaged, end, 8).unwrap_err();
        assert_eq!(flipped.why, "a record whose checksum does not match");
        assert!(flipped.torn(&damaged, end));
        // The first record, bad, with another after it: damage.
        damaged[20] ^= 1;
        let flipped = record_at(&damaged, 0, 7).unwrap_err();
        assert!(!flipped.torn(&damaged, 0));
        let cut = record_at(&out[..out.len() - 1], end, 8).unwrap_err();
        assert_eq!(cut.why, "a truncated record");
        assert!(cut.torn(&out[..out.len() - 1], end));
        let mut zeros = out.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert!(
            record_at(&zeros, out.len(), 9)
                .unwrap_err()
                .torn(&zeros, out.len())
        );
    }
}
