//! The [`Store`] calls on sled: every transition one transaction over the
//! task, its index entry, its idempotency key and the counts.

use ::sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};

use super::envelope::{
    HEADER, corrupted, decode_task, encode_counts, encode_task, envelope, module_hash,
    open_envelope, task_id,
};
use super::{META_COUNTS, PURGE_BATCH, SledStore, SyncMode};
use crate::store::{Inserted, StateCounts, Store, StoredModule, TaskFilter};
use crate::task::{Millis, Payload, Slot, TaskId, TaskRecord, TaskState};
use crate::{Error, ModuleHash, ModuleSettings, Result};

/// Where a task belongs: one index entry per task, always.
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
        // The output the stored record named, if this one replaces it.
        let replaced = std::cell::RefCell::new(None);
        let result = (&t.tasks, &t.unfinished, &t.finished, &t.meta)
            .transaction(|(tasks, unfinished, finished, meta)| {
                let Some(stored) = tasks.get(id)? else {
                    return Ok(None);
                };
                let stored: TaskRecord = decode_task(&id, &stored).map_err(abort)?;
                if stored.state != expected {
                    return Ok(None);
                }
                *replaced.borrow_mut() = (matches!(stored.output, Payload::File { .. })
                    && stored.output != task.output)
                    .then(|| stored.output.clone());
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
                drop(counts);
                if let Some(output) = replaced.into_inner() {
                    // Durable first: a crash must not bring back a record
                    // naming a file already removed.
                    self.sync()?;
                    self.payloads.remove_all(&[(task.id, Slot::Output, output)]);
                }
                Ok(true)
            }
            None => Ok(false),
        }
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
            // Payload files of the removed tasks, removed once they are.
            let files = std::cell::RefCell::new(Vec::new());
            let new_counts = (&t.tasks, &t.finished, &t.keys, &t.meta)
                .transaction(|(tasks, finished, keys, meta)| {
                    let mut new_counts = current.clone();
                    files.borrow_mut().clear();
                    for key in &doomed {
                        finished.remove(key)?;
                        let id_bytes = key.get(8..).unwrap_or_default();
                        let Some(value) = tasks.remove(id_bytes)? else {
                            continue;
                        };
                        let task: TaskRecord = decode_task(id_bytes, &value).map_err(abort)?;
                        new_counts.moved(Some(task.state), None);
                        files.borrow_mut().extend(super::payloads::files_of(&task));
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
            let files = files.into_inner();
            if !files.is_empty() {
                self.sync()?;
                self.payloads.remove_all(&files);
            }
            removed += doomed.len() as u64;
        }
        Ok(removed)
    }

    fn remove_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut counts = self.lock_writes();
        let current = &*counts;
        let t = &self.trees;
        let files = std::cell::RefCell::new(Vec::new());
        let (new_counts, removed) = (&t.tasks, &t.finished, &t.keys, &t.meta)
            .transaction(|(tasks, finished, keys, meta)| {
                let mut new_counts = current.clone();
                let mut removed = Vec::new();
                files.borrow_mut().clear();
                for id in ids {
                    let key = id.to_bytes();
                    let Some(value) = tasks.get(key)? else {
                        continue;
                    };
                    let task: TaskRecord = decode_task(&key, &value).map_err(abort)?;
                    let Index::Finished(index) = index_key(&task) else {
                        continue;
                    };
                    tasks.remove(&key[..])?;
                    finished.remove(index)?;
                    if let Some(k) = &task.idempotency_key
                        && keys.get(k.as_bytes())?.as_deref() == Some(&key[..])
                    {
                        keys.remove(k.as_bytes())?;
                    }
                    new_counts.moved(Some(task.state), None);
                    files.borrow_mut().extend(super::payloads::files_of(&task));
                    removed.push(*id);
                }
                if !removed.is_empty() {
                    meta.insert(META_COUNTS, encode_counts(&new_counts).map_err(abort)?)?;
                }
                Ok((new_counts, removed))
            })
            .map_err(|e| self.tx_error("removing finished tasks", e))?;
        *counts = new_counts;
        drop(counts);
        let files = files.into_inner();
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
