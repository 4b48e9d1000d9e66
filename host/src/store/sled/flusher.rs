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
    /// The thread waits on [`Shared::requested`]: a new ticket must wake
    /// it. While it flushes, it looks for tickets when it is done, so a
    /// ticket taken meanwhile wakes nobody (a wake is a system call, and
    /// most tickets are taken while a flush is under way).
    sleeping: bool,
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
        let wake = state.sleeping;
        drop(state);
        if wake {
            self.requested.notify_one();
        }
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
                state.sleeping = true;
                state = self
                    .requested
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                state.sleeping = false;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// A flusher that flushes on its own only once an hour: every flush
    /// seen within the test was asked for.
    fn hourly(flushes: Arc<AtomicU64>) -> Flusher {
        Flusher::start(
            Box::new(move || {
                flushes.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            }),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    /// Runs `f` on a thread and waits at most 20 s for it: a ticket that
    /// did not wake the sleeping thread would leave it waiting an hour.
    fn within_20s(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the flush never came: the ticket did not wake the flushing thread");
    }

    #[test]
    fn a_ticket_wakes_the_sleeping_thread() {
        let flushes = Arc::new(AtomicU64::new(0));
        let flusher = Arc::new(hourly(flushes.clone()));
        for round in 1..=3 {
            // Long enough for the thread to be asleep again.
            std::thread::sleep(Duration::from_millis(50));
            let waiting = flusher.clone();
            within_20s(move || waiting.flush().unwrap());
            assert_eq!(flushes.load(Ordering::SeqCst), round);
        }
    }

    #[test]
    fn tickets_taken_during_a_flush_get_a_flush_of_their_own() {
        // Each flush takes 20 ms: the callers below take their tickets
        // while the first one's flush is under way, when the thread is not
        // asleep and nobody wakes it.
        let flushes = Arc::new(AtomicU64::new(0));
        let counted = flushes.clone();
        let flusher = Arc::new(
            Flusher::start(
                Box::new(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                }),
                Duration::from_secs(3600),
            )
            .unwrap(),
        );
        let callers: Vec<_> = (0..8)
            .map(|i| {
                let flusher = flusher.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(5 * i));
                    flusher.flush().unwrap();
                })
            })
            .collect();
        within_20s(move || {
            for caller in callers {
                caller.join().unwrap();
            }
        });
        let stats = flusher.stats();
        assert_eq!(stats.waiters, 8);
        assert_eq!(stats.flushes, flushes.load(Ordering::SeqCst));
    }
}
