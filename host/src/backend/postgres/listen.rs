//! Hearing of work from other hosts: one connection of its own that
//! `LISTEN`s on [`CHANNEL`], on which every transaction that makes a task
//! ready `NOTIFY`s (a submission, a promotion, a task put back), and on
//! the channel of the other hosts' events ([`super::events`]).
//!
//! A notification wakes the pool's dispatcher
//! ([`Backend::wait_for_work`](crate::backend::Backend::wait_for_work)).
//! Notifications are a shortcut, not the truth: the pool still polls, and
//! after the listening connection is lost (and made again) the pool is
//! woken once, since what was sent meanwhile is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::Shared;

/// The channel of ready work.
pub(super) const CHANNEL: &str = "wpool_ready";

/// Listens until the backend's runtime ends, connecting again after a
/// lost connection with a growing pause.
pub(super) async fn listen(config: tokio_postgres::Config, shared: Arc<Shared>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let error = session(&config, &shared).await;
        tracing::warn!(
            database = %shared.target,
            error = %error,
            "lost the PostgreSQL connection that hears of new work; polling until it is back"
        );
        shared.ready.notify_one();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One listening connection, until it fails; returns why.
async fn session(config: &tokio_postgres::Config, shared: &Arc<Shared>) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return format!("cannot connect: {}", super::describe(&e)),
    };
    let heard = shared.clone();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if note.channel() == super::events::CHANNEL {
                        heard.events.heard(note.payload());
                    } else {
                        heard.ready.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return super::describe(&e),
                None => return "the server closed the connection".to_string(),
            }
        }
    });
    let channels = format!("LISTEN {CHANNEL}; LISTEN {}", super::events::CHANNEL);
    if let Err(e) = client.batch_execute(&channels).await {
        driver.abort();
        return format!("cannot listen: {}", super::describe(&e));
    }
    // Work made ready before this connection listened was not heard.
    shared.ready.notify_one();
    let ended = driver.await;
    drop(client);
    match ended {
        Ok(why) => why,
        Err(e) => format!("the listening task ended: {e}"),
    }
}
