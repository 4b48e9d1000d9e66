//! Unit tests of the sled store's records, transitions and flushes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::envelope::{decode_counts, decode_task, encode_counts, encode_task, input_range};
use super::*;
use crate::store::{Inserted, Store, TaskFilter};
use crate::task::{Attempt, TaskState};
use crate::{Backoff, Limits, ModuleHash, Outcome};

fn record(module: ModuleHash, state: TaskState, seq: u64) -> TaskRecord {
    let id = TaskId::new();
    let mut record = TaskRecord {
        id,
        module,
        input: b"input".to_vec().into(),
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
        output: b"out".to_vec().into(),
        log: "log".into(),
        progress: Some((1, 2)),
    };
    record.lease.as_mut().unwrap().task = id;
    record
}

fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, &SledOptions::new()).unwrap()
}

/// A new store in a temporary directory, holding the module `m`.
fn store_with_module() -> (tempfile::TempDir, SledStore, ModuleHash) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let module = ModuleHash::of(b"m");
    store.put_module(&module, b"m").unwrap();
    (dir, store, module)
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
    let mut counts = crate::store::Tally::default();
    counts.set(TaskState::Queued, 3);
    counts.set(TaskState::Expired, 1);
    let encoded = encode_counts(&counts).unwrap();
    assert_eq!(decode_counts(&encoded).unwrap(), counts);
    // The very bytes the counts were stored as before they were kept as an
    // array: a vector of `(state code, tasks)` for the states with tasks.
    let as_vector: Vec<(u8, u64)> = vec![
        (super::schema::state_code(TaskState::Queued), 3),
        (super::schema::state_code(TaskState::Expired), 1),
    ];
    assert_eq!(
        encoded,
        super::envelope::encode("meta", super::META_COUNTS, &as_vector).unwrap()
    );
}

/// The envelope written in place holds the very bytes of the payload
/// encoded alone behind its header, whether the record fits the buffer
/// sized for it or outgrows it (attempts past the room made for them).
#[test]
fn an_envelope_written_in_place_is_the_header_then_the_payload() {
    let mut task = record(ModuleHash::of(b"m"), TaskState::Failed, 1);
    for grown in [false, true] {
        if grown {
            task.attempts = (1..=40)
                .map(|number| Attempt {
                    number,
                    outcome: Some(Outcome::Failed("no".repeat(number as usize))),
                    started_at: u64::MAX - u64::from(number),
                    duration_us: 1 << 40,
                    fuel_consumed: Some(u64::MAX),
                })
                .collect();
        }
        let key = task.id.to_bytes();
        let payload = bincode::serde::encode_to_vec(
            schema::StoredTask::from(&task),
            envelope::bincode_config(),
        )
        .unwrap();
        let mut expected = vec![envelope::TASK_RECORD_VERSION];
        expected.extend_from_slice(&envelope::checksum(&key, &payload).to_le_bytes());
        expected.extend_from_slice(&payload);
        let bytes = encode_task(&task).unwrap();
        assert_eq!(bytes, expected, "grown: {grown}");
        assert_eq!(decode_task(&key, &bytes).unwrap(), task);
    }
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
    // The module is gone for new tasks too, though one was stored with it.
    let late = record(module, TaskState::Queued, store.next_seq().unwrap());
    assert_eq!(
        store.insert(&[late]).unwrap_err().to_string(),
        Error::UnknownModule(module).to_string()
    );
    drop(store);

    // The counts were stored with the transitions.
    let store = open(dir.path());
    assert_eq!(store.counts().unwrap().total(), 0);
}

/// `update` compares against what this process wrote without reading it
/// back; a store reopened has no such memory and reads. Either way the
/// compare, the index and the counts come out the same.
#[test]
fn updates_compare_the_same_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let module = ModuleHash::of(b"m");
    let mut task = record(module, TaskState::Queued, 0);
    task.finished_at = None;
    let check = |store: &SledStore, unfinished: u64, finished: u64| {
        let report = store.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.unfinished, report.finished), (unfinished, finished));
    };
    for reopen in [false, true] {
        let store = open(dir.path());
        store.put_module(&module, b"m").unwrap();
        task.id = TaskId::new();
        task.state = TaskState::Queued;
        task.finished_at = None;
        task.seq = store.next_seq().unwrap();
        store.insert(std::slice::from_ref(&task)).unwrap();
        let store = if reopen {
            drop(store);
            open(dir.path())
        } else {
            store
        };
        // The first round's task is finished when the second begins.
        let earlier = u64::from(reopen);
        // Claimed, then retried (queued again, same index entry), then
        // claimed and finished; each compare also refused once.
        for (to, from, wrong) in [
            (TaskState::Running, TaskState::Queued, TaskState::Running),
            (TaskState::Queued, TaskState::Running, TaskState::Queued),
            (TaskState::Running, TaskState::Queued, TaskState::Scheduled),
        ] {
            task.state = to;
            assert!(
                !store.update(&task, wrong).unwrap(),
                "{to:?} from {wrong:?}"
            );
            assert!(store.update(&task, from).unwrap(), "{to:?} from {from:?}");
            check(&store, 1, earlier);
            assert_eq!(store.get(&task.id).unwrap().unwrap().state, to);
        }
        task.state = TaskState::Succeeded;
        task.finished_at = Some(60);
        assert!(store.update(&task, TaskState::Running).unwrap());
        assert!(!store.update(&task, TaskState::Running).unwrap());
        check(&store, 0, earlier + 1);
        assert_eq!(
            store.counts().unwrap().get(TaskState::Succeeded),
            earlier + 1
        );
        assert_eq!(store.counts().unwrap().total(), earlier + 1);
    }
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

/// What a kill leaves of `store`, open on `dir`, once its writes are
/// flushed: sled's files and the log, copied while it is open, in a new
/// directory. `store` is closed after.
fn killed(store: SledStore, dir: &Path) -> tempfile::TempDir {
    store.flush_blocking().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_live(dir, copy.path());
    drop(store);
    copy
}

/// Copies a live data directory as a crash would leave it: the log first,
/// so that a checkpoint meanwhile can only leave more in sled, never less.
fn copy_live(from: &Path, to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy(&from.join(wal::WAL_DIR), &to.join(wal::WAL_DIR));
    copy(from, to);
}

fn log_segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(wal::WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Writes tasks and transitions, flushes, and copies the directory while
/// the store is open (what a kill at that moment leaves); returns the
/// store, the copy and the tasks as stored.
fn written_then_copied() -> (tempfile::TempDir, tempfile::TempDir, Vec<TaskRecord>) {
    let (dir, store, module) = store_with_module();
    let mut tasks: Vec<_> = (0..20)
        .map(|_| record(module, TaskState::Queued, store.next_seq().unwrap()))
        .collect();
    tasks[0].idempotency_key = Some("k".into());
    store.insert(&tasks[..10]).unwrap();
    store.insert(&tasks[10..]).unwrap();
    tasks[3].state = TaskState::Running;
    assert!(store.update(&tasks[3], TaskState::Queued).unwrap());
    tasks[4].state = TaskState::Succeeded;
    tasks[4].finished_at = Some(60);
    assert!(store.update(&tasks[4], TaskState::Queued).unwrap());
    let copy = killed(store, dir.path());
    (dir, copy, tasks)
}

fn assert_holds(store: &SledStore, tasks: &[TaskRecord]) {
    for task in tasks {
        assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(task));
    }
    let counts = store.counts().unwrap();
    assert_eq!(
        (
            counts.get(TaskState::Queued),
            counts.get(TaskState::Running),
            counts.get(TaskState::Succeeded)
        ),
        (18, 1, 1)
    );
    assert_eq!(store.by_key("k").unwrap(), Some(tasks[0].id));
    assert_eq!(store.unfinished().unwrap().len(), 19);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn acknowledged_writes_are_replayed_from_the_log() {
    let (dir, copy, tasks) = written_then_copied();
    // A clean close flushed sled and left no log to replay.
    let store = open(dir.path());
    assert_eq!(store.replayed(), 0);
    assert_holds(&store, &tasks);
    drop(store);

    // The copy is what a kill leaves: sled was never flushed after the
    // writes, and the log holds them.
    let store = open(copy.path());
    assert!(store.replayed() > 0);
    assert_holds(&store, &tasks);
    // Replayed, flushed into sled, and gone: one new, empty segment.
    assert_eq!(log_segments(copy.path()).len(), 1);
    drop(store);
    let store = open(copy.path());
    assert_eq!(store.replayed(), 0);
    assert_holds(&store, &tasks);
}

#[test]
fn a_torn_tail_of_the_log_is_ignored_and_damage_before_it_refuses_to_open() {
    use std::io::Write as _;
    let (_dir, copy, tasks) = written_then_copied();
    let segments = log_segments(copy.path());
    let last = segments.last().unwrap();
    let good = std::fs::read(last).unwrap();

    // Half a record at the end: the write that a kill interrupted.
    let mut file = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);
    let store = open(copy.path());
    assert!(store.replayed() > 0);
    assert_holds(&store, &tasks);
    drop(store);

    // A flipped bit in a record that others follow: damage, named.
    let (_dir, copy, _) = written_then_copied();
    let last = log_segments(copy.path()).pop().unwrap();
    let mut bad = good.clone();
    bad[40] ^= 0x01;
    std::fs::write(&last, &bad).unwrap();
    let e = SledStore::open(copy.path(), &SledOptions::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("write-ahead log") && e.contains("is damaged at byte 16") && e.contains("move"),
        "{e}"
    );
    // Nothing was modified: the same error again.
    let again = SledStore::open(copy.path(), &SledOptions::new())
        .unwrap_err()
        .to_string();
    assert_eq!(again, e);
}

/// Lists every task through pages, newest first.
fn list_all(store: &SledStore, state: Option<TaskState>) -> Vec<TaskId> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list(&TaskFilter {
                state,
                before,
                limit: 7,
                ..TaskFilter::default()
            })
            .unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        before = Some(last.id);
        out.extend(page.iter().map(|t| t.id));
    }
}

#[test]
fn reads_see_every_change_before_during_and_after_checkpoints() {
    let (dir, store, module) = store_with_module();
    // id -> state, as the store must tell it.
    let mut expected: BTreeMap<TaskId, TaskRecord> = BTreeMap::new();
    let verify = |store: &SledStore, expected: &BTreeMap<TaskId, TaskRecord>| {
        let mut ids: Vec<TaskId> = expected.keys().copied().collect();
        ids.sort_by_key(|id| std::cmp::Reverse(id.to_bytes()));
        assert_eq!(list_all(store, None), ids);
        let running: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| expected[id].state == TaskState::Running)
            .collect();
        assert_eq!(list_all(store, Some(TaskState::Running)), running);
        let mut unfinished: Vec<&TaskRecord> =
            expected.values().filter(|t| !t.state.is_final()).collect();
        unfinished.sort_by_key(|t| t.seq);
        assert_eq!(
            store
                .unfinished()
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect::<Vec<_>>(),
            unfinished.iter().map(|t| t.id).collect::<Vec<_>>()
        );
        for task in expected.values() {
            assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(task));
        }
        assert_eq!(store.counts().unwrap().total(), expected.len() as u64);
        let report = store.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    };
    for round in 0..6u64 {
        let batch: Vec<_> = (0..40)
            .map(|_| record(module, TaskState::Queued, store.next_seq().unwrap()))
            .collect();
        store.insert(&batch).unwrap();
        for (i, mut task) in batch.into_iter().enumerate() {
            if i % 3 == 1 {
                task.state = TaskState::Running;
                assert!(store.update(&task, TaskState::Queued).unwrap());
            } else if i % 3 == 2 {
                task.state = TaskState::Succeeded;
                task.finished_at = Some(100 + round);
                assert!(store.update(&task, TaskState::Queued).unwrap());
            }
            expected.insert(task.id, task);
        }
        // Some finished tasks of an earlier round leave.
        if round > 0 {
            let gone: Vec<TaskId> = expected
                .values()
                .filter(|t| t.finished_at == Some(100 + round - 1))
                .map(|t| t.id)
                .take(5)
                .collect();
            assert_eq!(store.remove_finished(&gone).unwrap(), gone);
            for id in &gone {
                expected.remove(id);
            }
        }
        verify(&store, &expected);
        if round % 2 == 1 {
            // Until a checkpoint has written this round to sled: then the
            // reads go through sled, not the overlay alone.
            let before = store.checkpoints();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while store.checkpoints() == before {
                assert!(std::time::Instant::now() < deadline, "no checkpoint");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // Maybe while a checkpoint runs.
            std::thread::sleep(Duration::from_millis(50 * (round % 3) + 100));
        }
        verify(&store, &expected);
    }
    assert!(
        store.checkpoints() >= 3,
        "{} checkpoints",
        store.checkpoints()
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.replayed(), 0);
    verify(&store, &expected);
}

/// Marks `store`'s database with schema `version`, as an older wpool
/// left it (the file beside it is the caller's to write).
fn mark_schema(store: &SledStore, version: u32) {
    store
        .trees
        .meta
        .insert(
            META_SCHEMA,
            envelope::encode("meta", META_SCHEMA, &version).unwrap(),
        )
        .unwrap();
}

#[test]
fn a_schema_3_store_is_upgraded_to_the_log_s_schema_with_its_tasks() {
    let (dir, store, module) = store_with_module();
    let task = record(module, TaskState::Queued, store.next_seq().unwrap());
    store.insert(std::slice::from_ref(&task)).unwrap();
    // As the last wpool without a log left it: schema 3 in both places.
    mark_schema(&store, 3);
    drop(store);
    std::fs::write(dir.path().join(VERSION_FILE), "wpool store schema 3\n").unwrap();
    std::fs::remove_dir_all(dir.path().join(wal::WAL_DIR)).unwrap();

    let store = open(dir.path());
    assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(&task));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(VERSION_FILE)).unwrap(),
        format!("wpool store schema {SCHEMA_VERSION}\n")
    );
    let stored = store.trees.meta.get(META_SCHEMA).unwrap().unwrap();
    assert_eq!(
        envelope::decode::<u32>("meta", META_SCHEMA, &stored).unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(SCHEMA_VERSION, 6);
}

/// Inputs and outputs are written as byte strings, read and written in
/// one piece rather than byte by byte (a record with 4 KiB of each took
/// 29 µs to encode and 23 µs to decode before, 2.7 and 2.9 after), in the
/// bytes version 3 always had: records written before read the same.
#[test]
fn payloads_are_byte_strings_in_the_bytes_records_always_had() {
    let config = envelope::bincode_config();
    for len in [0, 1, 250, 251, 65_535, 70_000] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let as_sequence = bincode::serde::encode_to_vec(&bytes, config).unwrap();
        let as_string =
            bincode::serde::encode_to_vec(serde_bytes::Bytes::new(&bytes), config).unwrap();
        assert_eq!(as_sequence, as_string, "{len} bytes");
    }
    // A whole record, fixed, against what the build before this encoding
    // wrote for it (its length and CRC32).
    let mut task = record(ModuleHash::of(b"m"), TaskState::Succeeded, 1);
    task.id = TaskId::from_bytes([9; 16]);
    task.lease.as_mut().unwrap().task = task.id;
    task.input = vec![b'a'; 4096].into();
    task.output = vec![b'b'; 4096].into();
    let bytes = encode_task(&task).unwrap();
    assert_eq!((bytes.len(), crc32fast::hash(&bytes)), (8346, 0x4207_57cd));
    assert_eq!(decode_task(&task.id.to_bytes(), &bytes).unwrap(), task);
}

#[test]
fn the_input_is_found_in_a_record_of_any_length() {
    let mut task = record(ModuleHash::of(b"m"), TaskState::Queued, 1);
    for len in [0, 1, 250, 251, 65_535, 65_536, 70_000] {
        let input: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        task.input = input.clone().into();
        let bytes = encode_task(&task).unwrap();
        let range = input_range(&bytes).unwrap();
        assert_eq!(&bytes[range], &input[..], "{len} bytes");
    }
    assert_eq!(input_range(&[1; 40]), None);
}

/// A distinct input of 4 KiB for task `n`.
fn big_input(n: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8 ^ n).collect()
}

/// How many times `needle` is in the log segments of `dir`.
fn times_logged(dir: &Path, needle: &[u8]) -> usize {
    log_segments(dir)
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(needle.len()).filter(|w| *w == needle).count()
        })
        .sum()
}

/// Claims `task` and ends it with an output, as the pool does.
fn claim_and_end(store: &SledStore, task: &mut TaskRecord) {
    task.state = TaskState::Running;
    task.updated_at += 1;
    assert!(store.update(task, TaskState::Queued).unwrap());
    task.state = TaskState::Succeeded;
    task.finished_at = Some(70);
    task.output = vec![b'o'; 3000].into();
    assert!(store.update(task, TaskState::Running).unwrap());
}

#[test]
fn a_task_s_input_is_logged_with_its_submission_only() {
    let (dir, store, module) = store_with_module();
    let mut tasks: Vec<_> = (0..5u8)
        .map(|n| {
            let mut task = record(module, TaskState::Queued, store.next_seq().unwrap());
            task.input = big_input(n).into();
            task
        })
        .collect();
    store.insert(&tasks).unwrap();
    for task in &mut tasks {
        claim_and_end(&store, task);
    }
    let copy = killed(store, dir.path());
    for n in 0..5 {
        assert_eq!(times_logged(copy.path(), &big_input(n)), 1, "task {n}");
    }
    // Replayed with the input the submission logged.
    let store = open(copy.path());
    assert!(store.replayed() > 0);
    for task in &tasks {
        assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(task));
    }
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_claim_logged_after_its_submission_s_checkpoint_takes_the_input_from_sled() {
    let (dir, store, module) = store_with_module();
    let mut task = record(module, TaskState::Queued, store.next_seq().unwrap());
    task.input = big_input(1).into();
    store.insert(std::slice::from_ref(&task)).unwrap();
    store.flush_blocking().unwrap();
    assert_eq!(times_logged(dir.path(), &big_input(1)), 1);
    // Idle: the segment holding the submission goes to sled and is removed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while times_logged(dir.path(), &big_input(1)) > 0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    claim_and_end(&store, &mut task);
    let copy = killed(store, dir.path());
    assert_eq!(times_logged(copy.path(), &big_input(1)), 0);
    let damaged = tempfile::tempdir().unwrap();
    copy_live(copy.path(), damaged.path());

    let store = open(copy.path());
    assert!(store.replayed() > 0);
    assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(&task));
    drop(store);

    // sled without the record (damage, or a copy put together from two
    // moments): the log cannot be replayed, and the store is left as it was.
    {
        let db = ::sled::open(damaged.path().join(DB_DIR)).unwrap();
        db.open_tree("tasks")
            .unwrap()
            .remove(task.id.to_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let e = SledStore::open(damaged.path(), &SledOptions::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is damaged at byte")
            && e.contains("neither the store nor the log holds")
            && e.contains("move"),
        "{e}"
    );
    let again = SledStore::open(damaged.path(), &SledOptions::new())
        .unwrap_err()
        .to_string();
    assert_eq!(again, e);
}

#[test]
fn a_schema_4_store_killed_while_open_is_replayed_and_upgraded() {
    let (dir, store, module) = store_with_module();
    let tasks: Vec<_> = (0..3)
        .map(|_| record(module, TaskState::Queued, store.next_seq().unwrap()))
        .collect();
    // As a schema 4 wpool leaves it: records of plain sets in the log, and
    // schema 4 in sled and beside it.
    mark_schema(&store, 4);
    store.db.flush().unwrap();
    store.insert(&tasks).unwrap();
    let copy = killed(store, dir.path());
    std::fs::write(copy.path().join(VERSION_FILE), "wpool store schema 4\n").unwrap();

    let store = open(copy.path());
    assert!(store.replayed() > 0);
    for task in &tasks {
        assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(task));
    }
    assert_eq!(
        std::fs::read_to_string(copy.path().join(VERSION_FILE)).unwrap(),
        format!("wpool store schema {SCHEMA_VERSION}\n")
    );
}

/// Ends `task` (queued) at `at` milliseconds.
fn end_at(store: &SledStore, task: &mut TaskRecord, at: u64) {
    task.state = TaskState::Succeeded;
    task.finished_at = Some(at);
    assert!(store.update(task, TaskState::Queued).unwrap());
}

#[test]
fn a_schema_5_store_killed_while_open_has_its_finished_index_grouped() {
    let (dir, store, module) = store_with_module();
    let mut tasks: Vec<_> = (0..12)
        .map(|_| record(module, TaskState::Queued, store.next_seq().unwrap()))
        .collect();
    store.insert(&tasks).unwrap();
    // Ended in milliseconds 100 (four of them), 101 (four), 102 (two);
    // two still queued.
    for (i, task) in tasks.iter_mut().take(10).enumerate() {
        end_at(&store, task, 100 + i as u64 / 4);
    }
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.trees.finished.len(), 3, "one value per millisecond");
    // As a schema 5 wpool leaves it: one key per entry, empty values...
    let entries: Vec<_> = store
        .scan(TreeId::Finished, Bound::Unbounded, false)
        .map(|e| e.unwrap().0)
        .collect();
    assert_eq!(entries.len(), 10);
    store.trees.finished.clear().unwrap();
    for entry in &entries {
        store.trees.finished.insert(entry, &[][..]).unwrap();
    }
    mark_schema(&store, 5);
    store.db.flush().unwrap();
    // ...and ends in its log only, one in a millisecond sled has (101),
    // one in a new one (103), when it was killed.
    end_at(&store, &mut tasks[10], 101);
    end_at(&store, &mut tasks[11], 103);
    let copy = killed(store, dir.path());
    std::fs::write(copy.path().join(VERSION_FILE), "wpool store schema 5\n").unwrap();

    let store = open(copy.path());
    assert!(store.replayed() > 0);
    assert_eq!(
        std::fs::read_to_string(copy.path().join(VERSION_FILE)).unwrap(),
        format!("wpool store schema {SCHEMA_VERSION}\n")
    );
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.tasks, report.finished), (12, 12));
    for task in &tasks {
        assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(task));
    }
    // Retention reads the grouped index oldest first: the 9 tasks that
    // ended before 102 (4 in sled's 100, 4 in sled's 101 and the one the
    // log added to it).
    assert_eq!(store.purge_finished(102, None).unwrap(), 9);
    drop(store);
    let store = open(copy.path());
    assert_eq!(store.trees.finished.len(), 2, "102 and 103 left");
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.tasks, report.finished), (3, 3));
    // Keep 1 of the 3: the oldest two go, and their group with them.
    assert_eq!(store.purge_finished(0, Some(1)).unwrap(), 2);
    drop(store);
    let store = open(copy.path());
    assert_eq!(store.trees.finished.len(), 1);
    let left: Vec<_> = store
        .scan(TreeId::Finished, Bound::Unbounded, false)
        .map(|e| e.unwrap().0)
        .collect();
    let mut expected = 103u64.to_be_bytes().to_vec();
    expected.extend_from_slice(&tasks[11].id.to_bytes());
    assert_eq!(left, vec![sled::IVec::from(expected)]);
}

/// [`Store::update_with`] on `store`: a change refused leaves the record
/// and the counts as they were, a change made is stored, counted and
/// indexed (a final task is retention's), and an unknown task is `None`.
fn update_with_changes_or_leaves_alone(store: &dyn Store, module: ModuleHash) {
    let task = record(module, TaskState::Queued, store.next_seq().unwrap());
    store.insert(std::slice::from_ref(&task)).unwrap();
    let refused = store
        .update_with(&task.id, &mut |stored| {
            assert_eq!(stored.state, TaskState::Queued);
            false
        })
        .unwrap();
    assert!(refused.is_none());
    assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(&task));
    assert_eq!(store.counts().unwrap().get(TaskState::Queued), 1);
    assert_eq!(store.get_final(&task.id).unwrap(), None, "not final yet");

    let done = store
        .update_with(&task.id, &mut |stored| {
            stored.state = TaskState::Succeeded;
            stored.finished_at = Some(50);
            true
        })
        .unwrap()
        .expect("the change was made");
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(&done));
    assert_eq!(store.get_final(&task.id).unwrap().as_ref(), Some(&done));
    let counts = store.counts().unwrap();
    assert_eq!(counts.get(TaskState::Queued), 0);
    assert_eq!(counts.get(TaskState::Succeeded), 1);
    assert_eq!(store.purge_finished(51, None).unwrap(), 1);

    assert_eq!(store.get_final(&task.id).unwrap(), None, "purged");
    let gone = store.update_with(&task.id, &mut |_| true).unwrap();
    assert!(gone.is_none());
}

#[test]
fn update_with_and_get_final_on_the_sled_and_memory_stores() {
    // sled: the trait's default (read, then compare-and-swap).
    let (_dir, store, module) = store_with_module();
    update_with_changes_or_leaves_alone(&store, module);
    // memory: in place.
    let memory = crate::store::MemoryStore::new();
    memory.put_module(&module, b"m").unwrap();
    update_with_changes_or_leaves_alone(&memory, module);
}

/// `update_shared`: the record as written, on both stores; a change made
/// while one is held leaves the one held as it was; the memory store gives
/// its own record, not a copy.
#[test]
fn update_shared_gives_the_record_as_written_and_a_held_one_stays_as_read() {
    let change_priority = |store: &dyn Store, id: &TaskId, priority: i32| {
        store
            .update_shared(id, &mut |stored| {
                stored.priority = priority;
                true
            })
            .unwrap()
            .expect("the change was made")
    };
    let (_dir, sled, module) = store_with_module();
    let memory = crate::store::MemoryStore::new();
    memory.put_module(&module, b"m").unwrap();
    for store in [&sled as &dyn Store, &memory] {
        let task = record(module, TaskState::Queued, store.next_seq().unwrap());
        store.insert(std::slice::from_ref(&task)).unwrap();
        let refused = store.update_shared(&task.id, &mut |_| false).unwrap();
        assert!(refused.is_none());
        let held = change_priority(store, &task.id, 7);
        assert_eq!(held.priority, 7);
        assert_eq!(store.get(&task.id).unwrap().as_ref(), Some(&*held));
        let later = change_priority(store, &task.id, 9);
        assert_eq!(held.priority, 7, "the record held is as it was read");
        assert_eq!(later.priority, 9);
        assert_eq!(store.get(&task.id).unwrap().unwrap().priority, 9);
    }
    let task = record(module, TaskState::Queued, memory.next_seq().unwrap());
    memory.insert(std::slice::from_ref(&task)).unwrap();
    let first = Arc::as_ptr(
        &memory
            .update_shared(&task.id, &mut |_| true)
            .unwrap()
            .unwrap(),
    );
    let second = memory
        .update_shared(&task.id, &mut |_| true)
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        Arc::as_ptr(&second),
        "the memory store gives its own record, and changes it in place once let go"
    );
}

#[test]
fn a_store_of_this_process_closing_is_waited_for_and_one_kept_open_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // Dropped by another thread while this one opens the directory: the
    // open waits for the lock instead of failing.
    let first = open(dir.path());
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
    });
    let second = SledStore::open(dir.path(), &SledOptions::default())
        .expect("a store of this process that is being dropped is waited for");
    closer.join().unwrap();

    // Kept open: the second open fails after the wait, saying so.
    let err = SledStore::open(dir.path(), &SledOptions::default())
        .expect_err("a directory this process holds open is refused")
        .to_string();
    assert!(err.contains("in use by this very process"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    drop(second);
}

/// Records kept as submitted read as the store holds them; every change
/// drops the copy first, so a read never answers an older record; large
/// records are not kept, and only the newest `MAX_RECORDS` are.
#[test]
fn records_kept_as_submitted_read_as_stored_until_they_change() {
    let (_dir, store, module) = store_with_module();
    let key = |task: &TaskRecord| task.id.to_bytes();
    let stored = |task: &TaskRecord| {
        let bytes = store.read(TreeId::Tasks, &key(task)).unwrap().unwrap();
        decode_task(&key(task), &bytes).unwrap()
    };
    let mut task = record(module, TaskState::Queued, store.next_seq().unwrap());
    task.lease = None;
    task.finished_at = None;
    let mut large = record(module, TaskState::Queued, store.next_seq().unwrap());
    large.lease = None;
    large.log = "x".repeat(submitted::MAX_RECORD_BYTES);
    store.insert(&[task.clone(), large.clone()]).unwrap();
    assert_eq!(store.submitted.len(), 1, "the large record is not kept");
    assert_eq!(store.get(&task.id).unwrap().unwrap(), stored(&task));
    assert_eq!(store.get(&task.id).unwrap().unwrap(), task);
    assert_eq!(store.get(&large.id).unwrap().unwrap(), large);

    // A change (here a claim) drops the copy before it is applied.
    let mut claimed = task.clone();
    claimed.state = TaskState::Running;
    claimed.updated_at = 77;
    assert!(store.update(&claimed, TaskState::Queued).unwrap());
    assert_eq!(store.submitted.len(), 0);
    assert_eq!(store.get(&task.id).unwrap().unwrap(), claimed);
    // A failed compare-and-set changes nothing, and keeps nothing.
    assert!(!store.update(&task, TaskState::Queued).unwrap());
    assert_eq!(store.get(&task.id).unwrap().unwrap(), claimed);

    // Only the newest are kept, and each reads as stored.
    let many: Vec<TaskRecord> = (0..submitted::MAX_RECORDS + 10)
        .map(|_| {
            let mut task = record(module, TaskState::Queued, store.next_seq().unwrap());
            task.lease = None;
            task
        })
        .collect();
    store.insert(&many).unwrap();
    assert_eq!(store.submitted.len(), submitted::MAX_RECORDS);
    for task in [&many[0], &many[many.len() - 1]] {
        assert_eq!(store.get(&task.id).unwrap().unwrap(), stored(task));
        assert_eq!(&store.get(&task.id).unwrap().unwrap(), task);
    }

    // A record inserted final, then removed, is gone from the copies too.
    let mut done = record(module, TaskState::Succeeded, store.next_seq().unwrap());
    done.lease = None;
    done.finished_at = Some(5);
    store.insert(std::slice::from_ref(&done)).unwrap();
    assert_eq!(store.get(&done.id).unwrap().unwrap(), done);
    assert_eq!(store.remove_finished(&[done.id]).unwrap(), vec![done.id]);
    assert_eq!(store.get(&done.id).unwrap(), None);
}

/// A new task's id is looked up only when it is not above every stored
/// id: a task stored again under an id not above the newest is refused,
/// before and after a reopen (which finds the newest in sled after a
/// clean close, and in the log's replay after a kill), and an id below
/// the newest that is free is stored.
#[test]
fn an_id_not_above_the_newest_is_looked_up() {
    let refused = |store: &SledStore, task: &TaskRecord| {
        let error = store.insert(std::slice::from_ref(task)).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
    };
    let (dir, store, module) = store_with_module();
    let newest = record(module, TaskState::Queued, store.next_seq().unwrap());
    let mut older = record(module, TaskState::Queued, store.next_seq().unwrap());
    older.id = TaskId::from_bytes([0; 16]);
    older.lease.as_mut().unwrap().task = older.id;
    assert!(older.id < newest.id);
    assert_eq!(
        store.insert(std::slice::from_ref(&newest)).unwrap(),
        [Inserted::New]
    );
    refused(&store, &newest);
    // Below the newest and free: looked up, and stored.
    assert_eq!(
        store.insert(std::slice::from_ref(&older)).unwrap(),
        [Inserted::New]
    );
    refused(&store, &older);
    store.flush_blocking().unwrap();
    let killed = tempfile::tempdir().unwrap();
    copy_live(dir.path(), killed.path());
    drop(store);

    let store = open(killed.path());
    assert!(store.replayed() > 0);
    refused(&store, &newest);
    refused(&store, &older);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.replayed(), 0);
    refused(&store, &newest);
    refused(&store, &older);
    let next = record(module, TaskState::Queued, store.next_seq().unwrap());
    assert!(next.id > newest.id);
    assert_eq!(
        store.insert(std::slice::from_ref(&next)).unwrap(),
        [Inserted::New]
    );
    refused(&store, &next);
    assert_eq!(store.counts().unwrap().total(), 3);
}
