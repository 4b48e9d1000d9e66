//! The [`Store`] calls on sled: every transition one [`Change`] over the
//! task, its index entry, its idempotency key and the counts, made under
//! the write lock, logged, then applied (see [`wal`](super::wal)).

use std::collections::{HashMap, HashSet};
use std::ops::Bound;

use super::envelope::{
    HEADER, corrupted, decode_task, encode_counts, encode_task, envelope, input_range, module_hash,
    open_envelope, task_id,
};
use super::submitted::Submitted;
use super::wal::{Change, Kept, TreeId};
use super::{META_COUNTS, PURGE_BATCH, SledStore, SyncMode};
use crate::store::{Inserted, StateCounts, Store, StoredModule, TaskFilter};
use crate::task::{IdHashing, Millis, Payload, Slot, TaskId, TaskRecord, TaskState};
use crate::{Error, ModuleHash, ModuleSettings, Result};

/// Where a task belongs: one index entry per task, always.
#[derive(PartialEq, Eq)]
pub(super) enum Index {
    Unfinished(Vec<u8>),
    Finished(Vec<u8>),
}

pub(super) fn index_key(task: &TaskRecord) -> Index {
    let id = task.id.to_bytes();
    if task.state.is_final() {
        let at: Millis = task.finished_at.unwrap_or(task.updated_at);
        Index::Finished([&at.to_be_bytes()[..], &id[..]].concat())
    } else {
        Index::Unfinished(unfinished_key(task.seq, &task.id))
    }
}

/// The key of an unfinished task in the `unfinished` index.
fn unfinished_key(seq: u64, id: &TaskId) -> Vec<u8> {
    [&seq.to_be_bytes()[..], &id.to_bytes()[..]].concat()
}

/// Puts `index`. `new`: the entry of a task being inserted, whose key
/// (with the task's id in it) nothing holds yet.
fn put_index(change: &mut Change, index: Index, new: bool) {
    match index {
        // The entry a task's end removes: if that comes before the next
        // checkpoint, sled never sees either.
        Index::Unfinished(k) if new => change.set_new(TreeId::Unfinished, k, Vec::new()),
        Index::Unfinished(k) => change.set(TreeId::Unfinished, k, Vec::new()),
        Index::Finished(k) => change.set(TreeId::Finished, k, Vec::new()),
    }
}

fn remove_index(change: &mut Change, index: Index) {
    match index {
        Index::Unfinished(k) => change.remove(TreeId::Unfinished, k),
        Index::Finished(k) => change.remove(TreeId::Finished, k),
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    // A tree of its own (older stores lack it and read as "no settings";
    // older wpool versions ignore it). Values go through the checked
    // envelope; the payload is JSON, so that fields can be added.
    fn put_module_settings(&self, hash: &ModuleHash, settings: &ModuleSettings) -> Result<()> {
        let key = hash.as_bytes();
        let mut change = Change::default();
        if settings.is_default() {
            change.remove(TreeId::ModuleSettings, &key[..]);
        } else {
            let payload = serde_json::to_vec(settings).map_err(|e| {
                Error::Store(format!("cannot encode the settings of module {hash}: {e}"))
            })?;
            change.set(TreeId::ModuleSettings, &key[..], envelope(key, &payload));
        }
        let writes = self.lock_writes();
        self.commit(&writes, change)
    }

    fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>> {
        const TREE: &str = "module_settings";
        let key = hash.as_bytes();
        let Some(bytes) = self.read(TreeId::ModuleSettings, key)? else {
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
        let mut writes = self.lock_writes();
        // Content-addressed: an existing, sound record is the same bytes. A
        // corrupted one is replaced.
        if let Some(existing) = self.read(TreeId::Modules, key)?
            && open_envelope("modules", key, &existing).is_ok()
        {
            return Ok(());
        }
        let mut change = Change::default();
        change.set(TreeId::Modules, &key[..], envelope(key, bytes));
        self.commit(&writes, change)?;
        writes.modules.insert(*hash);
        Ok(())
    }

    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        let key = hash.as_bytes();
        match self.read(TreeId::Modules, key)? {
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
        for entry in self.scan(TreeId::Modules, Bound::Unbounded, false) {
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
        let mut writes = self.lock_writes();
        if self.module_in_use(hash)? {
            return Err(Error::ModuleInUse(*hash));
        }
        let key = hash.as_bytes();
        if !self.contains(TreeId::Modules, key)? {
            return Ok(false);
        }
        let mut change = Change::default();
        change.remove(TreeId::Modules, &key[..]);
        self.commit(&writes, change)?;
        writes.modules.remove(hash);
        Ok(true)
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
        let encoded = batch.iter().map(encode_task).collect::<Result<Vec<_>>>()?;
        let copies = Submitted::copies(batch);
        let mut writes = self.lock_writes();
        let mut new_counts = writes.counts;
        let mut change = Change::default();
        let mut answers = Vec::with_capacity(batch.len());
        // What this batch stores, as a later task of it must see it.
        let mut batch_keys: HashMap<&str, TaskId> = HashMap::new();
        // The ids this batch stores, to refuse one given twice (a set: a
        // linear search of the batch for each task cost a merged batch of
        // a few thousand tasks milliseconds, under the lock that every
        // claim and end waits for).
        let mut batch_ids: HashSet<TaskId, IdHashing> = match batch.len() {
            1 => HashSet::default(),
            n => HashSet::with_capacity_and_hasher(n, IdHashing::default()),
        };
        for (task, value) in batch.iter().zip(encoded) {
            if let Some(key) = &task.idempotency_key {
                if let Some(existing) = batch_keys.get(key.as_str()) {
                    answers.push(Inserted::Existing(*existing));
                    continue;
                }
                if let Some(existing) = self.read(TreeId::Keys, key.as_bytes())? {
                    answers.push(Inserted::Existing(task_id("keys", &existing)?));
                    continue;
                }
            }
            let id = task.id.to_bytes();
            // Above every stored id, it is stored nowhere (`newest_id`).
            let unseen = writes.newest_id.is_none_or(|newest| id > newest);
            if batch.len() > 1 && !batch_ids.insert(task.id) {
                return Err(crate::store::named_twice(&task.id));
            }
            if !unseen && self.contains(TreeId::Tasks, &id)? {
                return Err(Error::Store(format!("task {} already exists", task.id)));
            }
            // Known from then on, whether or not this batch is stored: a
            // module leaves only under the write lock, which is held.
            if !writes.modules.contains(&task.module) {
                if !self.contains(TreeId::Modules, task.module.as_bytes())? {
                    return Err(Error::UnknownModule(task.module));
                }
                writes.modules.insert(task.module);
            }
            change.set(TreeId::Tasks, &id[..], value);
            // Its key holds its id, checked above to be stored nowhere.
            put_index(&mut change, index_key(task), true);
            if let Some(key) = &task.idempotency_key {
                change.set(TreeId::Keys, key.as_bytes(), id.to_vec());
                batch_keys.insert(key, task.id);
            }
            new_counts.moved(None, Some(task.state));
            answers.push(Inserted::New);
        }
        if !change.is_empty() {
            change.set(TreeId::Meta, META_COUNTS, encode_counts(&new_counts)?);
            self.commit(&writes, change)?;
            writes.counts = new_counts;
            for (task, answer) in batch.iter().zip(&answers) {
                if matches!(answer, Inserted::New) {
                    writes.wrote(task, true);
                    let id = task.id.to_bytes();
                    if writes.newest_id.is_none_or(|newest| id > newest) {
                        writes.newest_id = Some(id);
                    }
                }
            }
            self.submitted.keep(
                copies
                    .into_iter()
                    .zip(&answers)
                    .filter(|(_, answer)| matches!(answer, Inserted::New))
                    .filter_map(|(copy, _)| copy),
            );
        }
        Ok(answers)
    }

    fn update(&self, task: &TaskRecord, expected: TaskState) -> Result<bool> {
        let id = task.id.to_bytes();
        let value = encode_task(task)?;
        // No transition changes a task's input, and the stored record holds
        // it where this one does: the log leaves it out (it went there with
        // the submission), so that a claim and an end do not write it again.
        let kept = input_range(&value).and_then(|range| Kept::of(&value, range));
        let mut writes = self.lock_writes();
        // What the stored record holds that this write needs: from its head
        // if this process wrote it (no read, no decode), else read.
        let (state, old, replaced) = match writes.heads.get(&task.id) {
            Some(head) if !head.output_in_file => (
                head.state,
                Index::Unfinished(unfinished_key(head.seq, &task.id)),
                None,
            ),
            _ => {
                let Some(stored) = self.task(&task.id)? else {
                    return Ok(false);
                };
                // The output the stored record named, if this one replaces it.
                let replaced = (matches!(stored.output, Payload::File { .. })
                    && stored.output != task.output)
                    .then(|| stored.output.clone());
                (stored.state, index_key(&stored), replaced)
            }
        };
        if state != expected {
            return Ok(false);
        }
        let mut change = Change::default();
        let new = index_key(task);
        if old != new {
            remove_index(&mut change, old);
            put_index(&mut change, new, false);
        }
        match kept {
            Some(kept) => change.set_keeping(&id[..], value, kept),
            None => change.set(TreeId::Tasks, &id[..], value),
        }
        // The kept copy goes before the record changes (see `submitted`).
        self.submitted.forget(&task.id);
        let mut new_counts = None;
        if state != task.state {
            let mut moved = writes.counts;
            moved.moved(Some(state), Some(task.state));
            change.set(TreeId::Meta, META_COUNTS, encode_counts(&moved)?);
            new_counts = Some(moved);
        }
        self.commit(&writes, change)?;
        if let Some(new_counts) = new_counts {
            writes.counts = new_counts;
        }
        writes.wrote(task, false);
        drop(writes);
        if let Some(output) = replaced {
            // Durable first: a crash must not bring back a record naming a
            // file already removed.
            self.sync()?;
            self.payloads.remove_all(&[(task.id, Slot::Output, output)]);
        }
        Ok(true)
    }

    fn keep_payload(
        &self,
        task: &TaskId,
        slot: Slot,
        token: u64,
        bytes: Vec<u8>,
    ) -> Result<Payload> {
        self.payloads.keep(task, slot, token, bytes)
    }

    fn discard_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<()> {
        self.payloads.remove(task, slot, payload)
    }

    fn read_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<Vec<u8>> {
        self.payloads.read(task, slot, payload)
    }

    fn payload_file(
        &self,
        task: &TaskId,
        slot: Slot,
        payload: &Payload,
    ) -> Option<std::path::PathBuf> {
        self.payloads.file(task, slot, payload)
    }

    fn stored_output_bytes(&self) -> u64 {
        self.payloads.output_bytes()
    }

    fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.task(id)
    }

    fn by_key(&self, key: &str) -> Result<Option<TaskId>> {
        match self.read(TreeId::Keys, key.as_bytes())? {
            Some(id) => Ok(Some(task_id("keys", &id)?)),
            None => Ok(None),
        }
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let before = filter.before.map(|id| id.to_bytes());
        let below = match &before {
            Some(before) => Bound::Excluded(&before[..]),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let size = filter.page_size();
        for entry in self.scan(TreeId::Tasks, below, true) {
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
        for entry in self.scan(TreeId::Unfinished, Bound::Unbounded, false) {
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
        Ok(self.lock_writes().counts.counts())
    }

    fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        let mut writes = self.lock_writes();
        let finished_total: u64 = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(|s| writes.counts.get(s))
            .sum();
        let excess = keep.map_or(0, |keep| finished_total.saturating_sub(keep));
        let mut removed = 0u64;
        loop {
            // Oldest first: each entry goes if it is past retention or among
            // the excess.
            let mut doomed = Vec::new();
            for entry in self.scan(TreeId::Finished, Bound::Unbounded, false) {
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
            let mut new_counts = writes.counts;
            let mut files = Vec::new();
            let mut change = Change::default();
            for key in &doomed {
                change.remove(TreeId::Finished, key.to_vec());
                let id_bytes = key.get(8..).unwrap_or_default();
                let id = task_id("finished", id_bytes)?;
                let Some(task) = self.task(&id)? else {
                    continue;
                };
                change.remove(TreeId::Tasks, id_bytes);
                writes.heads.remove(&id);
                self.submitted.forget(&id);
                new_counts.moved(Some(task.state), None);
                files.extend(super::payloads::files_of(&task));
                self.remove_key(&mut change, &task)?;
            }
            change.set(TreeId::Meta, META_COUNTS, encode_counts(&new_counts)?);
            self.commit(&writes, change)?;
            writes.counts = new_counts;
            if !files.is_empty() {
                self.sync()?;
                self.payloads.remove_all(&files);
            }
            removed += doomed.len() as u64;
        }
        Ok(removed)
    }

    fn remove_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut writes = self.lock_writes();
        let mut new_counts = writes.counts;
        let mut files = Vec::new();
        let mut removed = Vec::new();
        let mut change = Change::default();
        for id in ids {
            if removed.contains(id) {
                continue;
            }
            let Some(task) = self.task(id)? else {
                continue;
            };
            let Index::Finished(index) = index_key(&task) else {
                continue;
            };
            change.remove(TreeId::Tasks, &id.to_bytes()[..]);
            writes.heads.remove(id);
            self.submitted.forget(id);
            change.remove(TreeId::Finished, index);
            self.remove_key(&mut change, &task)?;
            new_counts.moved(Some(task.state), None);
            files.extend(super::payloads::files_of(&task));
            removed.push(*id);
        }
        if !removed.is_empty() {
            change.set(TreeId::Meta, META_COUNTS, encode_counts(&new_counts)?);
            self.commit(&writes, change)?;
            writes.counts = new_counts;
        }
        drop(writes);
        if !files.is_empty() {
            self.sync()?;
            self.payloads.remove_all(&files);
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

impl SledStore {
    /// Removes the idempotency key of `task`, if it still names it.
    fn remove_key(&self, change: &mut Change, task: &TaskRecord) -> Result<()> {
        if let Some(k) = &task.idempotency_key
            && self.read(TreeId::Keys, k.as_bytes())?.as_deref() == Some(&task.id.to_bytes()[..])
        {
            change.remove(TreeId::Keys, k.as_bytes());
        }
        Ok(())
    }
}
