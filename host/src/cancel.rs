//! A run's cancel flag: what the executor's queue, its worker, the pool's
//! running set and the run's epoch callback share to kill one run.
//!
//! It is not a `tokio_util` [`CancellationToken`]: a token's `is_cancelled`,
//! clone and drop each lock its tree node, and a new token is two
//! allocations. A run checks its flag at its start, as it races a host call
//! and at every epoch tick, from a worker's core, on a line the caller's
//! core wrote when it made the flag: here that is one atomic load, and the
//! flag one allocation with its `Arc`. A token is made only when someone
//! asks for one ([`CancelFlag::token`]) or brings one ([`CancelFlag::linked`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One run's cancel flag (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    /// Set by [`CancelFlag::cancel`].
    cancelled: AtomicBool,
    /// Wakes the runs waiting in [`CancelFlag::cancelled`] when the flag
    /// is set or a token is linked.
    changed: Notify,
    /// A token whose cancel also cancels the run, and which
    /// [`CancelFlag::cancel`] cancels: the caller's (`Executor::run`) or
    /// one made on request (`Execution::cancel_token`).
    linked: OnceLock<CancellationToken>,
}

impl CancelFlag {
    /// A flag not set, with no token.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A flag that is set as soon as `token` is cancelled.
    pub(crate) fn linked(token: CancellationToken) -> Self {
        let flag = Self::default();
        let _ = flag.linked.set(token);
        flag
    }

    /// Whether the run is cancelled: the flag, or the linked token.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self
                .linked
                .get()
                .is_some_and(CancellationToken::is_cancelled)
    }

    /// Cancels the run, and the linked token if there is one.
    pub(crate) fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
        // With the fence in `token`: a token made meanwhile is seen here,
        // or sees the flag there, and is cancelled either way.
        fence(Ordering::SeqCst);
        if let Some(token) = self.linked.get() {
            token.cancel();
        }
    }

    /// A token that cancels the run when cancelled, and is cancelled when
    /// the run is: the linked one, made now if there is none yet.
    pub(crate) fn token(&self) -> CancellationToken {
        let mut made = false;
        let token = self
            .linked
            .get_or_init(|| {
                made = true;
                CancellationToken::new()
            })
            .clone();
        if made {
            // A run waiting in `cancelled` waits for this token from now on.
            self.changed.notify_waiters();
            fence(Ordering::SeqCst);
            if self.cancelled.load(Ordering::Acquire) {
                token.cancel();
            }
        }
        token
    }

    /// Returns once the run is cancelled.
    pub(crate) async fn cancelled(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the checks: a change after them wakes it.
            changed.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            match self.linked.get() {
                Some(token) => tokio::select! {
                    () = token.cancelled() => return,
                    () = changed => {}
                },
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Waits up to 5 s for `flag` to say it is cancelled, from a waiter
    /// started before `act`.
    fn waiter_sees(flag: Arc<CancelFlag>, act: impl FnOnce(&CancelFlag) + Send + 'static) {
        runtime().block_on(async {
            let waiting = {
                let flag = flag.clone();
                tokio::spawn(async move { flag.cancelled().await })
            };
            // Let the waiter register before the change.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiting.is_finished());
            let acting = flag.clone();
            std::thread::spawn(move || act(&acting)).join().unwrap();
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the waiter saw the cancel")
                .unwrap();
        });
        assert!(flag.is_cancelled());
    }

    #[test]
    fn a_cancel_wakes_a_waiter_and_cancels_the_linked_token() {
        let token = CancellationToken::new();
        let flag = Arc::new(CancelFlag::linked(token.clone()));
        assert!(!flag.is_cancelled());
        waiter_sees(flag, CancelFlag::cancel);
        assert!(token.is_cancelled());
    }

    #[test]
    fn a_linked_token_cancelled_cancels_the_run() {
        let token = CancellationToken::new();
        let flag = Arc::new(CancelFlag::linked(token.clone()));
        waiter_sees(flag, move |_| token.cancel());
    }

    /// A token asked for while a run already waits: the waiter takes it up.
    #[test]
    fn a_token_made_while_a_run_waits_cancels_it() {
        let flag = Arc::new(CancelFlag::new());
        waiter_sees(flag, |flag| flag.token().cancel());
    }

    #[test]
    fn a_token_made_after_the_cancel_is_cancelled() {
        let flag = CancelFlag::new();
        flag.cancel();
        assert!(flag.token().is_cancelled());
        runtime().block_on(flag.cancelled());
    }
}
