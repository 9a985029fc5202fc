//! The Salesforce backend: cases are opened in the org, synchronously, and recorded here
//! with the org's case number and record id, so that every read is served from the
//! ticketing service's own database and works while the org is down. Comments, statuses and
//! closings are written here first, with a row of the outbox (`org_writes`) in the same
//! transaction; a worker sends them to the org in order per case, with backoff while the
//! org is unreachable, and never twice: a comment whose answer was lost is looked for on
//! the case before it is posted again.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sspm_platform::config::SalesforceConfig;
use sspm_platform::rpc::{backoff_ms, now_micros};
use tokio::sync::Notify;
use tonic::Status;

use crate::entities::{case, org_write};
use crate::salesforce::{CaseFields, Salesforce, SalesforceError};
use crate::store::{CaseRecord, Mirror, NewCase, OrgWriteKind, Store};

/// How long a worker holds a write it sends: longer than the client's attempts can take.
fn lease_micros(cfg: &SalesforceConfig) -> i64 {
    let attempts = u64::from(cfg.max_attempts);
    let most = cfg
        .timeout_ms
        .saturating_add(cfg.retry_max_ms)
        .saturating_mul(attempts.saturating_add(1));
    i64::try_from(most.saturating_mul(1_000)).unwrap_or(i64::MAX)
}

/// The longest the worker sleeps without being woken: a write another replica leased and
/// dropped, or one queued by another replica, is picked up within this.
const IDLE: Duration = Duration::from_secs(2);

/// How a case's writes get to the org.
#[derive(Debug)]
pub struct OrgSync {
    store: Store,
    org: Salesforce,
    wake: Notify,
}

/// What one pass of the worker did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Writes the org took.
    pub sent: usize,
    /// Writes that failed and wait for a retry.
    pub deferred: usize,
    /// Writes the org refused for good.
    pub refused: usize,
    /// When the next write becomes due, if one is waiting.
    pub next_due: Option<i64>,
}

impl OrgSync {
    /// The backend for `org`, keeping its record in `store` (which it makes mirror).
    pub fn new(store: Store, org: Salesforce) -> Self {
        let mirror = Mirror {
            resolution_as_comment: org.config().resolution_field.is_empty(),
        };
        Self {
            store: store.mirroring(mirror),
            org,
            wake: Notify::new(),
        }
    }

    /// The store, mirroring to the org.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Opens the case of `new.external_reference` in the org, or finds the one an earlier
    /// attempt opened there, and records it. A case recorded already is answered from the
    /// record without calling the org. UNAVAILABLE while the org cannot be reached: the
    /// caller tries again, and the upsert on the external-id field finds the case a lost
    /// answer opened.
    pub async fn open(&self, new: NewCase) -> Result<(CaseRecord, bool), Status> {
        let reference = new.external_reference.clone();
        if let Some(existing) = self
            .store
            .by_reference(&reference)
            .await
            .map_err(sspm_platform::error::db("loading a case"))?
        {
            return Ok((existing, false));
        }
        let fields = CaseFields {
            subject: new.subject.clone(),
            description: new.description.clone(),
        };
        let org_case = self.org.open_case(&reference, &fields).await.map_err(|e| {
            tracing::warn!(reference, error = %e, "Salesforce did not open the case");
            e.status()
        })?;
        if sspm_rules::CaseNumber::parse(&org_case.case_number).is_err() {
            return Err(Status::failed_precondition(format!(
                "Salesforce numbered case {} {:?}: SSPM needs the CaseNumber display format of digits only (8 or more, the default {{00000000}})",
                org_case.id, org_case.case_number
            )));
        }
        match self
            .store
            .open_from_org(new, &org_case.id, &org_case.case_number, now_micros())
            .await
        {
            Ok((record, created)) => {
                if created {
                    tracing::info!(
                        reference,
                        case_number = org_case.case_number,
                        org_id = org_case.id,
                        "case opened in Salesforce"
                    );
                }
                Ok((record, created))
            }
            Err(e) => {
                tracing::error!(reference, case_number = org_case.case_number, error = %e, "cannot record the org's case");
                Err(Status::failed_precondition(format!(
                    "Salesforce case {} ({}) cannot be recorded: {e}",
                    org_case.case_number, org_case.id
                )))
            }
        }
    }

    /// Wakes the worker: a write was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends the writes that are due, at most one per case and in order; stops at the
    /// first that finds the org unavailable (the others would too).
    pub async fn pass(&self) -> Result<Pass, sea_orm::DbErr> {
        let cfg = self.org.config();
        let now = now_micros();
        let (due, next_due) = self.store.due_org_writes(now, 200).await?;
        let mut pass = Pass {
            next_due,
            ..Pass::default()
        };
        for (w, case) in due {
            if !self.store.claim_org_write(w.id, now, now + lease_micros(cfg)).await? {
                continue;
            }
            let number = case.case_number.clone().unwrap_or_default();
            match self.send(&w, &case).await {
                Ok(()) => {
                    self.store.org_write_done(w.id).await?;
                    tracing::debug!(case_number = number, kind = w.kind, "written to Salesforce");
                    pass.sent += 1;
                }
                Err(e @ (SalesforceError::Unavailable { .. } | SalesforceError::SignIn(_))) => {
                    let attempt = u32::try_from(w.attempts.saturating_add(1)).unwrap_or(u32::MAX);
                    let delay = backoff_ms(cfg.retry_initial_ms, cfg.retry_max_ms, attempt, rand::rng().random());
                    let at = now_micros() + i64::try_from(delay.saturating_mul(1_000)).unwrap_or(i64::MAX);
                    let maybe_done = matches!(e, SalesforceError::Unavailable { maybe_done: true, .. });
                    self.store.org_write_retry(&w, at, &e.to_string(), maybe_done).await?;
                    tracing::warn!(case_number = number, kind = w.kind, attempt, retry_in_ms = delay, error = %e, "Salesforce write deferred");
                    pass.deferred += 1;
                    pass.next_due = Some(pass.next_due.map_or(at, |n| n.min(at)));
                    break;
                }
                Err(e @ SalesforceError::Refused { .. }) => {
                    self.store
                        .org_write_failed(&w, &number, &e.to_string(), now_micros())
                        .await?;
                    tracing::error!(case_number = number, kind = w.kind, error = %e, "Salesforce refused a write; it is kept in org_writes and not tried again");
                    pass.refused += 1;
                }
            }
        }
        Ok(pass)
    }

    async fn send(&self, w: &org_write::Model, case: &case::Model) -> Result<(), SalesforceError> {
        let Some(org_id) = case.org_id.as_deref() else {
            return Ok(());
        };
        match OrgWriteKind::from_name(&w.kind) {
            Some(OrgWriteKind::Comment) => {
                // Its answer was lost last time: it may be on the case already.
                if w.maybe_done && self.org.comment_bodies(org_id).await?.contains(&w.argument) {
                    return Ok(());
                }
                self.org.add_comment(org_id, &w.argument).await.map(|_| ())
            }
            Some(OrgWriteKind::Status) => self.org.set_status(org_id, self.picklist_value(&w.argument)).await,
            Some(OrgWriteKind::Close) => self.org.close(org_id, &w.argument).await,
            None => Err(SalesforceError::Refused {
                what: "write to a case".to_owned(),
                http_status: 0,
                code: "UNKNOWN_WRITE".to_owned(),
                message: format!("SSPM does not know the write {:?}", w.kind),
                fields: vec![],
            }),
        }
    }

    /// The org's Status value for an SSPM case status.
    fn picklist_value(&self, status: &str) -> &str {
        let s = &self.org.config().statuses;
        match status {
            "NEW" => &s.new,
            "WAITING_ON_CUSTOMER" => &s.waiting_on_customer,
            "ESCALATED" => &s.escalated,
            "CLOSED" => &s.closed,
            _ => &s.working,
        }
    }

    /// The worker: passes until nothing is due, then sleeps until the next write is due,
    /// one is queued, or [`IDLE`] has passed.
    pub async fn run(self: Arc<Self>) {
        loop {
            let until = |at: Option<i64>| {
                at.map_or(IDLE, |at| {
                    let micros = u64::try_from(at.saturating_sub(now_micros())).unwrap_or(0);
                    Duration::from_micros(micros).clamp(Duration::from_millis(5), IDLE)
                })
            };
            match self.pass().await {
                Ok(p) if p.deferred > 0 => {
                    // The org is unavailable: new writes wait too, rather than each trying it.
                    tokio::time::sleep(until(p.next_due)).await;
                }
                Ok(p) if p.sent + p.refused > 0 => {}
                Ok(p) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(until(p.next_due)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the writes waiting for Salesforce");
                    tokio::time::sleep(IDLE).await;
                }
            }
        }
    }
}
