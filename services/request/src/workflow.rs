//! The reconciler (RELIABILITY.md, "The request path, step by step"): each request's next
//! step is computed by the transition table ([`crate::plan`]) from its stored state and
//! what other services answered, and every step is idempotent (the case is opened with the
//! request id as its external reference, the ledger reservation is keyed by the request
//! id, steps are guarded by the state they leave, calls to other services go through the
//! outbox written with the step). Create runs the first steps inline; the worker
//! ([`crate::worker`]) re-runs any request whose step failed, with backoff, so an outage or
//! a crash never loses or duplicates anything.

use std::sync::Arc;

use rand::Rng;
use sea_orm::{ActiveEnum, DbErr};
use sspm_platform::config::WorkflowConfig;
use sspm_platform::rpc::{Authz, ServiceIdentity, is_transient, now_micros};
use sspm_proto::internal::v1 as ipb;
use sspm_proto::v1 as pb;
use sspm_rules::{BusinessUnitFacts, RequestState, ValidatedChange, Violation};
use tokio::sync::broadcast;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::capacity::Membership;
use crate::entities::{effect, request};
use crate::model::{ApprovalPath, Decision, Request, change_of};
use crate::outbox::Outbox;
use crate::plan::{Input, SYSTEM, Verdict, describe, next_step};
use crate::store::{CaseLink, Stepped, Store, Written};

/// A business unit as a step needs it: its facts (R2, R6) and what it draws on (R12, R13).
pub type Unit = (BusinessUnitFacts, Membership);

/// The facts of a business unit as the authorization service describes it.
pub fn facts_of(b: &pb::BusinessUnit) -> BusinessUnitFacts {
    BusinessUnitFacts {
        monitoring_gateway: b.monitoring_gateway_enabled,
        personal_connection: b.personal_connection_enabled,
    }
}

/// Why a step could not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Another service is unavailable: retry later.
    #[error("{0}")]
    Retry(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// What a requester asks of an open request (the handlers' commands).
#[derive(Debug, Clone)]
pub enum Command {
    /// Cancel it.
    Cancel {
        /// Who.
        by: String,
        /// Why, if said.
        reason: Option<String>,
    },
    /// Send it for review with this justification.
    ProvideInformation {
        /// Who.
        by: String,
        /// The justification.
        justification: String,
    },
}

impl Command {
    /// The event of the transition table.
    fn input(&self) -> Input<'_> {
        match self {
            Command::Cancel { by, reason } => Input::Cancel {
                by,
                reason: reason.as_deref(),
            },
            Command::ProvideInformation { by, justification } => Input::ProvideInformation { by, justification },
        }
    }
}

/// Why a command was not carried out: the one error of the handlers that drive requests,
/// mapped to a status at the edge.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request cannot take it as it is (FAILED_PRECONDITION, naming the rule).
    #[error("{0}")]
    Refused(Violation),
    /// There is no such request.
    #[error("port change request {0} not found")]
    NotFound(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Refused(v) => sspm_platform::error::violation(v),
            CommandError::NotFound(id) => sspm_platform::error::not_found("port change request", &id),
            CommandError::Db(e) => sspm_platform::error::database("updating a request", &e),
        }
    }
}

/// The request service's workflow: the steps, the outbox and the background loops.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub(crate) store: Store,
    authz: Authz,
    pub(crate) outbox: Outbox,
    changes: broadcast::Sender<String>,
    pub(crate) cfg: WorkflowConfig,
}

/// Lease of a request claimed by a worker, in microseconds: long enough for every call of
/// one pass (each has a deadline), after which another worker may take over.
const LEASE_MICROS: i64 = 60_000_000;

impl Workflow {
    /// A workflow with its clients.
    pub fn new(store: Store, authz: Authz, outbox: Outbox, cfg: WorkflowConfig) -> Self {
        Self {
            store,
            authz,
            outbox,
            changes: broadcast::Sender::new(1024),
            cfg,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authorization client.
    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    /// The approval service's public reads (for dry runs).
    pub fn approval(
        &self,
    ) -> sspm_proto::v1::approval_service_client::ApprovalServiceClient<sspm_platform::client::InternalChannel> {
        self.outbox.approval_reads.clone()
    }

    /// The service identity.
    pub fn identity(&self) -> &ServiceIdentity {
        &self.outbox.identity
    }

    /// Subscribes to changed request ids (the watch streams).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Tells watchers that a request changed.
    pub fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
    }

    /// A lease for inline processing: the worker leaves the request alone meanwhile.
    pub fn lease_until(now: i64) -> i64 {
        now + LEASE_MICROS
    }

    /// The delay before retry number `attempt` (1 for the first).
    pub(crate) fn backoff_ms(&self, attempt: u32) -> u64 {
        sspm_platform::rpc::backoff_ms(
            self.cfg.retry_initial_ms,
            self.cfg.retry_max_ms,
            attempt,
            rand::rng().random(),
        )
    }

    /// Runs every due step of a request, then schedules its next look (or a retry with
    /// backoff when a step failed). Never fails: failures are retried in the background.
    pub async fn drive(&self, id: &str) -> Option<StepError> {
        let outcome = self.reconcile(id).await;
        self.changed(id);
        match outcome {
            Ok(r) => {
                let next = r
                    .as_ref()
                    .and_then(|r| Request::from_row(r).ok())
                    .and_then(|r| r.next_look());
                if let Err(e) = self.store.schedule(id, next, 0).await {
                    tracing::error!(request_id = id, error = %e, "cannot schedule the request");
                }
                None
            }
            Err(e) => {
                self.retry_later(id, &e).await;
                Some(e)
            }
        }
    }

    /// Schedules a retry of a request whose step failed, with backoff.
    async fn retry_later(&self, id: &str, e: &StepError) {
        let attempts = match self.store.request(id).await {
            Ok(Some(r)) => r.attempts.saturating_add(1),
            _ => 1,
        };
        // The retry state lives in the row (it must survive restarts and move between
        // replicas), so the delay is computed here.
        let delay_ms = self.backoff_ms(u32::try_from(attempts).unwrap_or(1));
        let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX / 2).saturating_mul(1_000);
        tracing::warn!(request_id = id, attempts, retry_in_ms = delay_ms, error = %e, "step failed; will retry");
        if let Err(e) = self.store.schedule(id, Some(now_micros() + delay), attempts).await {
            tracing::error!(request_id = id, error = %e, "cannot schedule a retry");
        }
    }

    /// Runs the due steps until none is left; the request as it ends up.
    pub async fn reconcile(&self, id: &str) -> Result<Option<request::Model>, StepError> {
        for _ in 0..16 {
            let Some(r) = self.store.request(id).await? else {
                return Ok(None);
            };
            if !self.step(&r).await? {
                return Ok(Some(r));
            }
            self.changed(id);
        }
        Ok(self.store.request(id).await?)
    }

    /// One step; whether it changed anything.
    async fn step(&self, r: &request::Model) -> Result<bool, StepError> {
        let model = Request::from_row(r)?;
        let now = now_micros();
        if model.state == RequestState::New && model.decision.is_none() {
            // Written, or the request moved meanwhile: either way, look again.
            self.first_steps(r, None).await?;
            return Ok(true);
        }
        if model.case_number.is_none() {
            self.open_case(r).await?;
            return Ok(true);
        }
        if model.state.is_open() && model.decision.is_some() {
            return self.resume(&model).await;
        }
        let effects = self.store.pending_effects(&r.request_id).await?;
        if !effects.is_empty() {
            for e in effects {
                self.carry_out(r, &e).await?;
                self.store.effect_done(e.id, now_micros()).await?;
            }
            return Ok(true);
        }
        if model.next_look().is_some_and(|t| t <= now) {
            return self.revert(&model).await;
        }
        Ok(false)
    }

    /// Opens the request's case (or finds the one opened before: the request id is its
    /// external reference); its number.
    async fn open_case_call(&self, r: &request::Model, change: &ValidatedChange) -> Result<String, StepError> {
        let summary = describe(change);
        let req = ipb::OpenCaseRequest {
            external_reference: r.request_id.clone(),
            subject: format!("Port change for {}: {summary}", r.business_unit_id),
            description: format!(
                "Self-service port change request {} by {} for business unit {} on cluster {}.\nLimits now: {}.\nRequested: {summary}.{}{}",
                r.request_id,
                r.requester,
                r.business_unit_id,
                r.cluster,
                change.before,
                r.justification
                    .as_deref()
                    .map(|j| format!("\nJustification: {j}"))
                    .unwrap_or_default(),
                r.revert_at
                    .map(|t| format!("\nTemporary: reverts at {}", rfc3339(t)))
                    .unwrap_or_default(),
            ),
            business_unit_id: r.business_unit_id.clone(),
            requester: r.requester.clone(),
        };
        let case = self
            .outbox
            .ticketing
            .clone()
            .open_case(self.outbox.identity.request(req, Some(&r.requester)))
            .await
            .map_err(|s| remote("ticketing service", &s))?
            .into_inner()
            .case
            .ok_or_else(|| StepError::Retry("ticketing service answered without a case".into()))?;
        Ok(case.case_number)
    }

    /// The ticketing service handed out a number it had given before: it lost its cases (a
    /// truncated or restored database). Linking would show this request another's case;
    /// refuse, say so loudly, and retry with backoff until an operator has repaired the
    /// ticketing service (RELIABILITY.md, "Lost data").
    fn case_held_by_another(r: &request::Model, number: &str, holder: &str) -> StepError {
        tracing::error!(
            request_id = %r.request_id,
            case_number = %number,
            held_by = %holder,
            "the ticketing service gave this request a case number another request already holds: it has lost cases; the request waits, unlinked"
        );
        StepError::Retry(format!(
            "the ticketing service answered case {number} for this request, but request {holder} already holds it: the ticketing service has lost cases"
        ))
    }

    async fn open_case(&self, r: &request::Model) -> Result<(), StepError> {
        let number = self.open_case_call(r, &change_of(r)?).await?;
        match self.store.set_case_number(&r.request_id, &number, now_micros()).await? {
            CaseLink::Linked => Ok(()),
            CaseLink::HeldByAnother(holder) => Err(Self::case_held_by_another(r, &number, &holder)),
        }
    }

    /// Whether the request's increase fits the daily limit (reserving it when it does), with
    /// the reason in words (R8).
    async fn verdict(&self, r: &request::Model, change: &ValidatedChange) -> Result<Verdict, StepError> {
        if !change.needs_daily_limit_check() {
            return Ok(Verdict::Fits(
                "approved automatically: no increase of concurrent ports, no daily-limit check needed (R8)".to_owned(),
            ));
        }
        let increase = i32::from(change.concurrent_increase());
        let req = ipb::EvaluateIncreaseRequest {
            request_id: r.request_id.clone(),
            business_unit_id: r.business_unit_id.clone(),
            cluster: r.cluster.clone(),
            increase,
        };
        let answer = self
            .outbox
            .approval
            .clone()
            .evaluate_increase(self.outbox.identity.request(req, Some(&r.requester)))
            .await
            .map_err(|s| remote("approval service", &s))?
            .into_inner();
        let budget = answer
            .usage
            .iter()
            .map(|u| {
                let l = u.limit.clone().unwrap_or_default();
                let scope = match l.scope() {
                    pb::LimitScope::BusinessUnit => format!("business unit {}", r.business_unit_id),
                    _ => format!("cluster {}", r.cluster),
                };
                format!("{scope}: {} of {} used", u.used, l.max_daily_increase)
            })
            .collect::<Vec<_>>()
            .join("; ");
        if answer.outcome() == ipb::EvaluationOutcome::Fits {
            return Ok(Verdict::Fits(format!(
                "approved automatically: +{increase} concurrent ports fit the daily limit of {} ({budget})",
                answer.day
            )));
        }
        let why = format!(
            "+{increase} concurrent ports exceed the daily limit for automatic approval on {} ({budget})",
            answer.day
        );
        Ok(Verdict::Exceeds(why))
    }

    /// The first steps of a new request (no decision yet), in one: its case is opened (or
    /// found, when an earlier version opened it) and its increase evaluated at the same
    /// time, then the case number, the decision and what follows from it (the limits
    /// applied and the case's closing queued; or the request sent to review, or asked for
    /// information) are written in one transaction (BENCHMARKS.md, "Statements per
    /// create"). Both calls are idempotent, so a failure of either writes nothing and the
    /// whole step is retried. `facts` are the business unit's as the caller's authorization
    /// answered them, if at hand. `None` when the request was no longer new meanwhile
    /// (another replica's worker took it, or its requester cancelled it).
    pub async fn first_steps(&self, r: &request::Model, unit: Option<Unit>) -> Result<Option<Written>, StepError> {
        let model = Request::from_row(r)?;
        let (case, verdict) = tokio::join!(self.open_case_call(r, &model.change), self.verdict(r, &model.change));
        let (case, verdict) = (case?, verdict?);
        let unit = match (&verdict, unit) {
            (Verdict::Fits(_), None) => self.unit(&r.business_unit_id).await?,
            (_, unit) => unit,
        };
        let (facts, membership) = unit.unzip();
        let now = now_micros();
        let step = self
            .store
            .first_step(
                r,
                model.change.before,
                membership.as_ref(),
                now,
                Self::lease_until(now),
                |current, room| {
                    let input = Input::Started {
                        case: &case,
                        verdict: &verdict,
                        facts,
                        current,
                        room,
                    };
                    next_step(&model, input, now)
                },
            )
            .await?;
        match step {
            Stepped::Done(written) => {
                tracing::info!(
                    request_id = r.request_id,
                    state = %RequestState::from(written.request.state),
                    case = case,
                    "request decided"
                );
                Ok(Some(*written))
            }
            Stepped::Refused(_) | Stepped::Gone => Ok(None),
            Stepped::HeldByAnother(holder) => Err(Self::case_held_by_another(r, &case, &holder)),
        }
    }

    /// Takes a request just created through its first steps and answers with it as they
    /// left it; what remains (the calls of its outbox, e.g. closing the case) continues in
    /// the background, so the caller waits for its outcome being durable, not for them.
    /// `None` when the steps could not run now (a dependency is down: they are retried
    /// with backoff) or another worker took the request.
    pub async fn start(self: &Arc<Self>, r: &request::Model, unit: Unit) -> Option<Written> {
        let id = r.request_id.as_str();
        match self.first_steps(r, Some(unit)).await {
            Ok(Some(written)) => {
                self.changed(id);
                let wf = Arc::clone(self);
                let (request, effects) = (written.request.clone(), written.effects.clone());
                // Closing the case of a request that is over goes on after the answer; the
                // calls that tell the requester to act (a comment asking for a
                // justification, the case's new status) are made before it, so the case
                // says so when the caller looks.
                if effects.iter().all(|e| e.kind == effect::Kind::CloseCase) {
                    tokio::spawn(async move { wf.finish(request, effects).await }.in_current_span());
                } else {
                    wf.finish(request, effects).await;
                }
                Some(written)
            }
            Ok(None) => None,
            Err(e) => {
                self.retry_later(id, &e).await;
                self.changed(id);
                None
            }
        }
    }

    /// Carries out the effects a step enqueued, then marks them done and schedules the
    /// request's next look (its revert, or none) in one transaction. A failure leaves them
    /// pending: the request is retried with backoff and its outbox carried out then.
    async fn finish(&self, r: request::Model, effects: Vec<effect::Model>) {
        let id = r.request_id.clone();
        for e in &effects {
            if let Err(err) = self.carry_out(&r, e).await {
                self.retry_later(&id, &err).await;
                return;
            }
        }
        let ids: Vec<i64> = effects.iter().map(|e| e.id).collect();
        let next = Request::from_row(&r).ok().and_then(|r| r.next_look());
        if let Err(e) = self.store.effects_done(&id, &ids, next, now_micros()).await {
            // The effects are carried out again by the worker once the lease ends; each is
            // idempotent on the other side.
            tracing::warn!(request_id = id, error = %e, "cannot record the outbox carried out; the worker will");
        }
        self.changed(&id);
    }

    async fn unit(&self, bu: &str) -> Result<Option<Unit>, StepError> {
        let bu = self
            .authz
            .business_unit(bu)
            .await
            .map_err(|s| StepError::Retry(s.message().to_owned()))?;
        Ok(bu.map(|b| (facts_of(&b), Membership::of(&b))))
    }

    async fn facts(&self, bu: &str) -> Result<Option<BusinessUnitFacts>, StepError> {
        Ok(self.unit(bu).await?.map(|(facts, _)| facts))
    }

    /// Carries out the decision recorded on an open request (an earlier version recorded
    /// decisions and applied them in two steps); whether it did.
    async fn resume(&self, r: &Request) -> Result<bool, StepError> {
        let approved = r.decision.as_ref().is_some_and(|d| d.approved);
        let unit = if approved {
            self.unit(&r.business_unit_id).await?
        } else {
            None
        };
        let (facts, membership) = unit.unzip();
        let now = now_micros();
        let step = self
            .store
            .step(
                &r.id,
                approved,
                membership,
                now,
                Self::lease_until(now),
                move |r, current, room| next_step(r, Input::Resume { facts, current, room }, now),
            )
            .await?;
        Ok(matches!(step, Stepped::Done(_)))
    }

    /// Reverts a temporary change whose time is up (R11); whether it did.
    async fn revert(&self, r: &Request) -> Result<bool, StepError> {
        // Without facts the revert still runs, clamped as with Personal Connection: that
        // keeps R2 whatever the business unit's flags are.
        let facts = self.facts(&r.business_unit_id).await?.unwrap_or(BusinessUnitFacts {
            monitoring_gateway: true,
            personal_connection: true,
        });
        let now = now_micros();
        let step = self
            .store
            .step(&r.id, true, None, now, Self::lease_until(now), move |r, current, _| {
                next_step(r, Input::Revert { facts, current }, now)
            })
            .await?;
        let reverted = matches!(step, Stepped::Done(_));
        if reverted {
            tracing::info!(request_id = r.id, "temporary change reverted");
        }
        Ok(reverted)
    }

    /// Carries out a requester's command on request `id` in one step, then its effects
    /// (the case told, the task withdrawn or created); the request as the step left it.
    pub async fn command(&self, id: &str, command: Command) -> Result<request::Model, CommandError> {
        let (Command::Cancel { by, .. } | Command::ProvideInformation { by, .. }) = &command;
        let by = by.clone();
        let now = now_micros();
        let step = self
            .store
            .step(id, false, None, now, Self::lease_until(now), move |r, _, _| {
                next_step(r, command.input(), now)
            })
            .await?;
        match step {
            Stepped::Done(written) => {
                let Written { request, effects, .. } = *written;
                tracing::info!(
                    request_id = id,
                    state = %RequestState::from(request.state),
                    by,
                    "request changed by its requester"
                );
                self.changed(id);
                if request.case_number.is_some() {
                    self.finish(request.clone(), effects).await;
                    return Ok(request);
                }
                // No case linked yet (the request's first steps were still under way): the
                // reconciler finds or opens its case first, so the calls reach it.
                self.drive(id).await;
                Ok(self.store.request(id).await?.unwrap_or(request))
            }
            Stepped::Refused(v) => Err(CommandError::Refused(v)),
            Stepped::Gone | Stepped::HeldByAnother(_) => Err(CommandError::NotFound(id.to_owned())),
        }
    }

    /// Carries out one effect. Answers that mean "already done" count as done; other
    /// permanent refusals are recorded as a note and not retried.
    async fn carry_out(&self, r: &request::Model, e: &effect::Model) -> Result<(), StepError> {
        let is_status = e.kind == effect::Kind::CaseStatus;
        match self.outbox.call(r, e).await {
            Ok(()) => Ok(()),
            Err(s) if is_transient(&s) => Err(remote("a dependency", &s)),
            // A closed case cannot change status; anything else permanent is recorded.
            Err(s) if s.code() == Code::FailedPrecondition && is_status => Ok(()),
            Err(s) => {
                tracing::error!(request_id = r.request_id, effect = ?e.kind, code = ?s.code(), message = s.message(), "effect refused");
                self.store
                    .note(
                        r,
                        SYSTEM,
                        &format!("{} could not be carried out: {}", e.kind.to_value(), s.message()),
                        now_micros(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// A decision from the approval service (the feed or the poll), recorded and carried
    /// out in one step: the change applied (or the request failed, when it can no longer
    /// be) or the request rejected; then its effects.
    pub async fn on_decision(&self, task: &pb::ApprovalTask) -> Result<(), StepError> {
        let approved = match task.state() {
            pb::ApprovalTaskState::Approved => true,
            pb::ApprovalTaskState::Rejected => false,
            _ => return Ok(()),
        };
        let time = task
            .decide_time
            .as_ref()
            .and_then(|t| sspm_platform::rpc::micros_of(t, "decide_time").ok())
            .unwrap_or_else(now_micros);
        let decision = Decision {
            by: task.decided_by.clone(),
            approved,
            reason: task.decision_reason.clone(),
            path: ApprovalPath::Review,
            time,
        };
        let unit = if approved {
            self.unit(&task.business_unit_id).await?
        } else {
            None
        };
        let (facts, membership) = unit.unzip();
        let now = now_micros();
        let step = self
            .store
            .step(
                &task.request_id,
                approved,
                membership,
                now,
                Self::lease_until(now),
                move |r, current, room| {
                    let input = Input::Decided {
                        decision: &decision,
                        facts,
                        current,
                        room,
                    };
                    next_step(r, input, now)
                },
            )
            .await?;
        if let Stepped::Done(written) = step {
            tracing::info!(
                request_id = task.request_id,
                approved,
                by = task.decided_by,
                state = %RequestState::from(written.request.state),
                "decision carried out"
            );
            self.changed(&task.request_id);
            self.finish(written.request, written.effects).await;
        }
        Ok(())
    }
}

fn remote(dependency: &str, s: &Status) -> StepError {
    StepError::Retry(format!("{dependency}: {:?}: {}", s.code(), s.message()))
}

/// A stored time in RFC 3339 (UTC, seconds).
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        sspm_rules::daily::format_day(days),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
