//! The pool's event stream.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::Outcome;
use crate::task::{Millis, TaskId, TaskRecord, TaskState};

/// Something that happened to a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The task.
    pub id: TaskId,
    /// When, in milliseconds since the Unix epoch.
    pub at: Millis,
    /// What.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened to a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// Accepted (and durable, with a durable store).
    Submitted,
    /// An attempt started.
    Started {
        /// 1 for the first.
        attempt: u32,
    },
    /// The guest reported progress.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all (0 when unknown).
        total: u64,
    },
    /// An attempt failed; another is scheduled.
    Retrying {
        /// The attempt that failed.
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// When the next attempt may start.
        run_at: Millis,
    },
    /// Finished with success.
    Succeeded,
    /// Finished with failure.
    Failed {
        /// How the last attempt ended.
        outcome: Outcome,
    },
    /// Cancelled.
    Cancelled,
    /// Not started before its expiry.
    Expired,
    /// Stopped by a graceful pool stop while it ran; queued again, not
    /// counted as an attempt or an interruption.
    Requeued,
    /// Its run was lost with its host (a crash, a lease not renewed in
    /// time); queued again, not counted as an attempt.
    Interrupted {
        /// How many runs of the task were lost so far.
        interruptions: u32,
    },
}

impl EventKind {
    /// The event of a task that reached its final state.
    pub(crate) fn finished(record: &TaskRecord) -> Self {
        match record.state {
            TaskState::Succeeded => EventKind::Succeeded,
            TaskState::Cancelled => EventKind::Cancelled,
            TaskState::Expired => EventKind::Expired,
            _ => EventKind::Failed {
                outcome: record
                    .outcome
                    .clone()
                    .unwrap_or(Outcome::HostError("no outcome recorded".into())),
            },
        }
    }
}

/// Why [`Events::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// The subscriber fell behind and this many events were dropped for it
    /// (the stream goes on after them).
    #[error("missed {0} events: the subscriber fell behind")]
    Lagged(u64),
    /// The pool is gone.
    #[error("the pool is closed")]
    Closed,
}

/// A subscription to the pool's events ([`Pool::subscribe`](crate::Pool::subscribe)).
///
/// Events of one task that this pool emitted arrive in the order they
/// happened; on a shared queue, the events of other hosts are passed on as
/// they are heard, which may interleave with this pool's own (a
/// `Submitted` from another host after this pool's `Started`). A subscriber that
/// falls more than 16,384 events behind is told how many it missed.
#[derive(Debug)]
pub struct Events(pub(crate) broadcast::Receiver<Event>);

impl Events {
    /// The next event.
    pub async fn recv(&mut self) -> Result<Event, EventsError> {
        self.0.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventsError::Lagged(n),
            broadcast::error::RecvError::Closed => EventsError::Closed,
        })
    }

    /// The next event if there is one already.
    pub fn try_recv(&mut self) -> Result<Option<Event>, EventsError> {
        match self.0.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(EventsError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(EventsError::Closed),
        }
    }
}

/// Streams the events of the other hosts sharing the queue
/// ([`Backend::remote_events`](crate::backend::Backend::remote_events)) to
/// this pool's subscribers, and hands a task another host finished to this
/// pool's waiters at once (they would otherwise find it at their next
/// poll). Ends with the pool.
pub(super) async fn forward_remote(
    inner: std::sync::Weak<super::Inner>,
    mut remote: broadcast::Receiver<Event>,
) {
    loop {
        let received = tokio::select! {
            received = remote.recv() => received,
            // Look now and then whether the pool is gone.
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if inner.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(pool) = inner.upgrade() else { return };
        match received {
            Ok(event) => {
                let final_kind = matches!(
                    event.kind,
                    EventKind::Succeeded
                        | EventKind::Failed { .. }
                        | EventKind::Cancelled
                        | EventKind::Expired
                );
                let id = event.id;
                pool.send_event(event);
                if final_kind && pool.has_waiters(id) {
                    let weak = inner.clone();
                    pool.executor.handle().spawn(async move {
                        let Some(pool) = weak.upgrade() else { return };
                        if let Ok(Some(record)) = pool.backend.get(&id).await
                            && record.state.is_final()
                        {
                            pool.wake_waiters(&record);
                        }
                    });
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(
                events = n,
                "missed events of other hosts: this host fell behind"
            ),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
