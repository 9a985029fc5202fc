//! The worker: the request service's background loops. Due work (retries of failed
//! steps, the outbox of a caller that went away, reverts), the approval service's decision
//! feed, and a poll of the requests under review in case the feed missed one.

use std::sync::Arc;
use std::time::Duration;

use sspm_platform::rpc::now_micros;
use sspm_proto::internal::v1 as ipb;
use sspm_proto::v1 as pb;
use tonic::Code;
use tracing::Instrument;

use crate::workflow::Workflow;

impl Workflow {
    /// The background loops: due work (retries, reverts), the decision feed and the review
    /// poll. They run until the returned handles are aborted.
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let worker = Arc::clone(self);
        let feed = Arc::clone(self);
        let poll = Arc::clone(self);
        vec![
            tokio::spawn(async move { worker.work_loop().await }),
            tokio::spawn(async move { feed.decision_feed().await }),
            tokio::spawn(async move { poll.review_poll().await }),
        ]
    }

    async fn work_loop(&self) {
        let interval = Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            let now = now_micros();
            let due = match self.store.due(now, 32).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for due requests");
                    continue;
                }
            };
            for (id, scheduled) in due {
                match self.store.claim(&id, scheduled, Self::lease_until(now)).await {
                    Ok(true) => {
                        // A retry or revert is a trace of its own, rooted here.
                        let span =
                            tracing::info_span!("reconcile", otel.name = "sspm.reconcile", sspm.request_id = %id);
                        self.drive(&id).instrument(span).await;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(request_id = id, error = %e, "cannot claim a request"),
                }
            }
        }
    }

    async fn decision_feed(&self) {
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                tokio::time::sleep(Duration::from_millis(self.backoff_ms(failures))).await;
            }
            let after = match self.store.cursor().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the decision cursor");
                    failures += 1;
                    continue;
                }
            };
            let req = ipb::WatchDecisionsRequest {
                after_cursor: u64::try_from(after).unwrap_or_default(),
            };
            let mut stream = match self
                .outbox
                .approval
                .clone()
                .watch_decisions(self.outbox.identity.request(req, None))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    tracing::debug!(code = ?s.code(), message = s.message(), "decision feed unavailable");
                    failures += 1;
                    continue;
                }
            };
            failures = 0;
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        let Some(task) = ev.task else { continue };
                        let span = tracing::info_span!(
                            "decision",
                            otel.name = "sspm.decision",
                            sspm.request_id = %task.request_id,
                            sspm.cursor = ev.cursor
                        );
                        if let Err(e) = self.on_decision(&task).instrument(span).await {
                            tracing::warn!(error = %e, "cannot record a decision; the feed resumes from the last one stored");
                            failures += 1;
                            break;
                        }
                        let cursor = i64::try_from(ev.cursor).unwrap_or(i64::MAX);
                        if let Err(e) = self.store.set_cursor(cursor).await {
                            tracing::warn!(error = %e, "cannot store the decision cursor");
                        }
                    }
                    Ok(None) => {
                        failures += 1;
                        break;
                    }
                    Err(s) => {
                        tracing::debug!(code = ?s.code(), message = s.message(), "decision feed interrupted");
                        failures += 1;
                        break;
                    }
                }
            }
        }
    }

    async fn review_poll(&self) {
        let interval = Duration::from_secs(self.cfg.review_poll_seconds);
        loop {
            tokio::time::sleep(interval).await;
            let ids = match self.store.awaiting_decision(100).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list requests under review");
                    continue;
                }
            };
            for id in ids {
                let req = pb::GetApprovalTaskRequest {
                    key: Some(pb::get_approval_task_request::Key::RequestId(id.clone())),
                };
                match self
                    .outbox
                    .approval_reads
                    .clone()
                    .get_approval_task(self.outbox.identity.request(req, None))
                    .await
                {
                    Ok(r) => {
                        if let Some(task) = r.into_inner().task
                            && let Err(e) = self.on_decision(&task).await
                        {
                            tracing::warn!(request_id = id, error = %e, "cannot record a polled decision");
                        }
                    }
                    // No task yet: its submission is still in the outbox.
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => {
                        tracing::debug!(code = ?s.code(), "review poll: approval service unavailable");
                        break;
                    }
                }
            }
        }
    }
}
