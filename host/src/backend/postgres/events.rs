//! The pool's events, shared between the hosts of one database.
//!
//! Every host publishes the events of its own pool ([`Backend::publish`]:
//! submitted, started, progress, retrying, finished, ...) with
//! `NOTIFY wpool_events`, and hears the other hosts' on its listening
//! connection ([`listen`](super::listen)); its pool streams them beside its
//! own. So `/v1/events` (or [`Pool::subscribe`](crate::Pool::subscribe)) on
//! any host shows the whole queue: a task submitted on one host and run on
//! another shows `submitted` then `started` then `succeeded` on every host.
//!
//! Publishing never holds up the pool: an event is handed to a bounded
//! channel, and a task of the backend sends what gathered in one
//! `pg_notify` per 7,900 bytes (PostgreSQL's payload limit is 8,000).
//! Events are a view, not the truth, and are best effort across hosts:
//! when the database is out of reach, or a host falls 16,384 events
//! behind, events are dropped (and counted in a warning), while the task
//! records stay exact. Events of one task that happened on different hosts
//! arrive in the order their hosts published them, which may differ from
//! the order of their `at` by the time one batch takes.
//!
//! [`Backend::publish`]: crate::backend::Backend::publish

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::{Event, EventKind, Outcome};

/// The channel of the pool's events.
pub(super) const CHANNEL: &str = "wpool_events";

/// The most bytes of one `pg_notify` payload (the server allows < 8,000).
const MAX_PAYLOAD: usize = 7_900;

/// How many events may wait to be published, and how far behind a
/// subscriber to other hosts' events may fall.
const BUFFER: usize = 16_384;

/// The most bytes of an outcome's message in a published event; longer
/// ones are cut (the record keeps the whole message).
const MAX_MESSAGE: usize = 2_048;

/// One host's side of the shared events.
pub(super) struct EventBus {
    /// This backend's mark on what it publishes, so that it can skip its
    /// own events when it hears them back.
    origin: u64,
    outgoing: mpsc::Sender<Event>,
    remote: broadcast::Sender<Event>,
    /// Events not published because the channel was full.
    dropped: AtomicU64,
}

/// What one notification carries.
#[derive(Deserialize)]
struct Batch {
    #[serde(rename = "o")]
    origin: u64,
    #[serde(rename = "e")]
    events: Vec<Event>,
}

impl EventBus {
    /// The bus, and the receiving end that [`publish`] drains.
    pub(super) fn new() -> (Self, mpsc::Receiver<Event>) {
        let (outgoing, receiver) = mpsc::channel(BUFFER);
        // Random per backend, also for several in one process.
        let origin = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let bus = Self {
            origin,
            outgoing,
            remote: broadcast::channel(BUFFER).0,
            dropped: AtomicU64::new(0),
        };
        (bus, receiver)
    }

    /// Queues `event` to be published; drops it if too many wait.
    pub(super) fn publish(&self, event: &Event) {
        if self.outgoing.try_send(event.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A subscription to the other hosts' events.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.remote.subscribe()
    }

    /// A notification on [`CHANNEL`] was heard.
    pub(super) fn heard(&self, payload: &str) {
        match serde_json::from_str::<Batch>(payload) {
            Ok(batch) if batch.origin == self.origin => {}
            Ok(batch) => {
                for event in batch.events {
                    // No subscriber is not an error.
                    let _ = self.remote.send(event);
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "a notification of events from another host cannot be read (a host of \
                 another wpool version?); skipped"
            ),
        }
    }

    /// The notification payloads for `events`: JSON batches of at most
    /// [`MAX_PAYLOAD`] bytes each.
    fn payloads(&self, events: &[Event]) -> Vec<String> {
        let head = format!("{{\"o\":{},\"e\":[", self.origin);
        let mut payloads = Vec::new();
        let mut current = head.clone();
        for event in events {
            let Some(json) = encode(event) else { continue };
            let empty = current.len() == head.len();
            if !empty && current.len() + 1 + json.len() + 2 > MAX_PAYLOAD {
                current.push_str("]}");
                payloads.push(std::mem::replace(&mut current, head.clone()));
            }
            if current.len() > head.len() {
                current.push(',');
            }
            current.push_str(&json);
        }
        if current.len() > head.len() {
            current.push_str("]}");
            payloads.push(current);
        }
        payloads
    }
}

/// `event` as JSON short enough for one payload: an outcome's long
/// message is cut. `None` for an event that cannot be encoded.
fn encode(event: &Event) -> Option<String> {
    let json = serde_json::to_string(event).ok()?;
    if json.len() + 64 <= MAX_PAYLOAD {
        return Some(json);
    }
    let cut = |outcome: &Outcome| match outcome {
        Outcome::Failed(m) => Outcome::Failed(shorten(m)),
        Outcome::Trap(m) => Outcome::Trap(shorten(m)),
        Outcome::InvalidModule(m) => Outcome::InvalidModule(shorten(m)),
        Outcome::HostError(m) => Outcome::HostError(shorten(m)),
        other => other.clone(),
    };
    let kind = match &event.kind {
        EventKind::Failed { outcome } => EventKind::Failed {
            outcome: cut(outcome),
        },
        EventKind::Retrying {
            attempt,
            outcome,
            run_at,
        } => EventKind::Retrying {
            attempt: *attempt,
            outcome: cut(outcome),
            run_at: *run_at,
        },
        _ => return None,
    };
    let json = serde_json::to_string(&Event {
        id: event.id,
        at: event.at,
        kind,
    })
    .ok()?;
    (json.len() + 64 <= MAX_PAYLOAD).then_some(json)
}

/// The first [`MAX_MESSAGE`] bytes of `message` (on a character
/// boundary), marked as cut.
fn shorten(message: &str) -> String {
    let mut end = MAX_MESSAGE.min(message.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (cut; the task's record has the whole message)",
        &message[..end]
    )
}

/// Publishes what [`EventBus::publish`] queued, until the backend's
/// runtime ends: everything that gathered since the last round, in as few
/// notifications as fit.
pub(super) async fn publish(
    shared: std::sync::Arc<super::Shared>,
    mut queued: mpsc::Receiver<Event>,
) {
    let mut events = Vec::with_capacity(256);
    let mut warned: Option<Instant> = None;
    let mut lost: u64 = 0;
    while queued.recv_many(&mut events, 1024).await > 0 {
        let payloads = shared.events.payloads(&events);
        let sent: crate::Result<()> = async {
            let client = shared.client().await?;
            let statement = client
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .map_err(|e| super::db_error("publishing events", &e))?;
            for payload in &payloads {
                client
                    .execute(&statement, &[&CHANNEL, payload])
                    .await
                    .map_err(|e| super::db_error("publishing events", &e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            lost += events.len() as u64;
            // One warning per minute at most: the database being away is
            // told by the calls that matter.
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                warned = Some(Instant::now());
                tracing::warn!(
                    error = %e,
                    events = lost,
                    "events of this host were not shown to the other hosts"
                );
                lost = 0;
            }
        }
        let dropped = shared.events.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                events = dropped,
                "events of this host were not shown to the other hosts: too many were waiting"
            );
        }
        events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;

    fn event(kind: EventKind) -> Event {
        Event {
            id: TaskId::from_bytes([7; 16]),
            at: 1,
            kind,
        }
    }

    #[test]
    fn payloads_stay_under_the_limit_and_read_back() {
        let (bus, _rx) = EventBus::new();
        let events: Vec<Event> = (0..500)
            .map(|i| {
                event(EventKind::Progress {
                    done: i,
                    total: 500,
                })
            })
            .collect();
        let payloads = bus.payloads(&events);
        assert!(payloads.len() > 1, "500 events need several payloads");
        let mut read = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let batch: Batch = serde_json::from_str(payload).unwrap();
            assert_eq!(batch.origin, bus.origin);
            read.extend(batch.events);
        }
        assert_eq!(read, events);
    }

    #[test]
    fn a_long_outcome_message_is_cut_to_fit() {
        let (bus, _rx) = EventBus::new();
        let long = "é".repeat(20_000);
        let events = [event(EventKind::Failed {
            outcome: Outcome::Trap(long),
        })];
        let payloads = bus.payloads(&events);
        assert_eq!(payloads.len(), 1);
        let batch: Batch = serde_json::from_str(&payloads[0]).unwrap();
        let EventKind::Failed {
            outcome: Outcome::Trap(message),
        } = &batch.events[0].kind
        else {
            panic!("{:?}", batch.events[0]);
        };
        assert!(message.ends_with("(cut; the task's record has the whole message)"));
        assert!(message.len() < MAX_PAYLOAD);
    }

    #[test]
    fn a_host_skips_its_own_events_and_passes_on_others() {
        let (bus, _rx) = EventBus::new();
        let (other, _rx2) = EventBus::new();
        let mut heard = bus.subscribe();
        let mine = bus.payloads(&[event(EventKind::Started { attempt: 1 })]);
        bus.heard(&mine[0]);
        assert!(heard.try_recv().is_err(), "its own event came back");
        let theirs = other.payloads(&[event(EventKind::Succeeded)]);
        bus.heard(&theirs[0]);
        assert_eq!(heard.try_recv().unwrap().kind, EventKind::Succeeded);
        bus.heard("not json");
        assert!(heard.try_recv().is_err());
    }
}
