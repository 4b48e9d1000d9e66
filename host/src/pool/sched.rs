//! The pool's index of waiting and running tasks.
//!
//! Heaps may hold stale entries (a task cancelled while queued, a retry
//! rescheduled): an entry counts only if `pending` still holds its task in
//! the matching state and time, so removal is O(1) and the heaps clean
//! themselves as entries reach the top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::CancellationToken;
use crate::pool::task::{Millis, TaskId, TaskRecord, TaskState};

pub(crate) struct Pending {
    pub(crate) record: TaskRecord,
    /// Whether it holds a unit of the queue's room (backpressure).
    pub(crate) holds_room: bool,
}

pub(crate) struct RunningTask {
    pub(crate) cancel: CancellationToken,
    /// Killed by a pool stop: queue it again rather than mark it cancelled.
    pub(crate) for_stop: bool,
}

#[derive(Default)]
pub(crate) struct Sched {
    pub(crate) pending: HashMap<TaskId, Pending>,
    pub(crate) running: HashMap<TaskId, RunningTask>,
    /// Highest priority first, then lowest sequence (FIFO).
    ready: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
    /// Earliest first.
    delayed: BinaryHeap<Reverse<(Millis, u64, TaskId)>>,
    expiries: BinaryHeap<Reverse<(Millis, TaskId)>>,
}

impl Sched {
    /// Indexes a waiting task. Returns whether the timer must look again
    /// (it brings a delay or an expiry earlier than any before).
    pub(crate) fn insert(&mut self, pending: Pending) -> bool {
        let next = self.next_wake();
        let record = &pending.record;
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
        self.pending.insert(record.id, pending);
        earliest.is_some_and(|e| next.is_none_or(|n| e < n))
    }

    pub(crate) fn remove_pending(&mut self, id: &TaskId) -> Option<Pending> {
        self.pending.remove(id)
    }

    pub(crate) fn pop_ready(&mut self) -> Option<Pending> {
        while let Some((_, _, id)) = self.ready.pop() {
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.record.state == TaskState::Queued)
            {
                return self.pending.remove(&id);
            }
        }
        None
    }

    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<Pending> {
        while let Some(&Reverse((at, _, id))) = self.delayed.peek() {
            if at > now {
                return None;
            }
            self.delayed.pop();
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.record.state == TaskState::Scheduled && p.record.run_at == at)
            {
                return self.pending.remove(&id);
            }
        }
        None
    }

    pub(crate) fn pop_expired(&mut self, now: Millis) -> Option<Pending> {
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now {
                return None;
            }
            self.expiries.pop();
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.record.expires_at == Some(at))
            {
                return self.pending.remove(&id);
            }
        }
        None
    }

    /// When the next delayed task or expiry is due.
    pub(crate) fn next_wake(&self) -> Option<Millis> {
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let expiry = self.expiries.peek().map(|Reverse((at, _))| *at);
        match (delayed, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Finishes per second over the last ten seconds.
#[derive(Debug)]
pub(crate) struct RateWindow {
    start: Instant,
    buckets: [(u64, u64); 10],
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            buckets: [(u64::MAX, 0); 10],
        }
    }
}

impl RateWindow {
    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    pub(crate) fn tick(&mut self) {
        let second = self.second();
        let bucket = &mut self.buckets[(second % 10) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += 1;
    }

    pub(crate) fn rate(&self) -> f64 {
        let now = self.second();
        let window = (now + 1).min(10);
        let count: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now - *second < 10)
            .map(|(_, n)| n)
            .sum();
        count as f64 / window as f64
    }
}
