//! The feed of one process (docs/EVENTS.md, "Order and cursors"): on PostgreSQL it places
//! committed events in the feed order (one replica at a time), and it tells the process's
//! `WatchEvents` streams and its publisher how far the feed goes. Events this process
//! writes are seen at once (the workflow's broadcast of each change wakes it); other
//! replicas' within `events.poll_ms`.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::sync::{broadcast, watch};

use crate::events;
use crate::store::Store;
use crate::workflow::Workflow;

/// Events placed per statement.
const PLACE_BATCH: u64 = 1_000;

/// How far the feed goes, as this process knows it.
#[derive(Debug)]
pub struct Feed {
    head: watch::Sender<i64>,
    wake: tokio::sync::Notify,
}

impl Feed {
    /// A feed that knows nothing yet (its loop, [`Feed::spawn`], finds the head).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            head: watch::Sender::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The highest position known.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Follows the head: changes whenever it moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Wakes the loop (something was written that the workflow does not announce:
    /// provisioned limits).
    pub fn written(&self) {
        self.wake.notify_one();
    }

    /// One round: places what is committed and not yet placed (PostgreSQL), then reads
    /// the head and announces it if it moved.
    pub async fn advance(&self, store: &Store) -> Result<i64, DbErr> {
        loop {
            match events::place(store.db(), PLACE_BATCH).await? {
                Some(n) if n == PLACE_BATCH => continue,
                _ => break,
            }
        }
        let head = events::head(store.db()).await?;
        self.head.send_if_modified(|h| {
            let moved = head > *h;
            if moved {
                *h = head;
            }
            moved
        });
        Ok(head)
    }

    /// The loop: a round every `every` and, while anyone follows the feed (a WatchEvents
    /// stream, the publisher), after each change this process makes (several at once count
    /// as one). Unfollowed, a process's changes cost the feed nothing on its request path.
    pub fn spawn(
        self: &Arc<Self>,
        store: Store,
        workflow: Arc<Workflow>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let feed = self.clone();
        let mut changes = workflow.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = changes.recv() => {
                        if let Err(broadcast::error::RecvError::Closed) = changed {
                            return;
                        }
                        // Whatever else arrived meanwhile is covered by the same round.
                        while changes.try_recv().is_ok() {}
                        if feed.head.receiver_count() == 0 {
                            continue;
                        }
                    }
                    () = feed.wake.notified() => {}
                    _ = tick.tick() => {}
                }
                if let Err(e) = feed.advance(&store).await {
                    tracing::warn!(error = %e, "cannot advance the event feed; trying again");
                }
            }
        })
    }
}

/// Events pruned per statement.
const PRUNE_BATCH: u64 = 1_000;

/// Prunes the events older than `retention_days` (`events.retention_days`; 0: never),
/// when `publishing`, only those the publisher has sent: at start and every `every`
/// ([`sspm_platform::retention`]).
pub fn spawn_pruner(
    store: Store,
    retention_days: u32,
    publishing: bool,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    sspm_platform::retention::spawn(retention_days, every, move |before, _| {
        let store = store.clone();
        async move {
            if let Err(e) = prune_before(&store, before, publishing).await {
                tracing::warn!(error = %e, "cannot prune old events; trying again later");
            }
        }
    })
}

/// Prunes every event before `before` (Unix microseconds), when `publishing` only those
/// published; how many.
pub async fn prune_before(store: &Store, before: i64, publishing: bool) -> Result<u64, DbErr> {
    let upto = if publishing {
        crate::publish::published(store.db()).await?
    } else {
        i64::MAX
    };
    let mut total = 0;
    loop {
        let n = events::prune(store.db(), before, upto, PRUNE_BATCH).await?;
        total += n;
        if n < PRUNE_BATCH {
            if total > 0 {
                tracing::info!(pruned = total, "old events pruned (events.retention_days)");
            }
            return Ok(total);
        }
    }
}
