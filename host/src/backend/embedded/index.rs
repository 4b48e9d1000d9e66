//! The embedded backend's index of waiting and running tasks, in memory.
//!
//! A waiting task is indexed by what scheduling needs (its state, run time
//! and expiry; priority and sequence in the heaps), about a hundred bytes,
//! and never by its record: the store holds that, and a task's record is
//! read from it when the task is claimed, promoted, expired or cancelled.
//! So a queue of a million tasks costs this index some hundred MiB less
//! than keeping the records, whatever their inputs and labels. Running
//! tasks (as many as there are workers) are kept whole, with their lease.
//!
//! Heaps may hold stale entries (a task cancelled while queued, a retry
//! rescheduled): an entry counts only if `pending` still holds its task in
//! the matching state and time, so removal is O(1) and the heaps clean
//! themselves as entries reach the top.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::task::{IdMap, Millis, TaskId, TaskRecord, TaskState};

/// What the index keeps of a waiting task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Waiting {
    state: TaskState,
    run_at: Millis,
    expires_at: Option<Millis>,
}

impl Waiting {
    /// Whether `record` is the task as indexed (the store and the index
    /// agree).
    pub(super) fn matches(&self, record: &TaskRecord) -> bool {
        record.state == self.state
            && record.run_at == self.run_at
            && record.expires_at == self.expires_at
    }
}

#[derive(Default)]
pub(super) struct Index {
    /// Waiting tasks (queued or scheduled).
    pending: IdMap<Waiting>,
    /// Running tasks, as stored (with their lease).
    pub(super) running: IdMap<TaskRecord>,
    /// Highest priority first, then lowest sequence (FIFO).
    ready: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
    /// Earliest first.
    delayed: BinaryHeap<Reverse<(Millis, u64, TaskId)>>,
    expiries: BinaryHeap<Reverse<(Millis, TaskId)>>,
}

impl Index {
    /// Indexes a waiting task. Returns whether the timer must look again
    /// (it brings a delay or an expiry earlier than any before).
    pub(super) fn insert(&mut self, record: &TaskRecord) -> bool {
        let next = self.next_wake();
        let mut earliest = None;
        match record.state {
            TaskState::Queued => {
                self.ready
                    .push((record.priority, Reverse(record.seq), record.id));
            }
            _ => {
                self.delayed
                    .push(Reverse((record.run_at, record.seq, record.id)));
                earliest = Some(record.run_at);
            }
        }
        if let Some(at) = record.expires_at {
            self.expiries.push(Reverse((at, record.id)));
            earliest = Some(earliest.map_or(at, |e: Millis| e.min(at)));
        }
        let earlier = earliest.is_some_and(|e| next.is_none_or(|n| e < n));
        self.pending.insert(
            record.id,
            Waiting {
                state: record.state,
                run_at: record.run_at,
                expires_at: record.expires_at,
            },
        );
        earlier
    }

    /// The waiting task `id`, as indexed.
    pub(super) fn pending(&self, id: &TaskId) -> Option<Waiting> {
        self.pending.get(id).copied()
    }

    /// Whether `id` is waiting or running.
    pub(super) fn holds(&self, id: &TaskId) -> bool {
        self.pending.contains_key(id) || self.running.contains_key(id)
    }

    /// Takes `id` out of the waiting tasks (its heap entries turn stale).
    pub(super) fn remove_pending(&mut self, id: &TaskId) -> Option<Waiting> {
        self.pending.remove(id)
    }

    /// The next ready task, highest priority first, left in the index
    /// (take it with [`Index::remove_pending`]).
    pub(super) fn peek_ready(&mut self) -> Option<TaskId> {
        while let Some(&(_, _, id)) = self.ready.peek() {
            if self
                .pending
                .get(&id)
                .is_some_and(|w| w.state == TaskState::Queued)
            {
                return Some(id);
            }
            self.ready.pop();
        }
        None
    }

    /// A scheduled task due at `now`, left in the index.
    pub(super) fn peek_due(&mut self, now: Millis) -> Option<TaskId> {
        while let Some(&Reverse((at, _, id))) = self.delayed.peek() {
            if at > now {
                return None;
            }
            if self
                .pending
                .get(&id)
                .is_some_and(|w| w.state == TaskState::Scheduled && w.run_at == at)
            {
                return Some(id);
            }
            self.delayed.pop();
        }
        None
    }

    /// A waiting task past its expiry at `now`, left in the index.
    pub(super) fn peek_expired(&mut self, now: Millis) -> Option<TaskId> {
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now {
                return None;
            }
            if self
                .pending
                .get(&id)
                .is_some_and(|w| w.expires_at == Some(at))
            {
                return Some(id);
            }
            self.expiries.pop();
        }
        None
    }

    /// When the next delayed task or expiry is due.
    pub(super) fn next_wake(&self) -> Option<Millis> {
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let expiry = self.expiries.peek().map(|Reverse((at, _))| *at);
        match (delayed, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
