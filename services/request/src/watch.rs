//! The watch streams of one process (`WatchPortChangeRequest`, `WatchEvents`; README, "Bounds on callers"):
//! how many are open, per principal and in all (bounded: RESOURCE_EXHAUSTED beyond), and
//! the one poller that wakes them. Changes made by this process wake a stream at once
//! through the workflow's broadcast; changes made by other replicas are found by a single
//! query per `workflow.watch_poll_ms` over the watched requests' `update_time`, whatever
//! the number of streams, instead of one query per stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sspm_rules::PrincipalId;
use tonic::Status;

use crate::store::Store;
use crate::workflow::Workflow;

/// Requests looked up per poll query.
const POLL_CHUNK: usize = 500;

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_principal: HashMap<PrincipalId, usize>,
    /// Watched request id -> (streams on it, the `update_time` last seen).
    watched: HashMap<String, (usize, Option<i64>)>,
}

/// The open watch streams of the process and their bounds.
#[derive(Debug)]
pub struct Watchers {
    open: Mutex<Open>,
    max_total: usize,
    max_per_principal: usize,
    polls: AtomicU64,
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct WatchSlot {
    watchers: Arc<Watchers>,
    principal: PrincipalId,
    request_id: String,
}

impl Watchers {
    /// At most `max_total` streams in the process and `max_per_principal` per principal (0:
    /// no bound).
    pub fn new(max_total: usize, max_per_principal: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::default(),
            max_total,
            max_per_principal,
            polls: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a `WatchEvents` stream of `principal`, within the same bounds (the feed
    /// wakes it, not the poller).
    pub fn open_feed(self: &Arc<Self>, principal: &PrincipalId) -> Result<WatchSlot, Status> {
        self.open(principal, "")
    }

    /// A slot for a stream of `principal` on `request_id`; RESOURCE_EXHAUSTED at a bound.
    pub fn open(self: &Arc<Self>, principal: &PrincipalId, request_id: &str) -> Result<WatchSlot, Status> {
        let mut open = self.lock();
        if self.max_total > 0 && open.total >= self.max_total {
            return Err(sspm_platform::error::watch_limit(
                "max_watch_streams",
                self.max_total,
                format!("the server has its maximum of {} watch streams open", self.max_total),
            ));
        }
        let mine = open.by_principal.get(principal).copied().unwrap_or(0);
        if self.max_per_principal > 0 && mine >= self.max_per_principal {
            return Err(sspm_platform::error::watch_limit(
                "per_principal_max_watch_streams",
                self.max_per_principal,
                format!(
                    "{principal} already has {} watch streams open: close one first",
                    self.max_per_principal
                ),
            ));
        }
        open.total += 1;
        *open.by_principal.entry(principal.clone()).or_default() += 1;
        if !request_id.is_empty() {
            open.watched.entry(request_id.to_owned()).or_default().0 += 1;
        }
        Ok(WatchSlot {
            watchers: self.clone(),
            principal: principal.clone(),
            request_id: request_id.to_owned(),
        })
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.lock().total
    }

    /// Poll queries made so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// One poll: the watched requests whose `update_time` moved since the last poll are
    /// announced on `workflow` (the streams re-read them).
    pub async fn poll(&self, store: &Store, workflow: &Workflow) -> Result<(), sea_orm::DbErr> {
        let ids: Vec<String> = self.lock().watched.keys().cloned().collect();
        for chunk in ids.chunks(POLL_CHUNK) {
            self.polls.fetch_add(1, Ordering::Relaxed);
            let times = store.update_times(chunk).await?;
            let moved: Vec<String> = {
                let mut open = self.lock();
                times
                    .into_iter()
                    .filter(|(id, time)| match open.watched.get_mut(id) {
                        Some((_, seen)) if *seen != Some(*time) => {
                            // The first sight only records the time: the stream read the
                            // request itself when it opened.
                            let first = seen.is_none();
                            *seen = Some(*time);
                            !first
                        }
                        _ => false,
                    })
                    .map(|(id, _)| id)
                    .collect()
            };
            for id in moved {
                workflow.changed(&id);
            }
        }
        Ok(())
    }

    /// The poller: every `every`, while any stream is open.
    pub fn spawn_poller(
        self: &Arc<Self>,
        store: Store,
        workflow: Arc<Workflow>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let watchers = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if watchers.streams() == 0 {
                    continue;
                }
                if let Err(e) = watchers.poll(&store, &workflow).await {
                    tracing::warn!(error = %e, "cannot poll the watched requests; trying again");
                }
            }
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watchers.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_principal.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.by_principal.remove(&self.principal);
            }
        }
        if let Some((n, _)) = open.watched.get_mut(&self.request_id) {
            *n -= 1;
            if *n == 0 {
                open.watched.remove(&self.request_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_principal_and_in_all() {
        let w = Watchers::new(3, 2);
        let a = PrincipalId::parse("a@x.example").unwrap();
        let b = PrincipalId::parse("b@x.example").unwrap();
        let a1 = w.open(&a, "r1").unwrap();
        let _a2 = w.open(&a, "r1").unwrap();
        let e = w.open(&a, "r2").unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("a@x.example"), "{e:?}");
        let _b1 = w.open(&b, "r2").unwrap();
        let e = w.open(&b, "r3").unwrap_err();
        assert!(e.message().contains("maximum of 3"), "{e:?}");
        drop(a1);
        assert_eq!(w.streams(), 2);
        let _b2 = w.open(&b, "r3").unwrap();
        assert_eq!(w.lock().watched.len(), 3);
    }
}
