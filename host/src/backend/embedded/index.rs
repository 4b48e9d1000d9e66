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
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use crate::task::{IdMap, Lease, Millis, TaskId, TaskRecord, TaskState};

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

/// What [`Index::insert`] reads of a waiting task's record.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    id: TaskId,
    state: TaskState,
    priority: i32,
    seq: u64,
    run_at: Millis,
    expires_at: Option<Millis>,
}

impl Entry {
    /// The entry of `record`.
    pub(super) fn of(record: &TaskRecord) -> Self {
        Self {
            id: record.id,
            state: record.state,
            priority: record.priority,
            seq: record.seq,
            run_at: record.run_at,
            expires_at: record.expires_at,
        }
    }
}

/// A running task in the index.
pub(super) struct Running {
    /// Its lease: renewed here, not in the store (a heartbeat writes
    /// nothing).
    pub(super) lease: Lease,
    /// Whether a cancel was asked for (written to the store as well).
    pub(super) cancel_requested: bool,
    /// The record as stored, for a store that does not change records in
    /// place ([`Store::changes_in_place`](crate::store::Store::changes_in_place)):
    /// its end is written from this copy, without reading the record back.
    /// `None` on a store that changes them in place. Shared with the
    /// claim (it is only read), so that the running set's entries are a
    /// few words, not a record each, and a claim makes no copy for it.
    pub(super) record: Option<Arc<TaskRecord>>,
}

impl Running {
    /// `record`, just claimed under its lease; keeps it if `keep`.
    pub(super) fn new(record: &Arc<TaskRecord>, keep: bool) -> Self {
        Running {
            lease: record.lease.expect("a claimed task holds a lease"),
            cancel_requested: record.cancel_requested,
            record: keep.then(|| Arc::clone(record)),
        }
    }

    /// Whether `lease` is the one this task runs under.
    pub(super) fn is_held_by(&self, lease: &Lease) -> bool {
        self.lease.token == lease.token
    }
}

#[derive(Default)]
pub(super) struct Index {
    /// Waiting tasks (queued or scheduled).
    pending: IdMap<Waiting>,
    /// Running tasks.
    pub(super) running: IdMap<Running>,
    /// Highest priority first, then lowest sequence (FIFO).
    ready: Ready,
    /// Earliest first.
    delayed: BinaryHeap<Reverse<(Millis, u64, TaskId)>>,
    expiries: BinaryHeap<Reverse<(Millis, TaskId)>>,
}

impl Index {
    /// Indexes a waiting task. Returns whether the timer must look again
    /// (it brings a delay or an expiry earlier than any before).
    pub(super) fn insert(&mut self, record: &TaskRecord) -> bool {
        self.insert_entry(Entry::of(record))
    }

    /// [`Index::insert`] of what the index needs of a record, taken before
    /// the record was given to the store.
    pub(super) fn insert_entry(&mut self, entry: Entry) -> bool {
        let next = self.next_wake();
        let mut earliest = None;
        match entry.state {
            TaskState::Queued => {
                self.ready.push(entry.priority, entry.seq, entry.id);
            }
            _ => {
                self.delayed
                    .push(Reverse((entry.run_at, entry.seq, entry.id)));
                earliest = Some(entry.run_at);
            }
        }
        if let Some(at) = entry.expires_at {
            self.expiries.push(Reverse((at, entry.id)));
            earliest = Some(earliest.map_or(at, |e: Millis| e.min(at)));
        }
        let earlier = earliest.is_some_and(|e| next.is_none_or(|n| e < n));
        self.pending.insert(
            entry.id,
            Waiting {
                state: entry.state,
                run_at: entry.run_at,
                expires_at: entry.expires_at,
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

    /// The next ready task, highest priority first, and what the index
    /// keeps of it, left in the index (take it with
    /// [`Index::remove_pending`]).
    pub(super) fn peek_ready(&mut self) -> Option<(TaskId, Waiting)> {
        while let Some(id) = self.ready.peek() {
            match self.pending.get(&id) {
                Some(waiting) if waiting.state == TaskState::Queued => return Some((id, *waiting)),
                _ => self.ready.pop(),
            }
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

/// The ready tasks: highest priority first, then lowest sequence (FIFO).
///
/// Tasks mostly become ready in the order of their sequence numbers (a
/// submission, the queue rebuilt at open): those go to the back of a deque
/// of their priority and leave from its front, in constant time and in
/// memory order. A task that comes out of order (a retry whose backoff
/// ended, a task put back by a stop) goes to a heap instead. A heap alone
/// would cost every claim a walk down its levels, one cache miss each once
/// the queue is deep: the deepest cost of a claim with tens of thousands
/// of tasks queued.
#[derive(Default)]
struct Ready {
    /// Per priority, in increasing sequence; no lane is empty.
    lanes: BTreeMap<i32, VecDeque<(u64, TaskId)>>,
    /// The tasks that came out of order.
    heap: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
}

impl Ready {
    fn push(&mut self, priority: i32, seq: u64, id: TaskId) {
        let lane = self.lanes.entry(priority).or_default();
        if lane.back().is_none_or(|&(last, _)| last < seq) {
            lane.push_back((seq, id));
        } else {
            self.heap.push((priority, Reverse(seq), id));
        }
    }

    /// Where the first task is: its lane's priority, or `None` for the heap.
    fn first(&self) -> Option<Option<i32>> {
        let lane = self
            .lanes
            .last_key_value()
            .map(|(&priority, lane)| (priority, lane.front().expect("no lane is empty").0));
        let heap = self
            .heap
            .peek()
            .map(|&(priority, Reverse(seq), _)| (priority, seq));
        match (lane, heap) {
            (None, None) => None,
            (Some((priority, _)), None) => Some(Some(priority)),
            (None, Some(_)) => Some(None),
            (Some((lp, ls)), Some((hp, hs))) => {
                Some(((lp, Reverse(ls)) > (hp, Reverse(hs))).then_some(lp))
            }
        }
    }

    fn peek(&self) -> Option<TaskId> {
        Some(match self.first()? {
            Some(priority) => self.lanes[&priority].front().expect("no lane is empty").1,
            None => self.heap.peek().expect("found above").2,
        })
    }

    fn pop(&mut self) {
        match self.first() {
            Some(Some(priority)) => {
                let lane = self.lanes.get_mut(&priority).expect("found above");
                lane.pop_front();
                if lane.is_empty() {
                    self.lanes.remove(&priority);
                }
            }
            Some(None) => {
                self.heap.pop();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pops everything from `ready`, in order.
    fn drain(ready: &mut Ready) -> Vec<TaskId> {
        std::iter::from_fn(|| {
            let id = ready.peek()?;
            ready.pop();
            Some(id)
        })
        .collect()
    }

    #[test]
    fn ready_tasks_leave_by_priority_then_sequence_whatever_order_they_came_in() {
        let ids: Vec<TaskId> = (0..12).map(|_| TaskId::new()).collect();
        // (priority, seq) of each id, entered in this order: in sequence,
        // then out of it (retries), across three priorities.
        let entries = [
            (0, 10),
            (0, 11),
            (5, 12),
            (0, 14),
            (0, 3), // out of order: before everything at priority 0
            (5, 13),
            (-1, 1),
            (0, 12), // out of order, between 11 and 14
            (5, 2),  // out of order
            (0, 20),
            (-1, 0), // out of order
            (5, 13), // the same sequence twice (not made, but must not be lost)
        ];
        let mut ready = Ready::default();
        for (id, &(priority, seq)) in ids.iter().zip(&entries) {
            ready.push(priority, seq, *id);
        }
        let mut expected: Vec<(i32, u64, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, &(p, s))| (p, s, i))
            .collect();
        expected.sort_by_key(|&(p, s, _)| (Reverse(p), s));
        let got = drain(&mut ready);
        assert_eq!(got.len(), ids.len());
        let order: Vec<(i32, u64)> = got
            .iter()
            .map(|id| entries[ids.iter().position(|i| i == id).unwrap()])
            .collect();
        let want: Vec<(i32, u64)> = expected.iter().map(|&(p, s, _)| (p, s)).collect();
        assert_eq!(order, want);
        assert!(ready.lanes.is_empty() && ready.heap.is_empty());
    }

    #[test]
    fn the_queue_skips_tasks_no_longer_waiting() {
        let module = crate::ModuleHash::from_bytes([7; 32]);
        let record = |seq| {
            let spec = crate::TaskSpec::new(module, Vec::new());
            let mut record = TaskRecord::new(spec, module, crate::Limits::default(), 1);
            record.seq = seq;
            record
        };
        let mut index = Index::default();
        let records: Vec<TaskRecord> = [2, 3, 4].into_iter().map(record).collect();
        for record in &records {
            index.insert(record);
        }
        // The first leaves the queue (cancelled): the next is the second.
        index.remove_pending(&records[0].id);
        assert_eq!(index.peek_ready().map(|(id, _)| id), Some(records[1].id));
        index.remove_pending(&records[1].id);
        // One that comes out of order (an earlier sequence) goes first.
        let early = record(1);
        index.insert(&early);
        assert_eq!(index.peek_ready().map(|(id, _)| id), Some(early.id));
        index.remove_pending(&early.id);
        assert_eq!(index.peek_ready().map(|(id, _)| id), Some(records[2].id));
        index.remove_pending(&records[2].id);
        assert!(index.peek_ready().is_none());
        assert!(index.ready.lanes.is_empty() && index.ready.heap.is_empty());
    }
}
