//! A store in memory: fast, and gone when the process ends. For tests,
//! benchmarks and embedders that do not need durability.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::ordered::Ordered;
use super::{Inserted, StateCounts, Store, StoredModule, Tally, TaskFilter};
use crate::task::{IdMap, Millis, ModuleMap, TaskId, TaskRecord, TaskState};
use crate::{ModuleHash, ModuleSettings, Result};

/// A [`Store`] in memory. One lock guards everything, held only for the
/// duration of a call.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The records by id: a hash map, since a task's claim, end and
    /// waiters look it up by id (a B-tree of a deep queue took some
    /// thousand instructions a look-up, most of them cache misses).
    /// Shared (`Arc`), so that the table's free slots cost a pointer, not
    /// a record, and so that a read copies the record after the lock is
    /// let go: the lock is held for the look-up alone, not for the copy
    /// and its allocations, which the queue's workers, changing records
    /// under it at every claim and end, would otherwise wait for. A change
    /// writes in place ([`Arc::make_mut`]) unless a read holds the record
    /// at that moment, which then keeps the version it read.
    tasks: IdMap<Arc<TaskRecord>>,
    /// The ids in order, for [`Store::list`]'s pages.
    order: Ordered<TaskId>,
    keys: HashMap<String, TaskId>,
    /// The finished tasks by the time they ended, for
    /// [`Store::purge_finished`]. Both sets mostly grow at their end
    /// (see [`Ordered`]).
    finished: Ordered<(Millis, TaskId)>,
    modules: ModuleMap<Arc<[u8]>>,
    /// Module run settings.
    module_settings: ModuleMap<ModuleSettings>,
    counts: Tally,
    seq: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// The record of `id` if it is final, shared: read after the lock is
    /// let go.
    fn final_one(&self, id: &TaskId) -> Option<Arc<TaskRecord>> {
        self.lock()
            .tasks
            .get(id)
            .filter(|t| t.state.is_final())
            .map(Arc::clone)
    }
}

impl Inner {
    /// Changes the record of `id` in place with `change` (which returns
    /// whether it changed it), and moves its counts and its place among
    /// the finished tasks along; the record as changed.
    fn change(
        &mut self,
        id: &TaskId,
        change: &mut dyn FnMut(&mut TaskRecord) -> bool,
    ) -> Option<&Arc<TaskRecord>> {
        let entry = self.tasks.get_mut(id)?;
        let stored = Arc::make_mut(entry);
        let (from, before) = (stored.state, finished_key(stored));
        if !change(stored) {
            return None;
        }
        if let Some(key) = before {
            self.finished.remove(&key);
        }
        self.counts.moved(Some(from), Some(stored.state));
        if let Some(key) = finished_key(stored) {
            self.finished.insert(key);
        }
        Some(entry)
    }
}

impl Inner {
    /// Refuses a new task that names a module not stored, or whose id is
    /// taken.
    fn may_insert(&self, task: &TaskRecord) -> Result<()> {
        if !self.modules.contains_key(&task.module) {
            return Err(crate::Error::UnknownModule(task.module));
        }
        if self.tasks.contains_key(&task.id) {
            return Err(crate::Error::Store(format!(
                "task {} already exists",
                task.id
            )));
        }
        Ok(())
    }

    /// Stores a new task ([`Inner::may_insert`] said it may be) unless its
    /// idempotency key is taken.
    fn insert(&mut self, task: Arc<TaskRecord>) -> Inserted {
        if let Some(key) = &task.idempotency_key {
            if let Some(existing) = self.keys.get(key) {
                return Inserted::Existing(*existing);
            }
            self.keys.insert(key.clone(), task.id);
        }
        self.order.insert(task.id);
        self.counts.moved(None, Some(task.state));
        if let Some(key) = finished_key(&task) {
            self.finished.insert(key);
        }
        self.tasks.insert(task.id, task);
        Inserted::New
    }
}

/// Makes a new task's record as the store keeps it: with room for the
/// attempt its first claim opens. That claim writes the record in place,
/// on a worker's thread, under the lock every worker and submitter takes;
/// the room is made here, by the submitter, before the lock.
fn with_room(task: &mut TaskRecord) {
    if task.attempts.capacity() == 0 && !task.state.is_final() {
        task.attempts.reserve_exact(1);
    }
}

fn finished_key(task: &TaskRecord) -> Option<(Millis, TaskId)> {
    task.state
        .is_final()
        .then(|| (task.finished_at.unwrap_or(task.updated_at), task.id))
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn put_module_settings(&self, hash: &ModuleHash, settings: &ModuleSettings) -> Result<()> {
        let mut inner = self.lock();
        if settings.is_default() {
            inner.module_settings.remove(hash);
        } else {
            inner.module_settings.insert(*hash, settings.clone());
        }
        Ok(())
    }

    fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>> {
        Ok(self.lock().module_settings.get(hash).cloned())
    }

    fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()> {
        self.lock()
            .modules
            .entry(*hash)
            .or_insert_with(|| bytes.into());
        Ok(())
    }

    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().modules.get(hash).map(|b| b.to_vec()))
    }

    fn modules(&self) -> Result<Vec<StoredModule>> {
        let mut modules: Vec<StoredModule> = self
            .lock()
            .modules
            .iter()
            .map(|(hash, bytes)| StoredModule {
                hash: *hash,
                size: bytes.len() as u64,
            })
            .collect();
        modules.sort_by_key(|m| m.hash);
        Ok(modules)
    }

    fn delete_module(&self, hash: &ModuleHash) -> Result<bool> {
        let mut inner = self.lock();
        if inner
            .tasks
            .values()
            .any(|t| !t.state.is_final() && t.module == *hash)
        {
            return Err(crate::Error::ModuleInUse(*hash));
        }
        Ok(inner.modules.remove(hash).is_some())
    }

    fn next_seq(&self) -> Result<u64> {
        let mut inner = self.lock();
        inner.seq += 1;
        Ok(inner.seq)
    }

    fn insert(&self, tasks: &[TaskRecord]) -> Result<Vec<Inserted>> {
        // Copied before the lock, which the queue's workers wait for (a
        // copy made for a task whose key is taken is dropped).
        let copies: Vec<Arc<TaskRecord>> = tasks
            .iter()
            .map(|task| {
                let mut copy = task.clone();
                with_room(&mut copy);
                Arc::new(copy)
            })
            .collect();
        if tasks.len() > 1 {
            let mut named: IdMap<()> =
                IdMap::with_capacity_and_hasher(tasks.len(), Default::default());
            if let Some(task) = tasks.iter().find(|t| named.insert(t.id, ()).is_some()) {
                return Err(super::named_twice(&task.id));
            }
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        for task in tasks {
            inner.may_insert(task)?;
        }
        Ok(copies.into_iter().map(|copy| inner.insert(copy)).collect())
    }

    /// Keeps the record given (moved once, into the `Arc` it is kept in),
    /// its allocation made before the lock.
    fn insert_owned(&self, mut task: Box<TaskRecord>) -> Result<Inserted> {
        with_room(&mut task);
        // From the box to the `Arc`'s allocation: one copy of the record.
        let task = Arc::<TaskRecord>::from(task);
        let mut inner = self.lock();
        inner.may_insert(&task)?;
        Ok(inner.insert(task))
    }

    fn update(&self, task: &TaskRecord, expected: TaskState) -> Result<bool> {
        let mut inner = self.lock();
        let changed = inner.change(&task.id, &mut |stored| {
            if stored.state != expected {
                return false;
            }
            TaskRecord::clone_from(stored, task);
            true
        });
        Ok(changed.is_some())
    }

    fn update_with(
        &self,
        id: &TaskId,
        change: &mut dyn FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>> {
        let changed = self.lock().change(id, change).map(Arc::clone);
        Ok(changed.map(|record| TaskRecord::clone(&record)))
    }

    /// Its own record, shared: no copy.
    fn update_shared(
        &self,
        id: &TaskId,
        change: &mut dyn FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<Arc<TaskRecord>>> {
        Ok(self.lock().change(id, change).map(Arc::clone))
    }

    fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let found = self.lock().tasks.get(id).map(Arc::clone);
        Ok(found.map(|record| TaskRecord::clone(&record)))
    }

    fn get_final(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        Ok(self.final_one(id).map(|record| TaskRecord::clone(&record)))
    }

    /// Lends the record outside the lock: a change made meanwhile writes a
    /// copy ([`Arc::make_mut`]), and the record lent stays as it was read.
    fn read_final(&self, id: &TaskId, read: &mut dyn FnMut(&TaskRecord)) -> Result<bool> {
        Ok(self.final_one(id).map(|record| read(&record)).is_some())
    }

    fn by_key(&self, key: &str) -> Result<Option<TaskId>> {
        Ok(self.lock().keys.get(key).copied())
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let inner = self.lock();
        Ok(inner
            .order
            .before(filter.before)
            .filter_map(|id| inner.tasks.get(&id))
            .filter(|t| filter.matches(t))
            .take(filter.page_size())
            .map(|t| TaskRecord::clone(t))
            .collect())
    }

    fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        let mut tasks: Vec<TaskRecord> = self
            .lock()
            .tasks
            .values()
            .filter(|t| !t.state.is_final())
            .map(|t| TaskRecord::clone(t))
            .collect();
        tasks.sort_by_key(|t| t.seq);
        Ok(tasks)
    }

    fn module_in_use(&self, module: &ModuleHash) -> Result<bool> {
        Ok(self
            .lock()
            .tasks
            .values()
            .any(|t| !t.state.is_final() && t.module == *module))
    }

    fn counts(&self) -> Result<StateCounts> {
        Ok(self.lock().counts.counts())
    }

    fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let excess = keep.map_or(0, |keep| (inner.finished.len() as u64).saturating_sub(keep));
        let mut doomed = Vec::new();
        for (i, (finished_at, id)) in inner.finished.iter().enumerate() {
            if finished_at < before || (i as u64) < excess {
                doomed.push((finished_at, id));
            } else {
                break;
            }
        }
        inner.finished.remove_all(&doomed);
        let ids: Vec<TaskId> = doomed.iter().map(|&(_, id)| id).collect();
        inner.order.remove_all(&ids);
        for key in &doomed {
            if let Some(task) = inner.tasks.remove(&key.1) {
                inner.counts.moved(Some(task.state), None);
                if let Some(k) = &task.idempotency_key {
                    inner.keys.remove(k);
                }
            }
        }
        Ok(doomed.len() as u64)
    }

    fn remove_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut removed = Vec::new();
        let mut keys = Vec::new();
        for id in ids {
            let Some(key) = inner.tasks.get(id).and_then(|t| finished_key(t)) else {
                continue;
            };
            keys.push(key);
            if let Some(task) = inner.tasks.remove(id) {
                inner.counts.moved(Some(task.state), None);
                if let Some(k) = &task.idempotency_key
                    && inner.keys.get(k) == Some(id)
                {
                    inner.keys.remove(k);
                }
                removed.push(*id);
            }
        }
        inner.finished.remove_all(&keys);
        inner.order.remove_all(&removed);
        Ok(removed)
    }

    fn gc_modules(&self) -> Result<u64> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let used: std::collections::HashSet<ModuleHash> =
            inner.tasks.values().map(|t| t.module).collect();
        let before = inner.modules.len();
        inner.modules.retain(|hash, _| used.contains(hash));
        Ok((before - inner.modules.len()) as u64)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn flush_blocking(&self) -> Result<()> {
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn changes_in_place(&self) -> bool {
        true
    }
}
