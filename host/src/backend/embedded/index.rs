//! The embedded backend's index of waiting and running tasks, in memory.
//!
//! Heaps may hold stale entries (a task cancelled while queued, a retry
//! rescheduled): an entry counts only if `pending` still holds its task in
//! the matching state and time, so removal is O(1) and the heaps clean
//! themselves as entries reach the top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::task::{Millis, TaskId, TaskRecord, TaskState};

#[derive(Default)]
pub(super) struct Index {
    /// Waiting tasks (queued or scheduled), as stored.
    pending: HashMap<TaskId, TaskRecord>,
    /// Running tasks, as stored (with their lease).
    pub(super) running: HashMap<TaskId, TaskRecord>,
    /// Highest priority first, then lowest sequence (FIFO).
    ready: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
    /// Earliest first.
    delayed: BinaryHeap<Reverse<(Millis, u64, TaskId)>>,
    expiries: BinaryHeap<Reverse<(Millis, TaskId)>>,
}

impl Index {
    /// Indexes a waiting task. Returns whether the timer must look again
    /// (it brings a delay or an expiry earlier than any before).
    pub(super) fn insert(&mut self, record: TaskRecord) -> bool {
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
        self.pending.insert(record.id, record);
        earlier
    }

    pub(super) fn remove_pending(&mut self, id: &TaskId) -> Option<TaskRecord> {
        self.pending.remove(id)
    }

    pub(super) fn pop_ready(&mut self) -> Option<TaskRecord> {
        while let Some((_, _, id)) = self.ready.pop() {
            if self
                .pending
                .get(&id)
                .is_some_and(|r| r.state == TaskState::Queued)
            {
                return self.pending.remove(&id);
            }
        }
        None
    }

    pub(super) fn pop_due(&mut self, now: Millis) -> Option<TaskRecord> {
        while let Some(&Reverse((at, _, id))) = self.delayed.peek() {
            if at > now {
                return None;
            }
            self.delayed.pop();
            if self
                .pending
                .get(&id)
                .is_some_and(|r| r.state == TaskState::Scheduled && r.run_at == at)
            {
                return self.pending.remove(&id);
            }
        }
        None
    }

    pub(super) fn pop_expired(&mut self, now: Millis) -> Option<TaskRecord> {
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now {
                return None;
            }
            self.expiries.pop();
            if self
                .pending
                .get(&id)
                .is_some_and(|r| r.expires_at == Some(at))
            {
                return self.pending.remove(&id);
            }
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
