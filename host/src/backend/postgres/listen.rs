//! Hearing of work from other hosts: one connection of its own that
//! `LISTEN`s on [`CHANNEL`], on which every transaction that makes a task
//! ready `NOTIFY`s (a submission, a promotion, a task put back).
//!
//! A notification wakes the pool's dispatcher
//! ([`Backend::wait_for_work`](crate::backend::Backend::wait_for_work)).
//! Notifications are a shortcut, not the truth: the pool still polls, and
//! after the listening connection is lost (and made again) the pool is
//! woken once, since what was sent meanwhile is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel of ready work.
pub(super) const CHANNEL: &str = "wpool_ready";

/// Listens until the backend's runtime ends, connecting again after a
/// lost connection with a growing pause.
pub(super) async fn listen(config: tokio_postgres::Config, ready: Arc<Notify>, target: String) {
    let mut pause = Duration::from_millis(100);
    loop {
        let error = session(&config, &ready).await;
        tracing::warn!(
            database = %target,
            error = %error,
            "lost the PostgreSQL connection that hears of new work; polling until it is back"
        );
        ready.notify_one();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One listening connection, until it fails; returns why.
async fn session(config: &tokio_postgres::Config, ready: &Arc<Notify>) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return format!("cannot connect: {}", super::describe(&e)),
    };
    let heard = ready.clone();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => heard.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return super::describe(&e),
                None => return "the server closed the connection".to_string(),
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return format!("cannot listen: {}", super::describe(&e));
    }
    // Work made ready before this connection listened was not heard.
    ready.notify_one();
    let ended = driver.await;
    drop(client);
    match ended {
        Ok(why) => why,
        Err(e) => format!("the listening task ended: {e}"),
    }
}
