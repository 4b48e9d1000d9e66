//! Group commit: one thread writes the store's log out and `fdatasync`s it
//! for everyone who asked.
//!
//! A caller takes a ticket after its writes are in the log's buffer, then
//! waits (blocking or async) for a flush that started after the ticket was
//! taken. The flushing thread starts a flush as soon as there is a ticket
//! no flush covers, and one flush covers every ticket taken before it
//! started: a burst of callers costs a few fsyncs, not one each, and no
//! caller's thread does the I/O (an async caller never blocks its runtime).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::{Error, Result};

/// How many failed flushes are remembered, so that a late waiter still
/// learns that the flush covering its ticket failed.
const FAILURES_KEPT: usize = 64;

pub(super) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for tickets.
    requested: Condvar,
    /// Blocking callers wait here for flushes.
    flushed: Condvar,
    /// Async callers wait here for flushes.
    flushed_async: Notify,
}

#[derive(Default)]
struct State {
    /// The last ticket handed out.
    tickets: u64,
    /// Every ticket up to this one is covered by a finished flush.
    covered: u64,
    /// Flushes made, and what they carried.
    stats: FlushStats,
    /// `(first ticket, last ticket, error)` of recent failed flushes.
    failures: VecDeque<(u64, u64, String)>,
    stop: bool,
}

impl State {
    /// The outcome for `ticket`, once a flush covered it.
    fn outcome(&self, ticket: u64) -> Option<Result<()>> {
        if self.covered < ticket {
            return None;
        }
        let failed = self
            .failures
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&ticket));
        Some(match failed {
            None => Ok(()),
            Some((_, _, e)) => Err(Error::Store(format!("flushing the store to disk: {e}"))),
        })
    }
}

impl Flusher {
    /// Starts the flushing thread for `db`.
    /// Starts the flushing thread: `flush` makes every write before it
    /// durable and says how many bytes it wrote; it also runs every
    /// `every` when nobody asked, so that writes nobody waits for reach
    /// the disk too.
    pub(super) fn start(flush: Box<FlushFn>, every: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            requested: Condvar::new(),
            flushed: Condvar::new(),
            flushed_async: Notify::new(),
        });
        let thread = std::thread::Builder::new()
            .name("wpool-flush".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run(flush, every)
            })
            .map_err(|e| Error::Store(format!("cannot start the flushing thread: {e}")))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// Waits, blocking the thread, until every write made before the call
    /// is on disk.
    pub(super) fn flush(&self) -> Result<()> {
        let ticket = self.shared.ticket();
        let mut state = self.shared.lock();
        loop {
            if let Some(outcome) = state.outcome(ticket) {
                return outcome;
            }
            state = self
                .shared
                .flushed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until every write made before the call is on disk.
    pub(super) async fn flush_async(&self) -> Result<()> {
        let ticket = self.shared.ticket();
        loop {
            let notified = self.shared.flushed_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.shared.lock().outcome(ticket) {
                return outcome;
            }
            notified.await;
        }
    }

    /// How many flushes were made.
    pub(super) fn flushes(&self) -> u64 {
        self.shared.lock().stats.flushes
    }

    /// What the flushes so far carried and cost.
    pub(super) fn stats(&self) -> FlushStats {
        self.shared.lock().stats.clone()
    }
}

impl Flusher {
    /// Stops the thread; a flush under way ends first.
    pub(super) fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.requested.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the flushing thread calls: makes every write so far durable;
/// the bytes it wrote, or why it failed.
pub(super) type FlushFn = dyn FnMut() -> std::result::Result<u64, String> + Send;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ticket(&self) -> u64 {
        let mut state = self.lock();
        state.tickets += 1;
        let ticket = state.tickets;
        drop(state);
        self.requested.notify_one();
        ticket
    }

    fn run(&self, mut flush: Box<FlushFn>, every: Duration) {
        let mut last = Instant::now();
        loop {
            let mut state = self.lock();
            while state.covered == state.tickets && !state.stop {
                let wait = every.saturating_sub(last.elapsed());
                if wait.is_zero() {
                    break;
                }
                state = self
                    .requested
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if state.covered == state.tickets {
                if state.stop {
                    // Stopping, and nobody waits: what is left is written
                    // out all the same, so that it is on disk even if the
                    // store's close cannot put it in the database.
                    drop(state);
                    if let Err(e) = flush() {
                        tracing::error!(error = %e, "flushing the store to disk on close failed");
                    }
                    return;
                }
                // Nobody asked: write out what nobody waits for.
                drop(state);
                last = Instant::now();
                match flush() {
                    Ok(0) => {}
                    Ok(bytes) => self.lock().stats.record(0, bytes, last.elapsed()),
                    Err(e) => tracing::error!(error = %e, "flushing the store to disk failed"),
                }
                continue;
            }
            // Every ticket up to here was taken after its writes: this
            // flush covers them.
            let (first, last_ticket) = (state.covered + 1, state.tickets);
            drop(state);
            let started = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut flush));
            let took = started.elapsed();
            last = Instant::now();
            let mut state = self.lock();
            state.covered = last_ticket;
            let bytes = match &result {
                Ok(Ok(bytes)) => *bytes,
                _ => 0,
            };
            state.stats.record(last_ticket - first + 1, bytes, took);
            let error = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("the flush panicked".to_string()),
            };
            if let Some(error) = error {
                tracing::error!(error = %error, "flushing the store to disk failed");
                if state.failures.len() == FAILURES_KEPT {
                    state.failures.pop_front();
                }
                state.failures.push_back((first, last_ticket, error));
            }
            drop(state);
            self.flushed.notify_all();
            self.flushed_async.notify_waiters();
        }
    }
}

/// What the group commits of a [`SledStore`](super::SledStore) carried
/// and cost, since it was opened: for the benchmark's breakdown of a
/// durable task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Flushes made (callers that shared one count once; a flush nobody
    /// waited for, of writes made meanwhile, counts too).
    pub flushes: u64,
    /// Callers served: each waited for one flush.
    pub waiters: u64,
    /// Bytes written to the store's log in those flushes.
    pub bytes: u64,
    /// Time spent flushing (writing and fsync), in total.
    pub busy: Duration,
    /// The longest flush.
    pub longest: Duration,
    /// Flushes by bytes written: up to 4 KiB, 64 KiB, 1 MiB, and more.
    pub by_size: [SizeClass; 4],
}

/// The flushes of one size class of [`FlushStats::by_size`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeClass {
    /// Flushes in the class.
    pub flushes: u64,
    /// Bytes they wrote.
    pub bytes: u64,
    /// Time they took.
    pub busy: Duration,
}

impl FlushStats {
    /// The upper bound of each of [`FlushStats::by_size`]'s classes.
    pub const CLASS_LIMITS: [u64; 4] = [4 << 10, 64 << 10, 1 << 20, u64::MAX];

    fn record(&mut self, waiters: u64, bytes: u64, took: Duration) {
        self.flushes += 1;
        self.waiters += waiters;
        self.bytes += bytes;
        self.busy += took;
        self.longest = self.longest.max(took);
        let class = Self::CLASS_LIMITS
            .iter()
            .position(|limit| bytes <= *limit)
            .unwrap_or(3);
        let class = &mut self.by_size[class];
        class.flushes += 1;
        class.bytes += bytes;
        class.busy += took;
    }
}
