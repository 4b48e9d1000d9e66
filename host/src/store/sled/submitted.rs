//! Records as they were submitted, until their first change: the newest
//! few, kept decoded.
//!
//! A claim reads its task's record (the queue's index keeps only what
//! scheduling needs, so that a queued task costs a few hundred bytes, not
//! its record). Read from the overlay or sled, that record is found,
//! checked and decoded: about 8k instructions a claim on the durable
//! path, where a copy of the record costs under 1k. So the store keeps a
//! copy of each record it was given to insert, for the newest
//! [`MAX_RECORDS`] of them whose record is small, and a read of one of
//! those copies it. Any change of the task's record (its claim, a cancel,
//! its removal) drops the copy first, under the store's write lock, so a
//! copy is always the stored record; a task whose copy was dropped, or
//! never kept (a deep queue's older tasks, a large record), is read from
//! the store as before.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::task::{IdMap, TaskId, TaskRecord};

/// Records kept at most: a queue drained about as fast as it is filled
/// finds its tasks here; a deeper one reads its older tasks, claimed
/// first, from the store.
pub(super) const MAX_RECORDS: usize = 2048;

/// Only records of at most about this size encoded are kept, so that the
/// copies hold a few MiB at most.
pub(super) const MAX_RECORD_BYTES: usize = 2048;

#[derive(Debug, Default)]
pub(super) struct Submitted {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: IdMap<TaskRecord>,
    /// Ids in the order kept, oldest first; an id whose record was
    /// dropped since stays until its turn to leave.
    order: VecDeque<TaskId>,
}

impl Submitted {
    /// Copies of those of `tasks` small enough to keep: made before the
    /// store's write lock is taken, and kept by [`Submitted::keep`] under
    /// it once they are stored.
    pub(super) fn copies(tasks: &[TaskRecord]) -> Vec<Option<TaskRecord>> {
        tasks
            .iter()
            .map(|task| {
                (super::envelope::task_size(task) <= MAX_RECORD_BYTES).then(|| task.clone())
            })
            .collect()
    }

    /// Keeps `copies`, of records just inserted, in this order. Called
    /// under the store's write lock, so that no change of those records
    /// comes between their insertion and their copies being kept.
    pub(super) fn keep(&self, copies: impl IntoIterator<Item = TaskRecord>) {
        let mut inner = self.inner.lock();
        for copy in copies {
            inner.order.push_back(copy.id);
            inner.records.insert(copy.id, copy);
        }
        while inner.order.len() > MAX_RECORDS {
            if let Some(oldest) = inner.order.pop_front() {
                inner.records.remove(&oldest);
            }
        }
    }

    /// The record of `id` as submitted, if it is kept.
    pub(super) fn get(&self, id: &TaskId) -> Option<TaskRecord> {
        self.inner.lock().records.get(id).cloned()
    }

    /// Drops the copy of `id`'s record: it is about to change (called under
    /// the store's write lock, before the change is applied).
    pub(super) fn forget(&self, id: &TaskId) {
        let mut inner = self.inner.lock();
        if !inner.records.is_empty() {
            inner.records.remove(id);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.inner.lock().records.len()
    }
}
