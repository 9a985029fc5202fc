//! The reconciler (DESIGN §2): each request's next step is computed from its stored state,
//! and every step is idempotent (the case is opened with the request id as its external
//! reference, the ledger reservation is keyed by the request id, transitions are guarded by
//! the state they leave, calls to other services go through an outbox written with the
//! transition). Create runs the steps inline; a worker re-runs any request whose step failed,
//! with backoff, so an outage or a crash never loses or duplicates anything.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sea_orm::DbErr;
use sea_orm::sea_query::Expr;
use sspm_platform::client::InternalChannel;
use sspm_platform::config::WorkflowConfig;
use sspm_platform::rpc::{Authz, ServiceIdentity, is_transient, now_micros};
use sspm_proto::v1 as pb;
use sspm_proto::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::v1::ticketing_service_client::TicketingServiceClient;
use sspm_rules::lifecycle::{Event, next};
use sspm_rules::{BusinessUnitFacts, PortLimits, RequestState, Targets, ValidatedChange, reapply, revert};
use tokio::sync::broadcast;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::entities::{effect, limits, request};
use crate::store::{Apply, CaseLink, Entry, FirstStep, NewEffect, Plan, Started, Store, Transition, limits_row};

/// The verdict on a new request's increase (R8), with the reason in words.
#[derive(Debug, Clone)]
enum Verdict {
    /// It fits the daily limit, or needs no check: approve automatically.
    Fits(String),
    /// It exceeds the daily limit: a human decides. The request goes `to` review or to a
    /// request for information ([`Workflow::to_review`]), with these effects.
    Exceeds {
        /// Why, in words.
        why: String,
        /// The state it goes to.
        to: RequestState,
        /// The calls that say so.
        effects: Vec<NewEffect>,
    },
}

/// The effects of an approved change that cannot be applied (it fails instead).
fn cannot_apply(why: &str) -> Vec<NewEffect> {
    vec![
        Effect::Release("the change could not be applied".into()).by(SYSTEM),
        Effect::CloseCase(format!("Failed: approved but cannot be applied: {why}")).by(SYSTEM),
    ]
}

/// The plan of [`Workflow::first_steps`] from the business unit's limits as they are
/// (`current`): a pure function of what the case, the verdict and the facts say.
#[allow(clippy::too_many_arguments)]
fn first_plan(
    r: &request::Model,
    change: &ValidatedChange,
    case: &str,
    verdict: &Verdict,
    facts: Option<BusinessUnitFacts>,
    current: PortLimits,
    now: i64,
) -> Plan {
    let id = r.request_id.clone();
    let mut new = r.clone();
    new.case_number = Some(case.to_owned());
    new.update_time = now;
    new.next_attempt_at = Some(Workflow::lease_until(now));
    new.attempts = 0;
    let mut audit = vec![(None, "request.case_linked", id.clone(), format!("case {case}"))];
    let transition = |to: RequestState, actor: &str, reason: String| Entry {
        kind: "TRANSITION",
        actor: actor.to_owned(),
        from: Some(RequestState::New),
        to,
        reason,
    };
    match verdict {
        Verdict::Exceeds { why, to, effects } => {
            new.state = to.as_str().to_owned();
            new.approval_path = Some("REVIEW".to_owned());
            Plan {
                request: new,
                limits: None,
                entry: transition(*to, SYSTEM, why.clone()),
                audit,
                effects: effects.clone(),
            }
        }
        Verdict::Fits(reason) => {
            new.decided_by = Some(SYSTEM.to_owned());
            new.decision_approved = Some(true);
            new.decision_reason = Some(reason.clone());
            new.decide_time = Some(now);
            new.approval_path = Some("AUTOMATIC".to_owned());
            audit.push((
                Some(SYSTEM.to_owned()),
                "request.decided",
                id,
                format!("approved (AUTOMATIC): {reason}"),
            ));
            let applied = match facts {
                None => Err("the business unit no longer exists".to_owned()),
                Some(f) => reapply(change, current, f).map_err(|v| v.to_string()),
            };
            match (applied, next(RequestState::New, Event::AutoApprove)) {
                (Ok(after), Ok(to)) => {
                    new.state = to.as_str().to_owned();
                    let resolution = format!("Approved automatically and applied: {current} -> {after}. {reason}");
                    Plan {
                        request: new,
                        limits: Some(after),
                        entry: transition(to, SYSTEM, format!("{reason}; applied: {current} -> {after}")),
                        audit,
                        effects: vec![Effect::CloseCase(resolution).by(SYSTEM)],
                    }
                }
                (Err(why), _) | (_, Err(sspm_rules::Violation { message: why, .. })) => {
                    new.state = RequestState::Failed.as_str().to_owned();
                    new.failure_reason = Some(why.clone());
                    Plan {
                        request: new,
                        limits: None,
                        entry: transition(
                            RequestState::Failed,
                            SYSTEM,
                            format!("approved but cannot be applied: {why}"),
                        ),
                        audit,
                        effects: cannot_apply(&why),
                    }
                }
            }
        }
    }
}

/// The actor of SSPM's own steps.
pub const SYSTEM: &str = "system";

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

/// A call to another service that a transition enqueues (the outbox), with what it needs;
/// carried out in order, after the transition committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Add this comment to the case.
    Comment(String),
    /// Set the case's status.
    CaseStatus(pb::CaseStatus),
    /// Close the case with this resolution.
    CloseCase(String),
    /// Create the approval task (from the request as stored).
    SubmitReview,
    /// Withdraw the approval task, for this reason.
    WithdrawReview(String),
    /// Release the daily-limit reservation, for this reason.
    Release(String),
}

impl Effect {
    /// Stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Comment(_) => "COMMENT",
            Effect::CaseStatus(_) => "CASE_STATUS",
            Effect::CloseCase(_) => "CLOSE_CASE",
            Effect::SubmitReview => "SUBMIT_REVIEW",
            Effect::WithdrawReview(_) => "WITHDRAW_REVIEW",
            Effect::Release(_) => "RELEASE",
        }
    }

    /// Stored argument.
    fn argument(&self) -> String {
        match self {
            Effect::Comment(text) | Effect::CloseCase(text) | Effect::WithdrawReview(text) | Effect::Release(text) => {
                text.clone()
            }
            Effect::CaseStatus(status) => status.as_str_name().trim_start_matches("CASE_STATUS_").to_owned(),
            Effect::SubmitReview => String::new(),
        }
    }

    /// The effect a stored row holds; `None` for one this version does not know.
    pub fn decode(kind: &str, argument: &str) -> Option<Self> {
        let text = argument.to_owned();
        Some(match kind {
            "COMMENT" => Effect::Comment(text),
            "CASE_STATUS" => Effect::CaseStatus(pb::CaseStatus::from_str_name(&format!("CASE_STATUS_{argument}"))?),
            "CLOSE_CASE" => Effect::CloseCase(text),
            "SUBMIT_REVIEW" => Effect::SubmitReview,
            "WITHDRAW_REVIEW" => Effect::WithdrawReview(text),
            "RELEASE" => Effect::Release(text),
            _ => return None,
        })
    }

    /// This effect, on behalf of `actor`, as the outbox stores it.
    pub fn by(self, actor: &str) -> NewEffect {
        NewEffect {
            kind: self.kind(),
            argument: self.argument(),
            actor: actor.to_owned(),
        }
    }
}

/// The state of a stored request.
pub fn state_of(r: &request::Model) -> RequestState {
    RequestState::from_name(&r.state).unwrap_or(RequestState::Failed)
}

/// The change a stored request asks for.
pub fn change_of(r: &request::Model) -> Result<ValidatedChange, DbErr> {
    let bad = |e: sspm_rules::Violations| DbErr::Custom(format!("stored request {} is invalid: {e}", r.request_id));
    let before = PortLimits::parse(
        r.before_concurrent.into(),
        r.before_outbound.into(),
        r.before_agentless.into(),
        "",
    )
    .map_err(bad)?;
    let mut targets = Targets::default();
    for (kind, v) in [
        (sspm_rules::PortKind::Concurrent, r.target_concurrent),
        (sspm_rules::PortKind::Outbound, r.target_outbound),
        (sspm_rules::PortKind::Agentless, r.target_agentless),
    ] {
        if let Some(v) = v {
            let p = sspm_rules::PortLimit::parse(v.into(), "").map_err(|e| bad(e.into()))?;
            targets.set(kind, p);
        }
    }
    Ok(ValidatedChange {
        before,
        after: targets.apply_to(before),
        targets,
    })
}

/// A business unit's stored limits (zero when SSPM has none on record).
pub fn limits_of(m: Option<&limits::Model>) -> PortLimits {
    m.and_then(|m| PortLimits::parse(m.concurrent.into(), m.outbound.into(), m.agentless.into(), "").ok())
        .unwrap_or_default()
}

/// The request service's workflow: the steps, the outbox and the background loops.
#[derive(Debug, Clone)]
pub struct Workflow {
    store: Store,
    authz: Authz,
    ticketing: TicketingServiceClient<InternalChannel>,
    approval: ApprovalServiceClient<InternalChannel>,
    identity: ServiceIdentity,
    changes: broadcast::Sender<String>,
    cfg: WorkflowConfig,
}

/// Lease of a request claimed by a worker, in microseconds: long enough for every call of
/// one pass (each has a deadline), after which another worker may take over.
const LEASE_MICROS: i64 = 60_000_000;

impl Workflow {
    /// A workflow with its clients.
    pub fn new(
        store: Store,
        authz: Authz,
        ticketing: TicketingServiceClient<InternalChannel>,
        approval: ApprovalServiceClient<InternalChannel>,
        identity: ServiceIdentity,
        cfg: WorkflowConfig,
    ) -> Self {
        Self {
            store,
            authz,
            ticketing,
            approval,
            identity,
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

    /// The approval client (for dry runs).
    pub fn approval(&self) -> ApprovalServiceClient<InternalChannel> {
        self.approval.clone()
    }

    /// The service identity.
    pub fn identity(&self) -> &ServiceIdentity {
        &self.identity
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

    /// The delay before retry number `attempt` (1 for the first), see [`backoff_ms`].
    fn backoff_ms(&self, attempt: u32) -> u64 {
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
                let next = r.as_ref().and_then(|r| {
                    (state_of(r) == RequestState::Approved && r.reverted_time.is_none())
                        .then_some(r.revert_at)
                        .flatten()
                });
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
        let state = state_of(r);
        let now = now_micros();
        if r.case_number.is_none() {
            if state == RequestState::New && r.decided_by.is_none() {
                self.first_steps(r, None).await?;
            } else {
                self.open_case(r).await?;
            }
            return Ok(true);
        }
        if state.is_open() {
            match r.decision_approved {
                None if state == RequestState::New => return self.evaluate(r).await.map(|()| true),
                Some(true) => return self.apply(r).await.map(|()| true),
                Some(false) => {
                    let by = r.decided_by.clone().unwrap_or_else(|| SYSTEM.to_owned());
                    let why = r.decision_reason.clone().unwrap_or_default();
                    let t = Transition {
                        from: state,
                        to: next(state, Event::Reject).map_err(|v| DbErr::Custom(v.to_string()))?,
                        actor: by.clone(),
                        reason: why.clone(),
                        set: vec![],
                        effects: vec![
                            Effect::Release("rejected".into()).by(&by),
                            Effect::CloseCase(format!("Rejected by {by}: {why}")).by(&by),
                        ],
                    };
                    self.store.transition(&r.request_id, t, now).await?;
                    return Ok(true);
                }
                None => {}
            }
        }
        let effects = self.store.pending_effects(&r.request_id).await?;
        if !effects.is_empty() {
            for e in effects {
                self.carry_out(r, &e).await?;
                self.store.effect_done(e.id, now_micros()).await?;
            }
            return Ok(true);
        }
        if state == RequestState::Approved && r.reverted_time.is_none() && r.revert_at.is_some_and(|t| t <= now) {
            self.revert(r).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Opens the request's case (or finds the one opened before: the request id is its
    /// external reference); its number.
    async fn open_case_call(&self, r: &request::Model, change: &ValidatedChange) -> Result<String, StepError> {
        let summary = describe(change);
        let req = pb::OpenCaseRequest {
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
            .ticketing
            .clone()
            .open_case(self.identity.request(req, Some(&r.requester)))
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
        let req = pb::EvaluateIncreaseRequest {
            request_id: r.request_id.clone(),
            business_unit_id: r.business_unit_id.clone(),
            cluster: r.cluster.clone(),
            increase,
        };
        let answer = self
            .approval
            .clone()
            .evaluate_increase(self.identity.request(req, Some(&r.requester)))
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
        if answer.outcome() == pb::EvaluationOutcome::Fits {
            return Ok(Verdict::Fits(format!(
                "approved automatically: +{increase} concurrent ports fit the daily limit of {} ({budget})",
                answer.day
            )));
        }
        let why = format!(
            "+{increase} concurrent ports exceed the daily limit for automatic approval on {} ({budget})",
            answer.day
        );
        let (to, effects) = Self::to_review(r, &why)?;
        Ok(Verdict::Exceeds { why, to, effects })
    }

    /// What a request that exceeds the daily limit goes to, with its effects: review when
    /// it came with a justification, else a request for information.
    fn to_review(r: &request::Model, why: &str) -> Result<(RequestState, Vec<NewEffect>), DbErr> {
        let (event, effects) = if r.justification.is_some() {
            (
                Event::SendToReview,
                vec![
                    Effect::Comment(format!(
                        "{why}. Sent to Network Operations for review with the justification given."
                    ))
                    .by(SYSTEM),
                    Effect::CaseStatus(pb::CaseStatus::Escalated).by(SYSTEM),
                    Effect::SubmitReview.by(SYSTEM),
                ],
            )
        } else {
            (
                Event::AskForInformation,
                vec![
                    Effect::Comment(format!("{why}. Please provide a justification (PortRequestService.ProvideInformation) to send the request for approval.")).by(SYSTEM),
                    Effect::CaseStatus(pb::CaseStatus::WaitingOnCustomer).by(SYSTEM),
                ],
            )
        };
        let to = next(RequestState::New, event).map_err(|v| DbErr::Custom(v.to_string()))?;
        Ok((to, effects))
    }

    async fn evaluate(&self, r: &request::Model) -> Result<(), StepError> {
        let now = now_micros();
        match self.verdict(r, &change_of(r)?).await? {
            Verdict::Fits(reason) => {
                self.store
                    .record_decision(
                        &r.request_id,
                        RequestState::New,
                        SYSTEM,
                        true,
                        &reason,
                        "AUTOMATIC",
                        now,
                        Self::lease_until(now),
                    )
                    .await?;
            }
            Verdict::Exceeds { why, to, effects } => {
                self.store
                    .transition(
                        &r.request_id,
                        Transition {
                            from: RequestState::New,
                            to,
                            actor: SYSTEM.to_owned(),
                            reason: why,
                            set: vec![(request::Column::ApprovalPath, Expr::val("REVIEW"))],
                            effects,
                        },
                        now,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// The first steps of a new request (no case, no decision yet), in one: its case is
    /// opened and its increase evaluated at the same time, then the case number, the
    /// decision and what follows from it (the limits applied and the case's closing queued;
    /// or the request sent to review, or asked for information) are written in one
    /// transaction (BENCHMARKS.md, "Statements per create"). Both calls are idempotent, so
    /// a failure of either writes nothing and the whole step is retried. `facts` are the
    /// business unit's as the caller's authorization answered them, if at hand. `None` when
    /// the request was no longer new meanwhile (another replica's worker took it).
    pub async fn first_steps(
        &self,
        r: &request::Model,
        facts: Option<BusinessUnitFacts>,
    ) -> Result<Option<Started>, StepError> {
        let change = change_of(r)?;
        let (case, verdict) = tokio::join!(self.open_case_call(r, &change), self.verdict(r, &change));
        let (case, verdict) = (case?, verdict?);
        let facts = match (&verdict, facts) {
            (Verdict::Fits(_), None) => self.facts(&r.business_unit_id).await?,
            (_, facts) => facts,
        };
        let now = now_micros();
        let step = self
            .store
            .first_step(r, change.before, now, |current| {
                first_plan(r, &change, &case, &verdict, facts, current, now)
            })
            .await?;
        match step {
            FirstStep::Done(started) => {
                tracing::info!(
                    request_id = r.request_id,
                    state = started.request.state,
                    case = case,
                    "request decided"
                );
                Ok(Some(*started))
            }
            FirstStep::Moved => Ok(None),
            FirstStep::HeldByAnother(holder) => Err(Self::case_held_by_another(r, &case, &holder)),
        }
    }

    /// Takes a request just created through its first steps and answers with it as they
    /// left it; what remains (the calls of its outbox, e.g. closing the case) continues in
    /// the background, so the caller waits for its outcome being durable, not for them.
    /// `None` when the steps could not run now (a dependency is down: they are retried
    /// with backoff) or another worker took the request.
    pub async fn start(self: &Arc<Self>, r: &request::Model, facts: BusinessUnitFacts) -> Option<Started> {
        let id = r.request_id.as_str();
        match self.first_steps(r, Some(facts)).await {
            Ok(Some(started)) => {
                self.changed(id);
                let wf = Arc::clone(self);
                let (request, effects) = (started.request.clone(), started.effects.clone());
                // Closing the case of a request that is over goes on after the answer; the
                // calls that tell the requester to act (a comment asking for a
                // justification, the case's new status) are made before it, so the case
                // says so when the caller looks.
                if effects
                    .iter()
                    .all(|e| matches!(Effect::decode(&e.kind, &e.argument), Some(Effect::CloseCase(_))))
                {
                    tokio::spawn(async move { wf.finish(request, effects).await }.in_current_span());
                } else {
                    wf.finish(request, effects).await;
                }
                Some(started)
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
        let next = (state_of(&r) == RequestState::Approved && r.reverted_time.is_none())
            .then_some(r.revert_at)
            .flatten();
        if let Err(e) = self.store.effects_done(&id, &ids, next, now_micros()).await {
            // The effects are carried out again by the worker once the lease ends; each is
            // idempotent on the other side.
            tracing::warn!(request_id = id, error = %e, "cannot record the outbox carried out; the worker will");
        }
        self.changed(&id);
    }

    async fn facts(&self, bu: &str) -> Result<Option<BusinessUnitFacts>, StepError> {
        let bu = self
            .authz
            .business_unit(bu)
            .await
            .map_err(|s| StepError::Retry(s.message().to_owned()))?;
        Ok(bu.map(|b| BusinessUnitFacts {
            monitoring_gateway: b.monitoring_gateway_enabled,
            personal_connection: b.personal_connection_enabled,
        }))
    }

    async fn apply(&self, r: &request::Model) -> Result<(), StepError> {
        let state = state_of(r);
        let facts = self.facts(&r.business_unit_id).await?;
        let change = change_of(r)?;
        let event = if state == RequestState::New {
            Event::AutoApprove
        } else {
            Event::Approve
        };
        let by = r.decided_by.clone().unwrap_or_else(|| SYSTEM.to_owned());
        let reason = r.decision_reason.clone().unwrap_or_default();
        let automatic = r.approval_path.as_deref() == Some("AUTOMATIC");
        let applied = self
            .store
            .apply(&r.request_id, state, now_micros(), |_, current| {
                let current = limits_of(current);
                let result = match facts {
                    None => Err("the business unit no longer exists".to_owned()),
                    Some(f) => reapply(&change, current, f).map_err(|v| v.to_string()),
                };
                match (result, next(state, event)) {
                    (Ok(after), Ok(to)) => {
                        let how = if automatic {
                            "Approved automatically".to_owned()
                        } else {
                            format!("Approved by {by}")
                        };
                        let resolution = format!("{how} and applied: {current} -> {after}. {reason}");
                        Apply::Limits(
                            limits_row(&r.business_unit_id, after),
                            Transition {
                                from: state,
                                to,
                                actor: by.clone(),
                                reason: format!("{reason}; applied: {current} -> {after}"),
                                set: vec![],
                                effects: vec![Effect::CloseCase(resolution).by(&by)],
                            },
                        )
                    }
                    (Err(why), _) | (_, Err(sspm_rules::Violation { message: why, .. })) => Apply::Fail(Transition {
                        from: state,
                        to: RequestState::Failed,
                        actor: SYSTEM.to_owned(),
                        reason: format!("approved but cannot be applied: {why}"),
                        set: vec![(request::Column::FailureReason, Expr::val(why.clone()))],
                        effects: cannot_apply(&why),
                    }),
                }
            })
            .await?;
        if let Some(applied) = applied {
            tracing::info!(request_id = r.request_id, applied, "approved change processed");
        }
        Ok(())
    }

    async fn revert(&self, r: &request::Model) -> Result<(), StepError> {
        // Without facts the revert still runs, clamped as with Personal Connection: that
        // keeps R2 whatever the business unit's flags are.
        let facts = self.facts(&r.business_unit_id).await?.unwrap_or(BusinessUnitFacts {
            monitoring_gateway: true,
            personal_connection: true,
        });
        let change = change_of(r)?;
        let reverted = self
            .store
            .revert(&r.request_id, now_micros(), |_, current| {
                let before = limits_of(Some(current));
                let after = revert(&change, before, facts);
                let text = format!("temporary change reverted: {before} -> {after}");
                (
                    limits_row(&r.business_unit_id, after),
                    Entry {
                        kind: "REVERTED",
                        actor: SYSTEM.to_owned(),
                        from: Some(RequestState::Approved),
                        to: RequestState::Approved,
                        reason: text.clone(),
                    },
                    Effect::Comment(format!("The {text} (requested by {}).", r.requester)).by(SYSTEM),
                )
            })
            .await?;
        if reverted {
            tracing::info!(request_id = r.request_id, "temporary change reverted");
        }
        Ok(())
    }

    /// Carries out one effect. Answers that mean "already done" count as done; other
    /// permanent refusals are recorded as a note and not retried.
    async fn carry_out(&self, r: &request::Model, e: &effect::Model) -> Result<(), StepError> {
        let Some(effect) = Effect::decode(&e.kind, &e.argument) else {
            tracing::error!(request_id = r.request_id, kind = e.kind, "unknown effect; skipped");
            return Ok(());
        };
        let case = r.case_number.clone().unwrap_or_default();
        let actor = Some(e.actor.as_str());
        let is_status = matches!(effect, Effect::CaseStatus(_));
        let result = match effect {
            Effect::Comment(body) => self
                .ticketing
                .clone()
                .add_case_comment(self.identity.request(
                    pb::AddCaseCommentRequest {
                        case_number: case,
                        body,
                        // The outbox entry's id: a retry after a crash or a timeout
                        // does not comment twice.
                        comment_id: format!("{}/{}", r.request_id, e.id),
                    },
                    actor,
                ))
                .await
                .map(|_| ()),
            Effect::CaseStatus(status) => self
                .ticketing
                .clone()
                .update_case_status(self.identity.request(
                    pb::UpdateCaseStatusRequest {
                        case_number: case,
                        status: status.into(),
                    },
                    actor,
                ))
                .await
                .map(|_| ()),
            Effect::CloseCase(resolution) => self
                .ticketing
                .clone()
                .close_case(self.identity.request(
                    pb::CloseCaseRequest {
                        case_number: case,
                        resolution,
                    },
                    actor,
                ))
                .await
                .map(|_| ()),
            Effect::SubmitReview => {
                let change = change_of(r)?;
                let (units, nanos) = sspm_rules::Amount {
                    currency: r.currency.clone(),
                    micros: r.cost_change_micros,
                }
                .units_and_nanos();
                self.approval
                    .clone()
                    .submit_for_review(self.identity.request(
                        pb::SubmitForReviewRequest {
                            request_id: r.request_id.clone(),
                            business_unit_id: r.business_unit_id.clone(),
                            cluster: r.cluster.clone(),
                            requester: r.requester.clone(),
                            case_number: case,
                            limits_before: Some(crate::convert::limits_pb(change.before)),
                            targets: Some(pb::PortTargets {
                                concurrent: r.target_concurrent,
                                outbound: r.target_outbound,
                                agentless: r.target_agentless,
                            }),
                            justification: r.justification.clone().unwrap_or_default(),
                            estimated_monthly_cost_change: Some(pb::Money {
                                currency_code: r.currency.clone(),
                                units,
                                nanos,
                            }),
                        },
                        actor,
                    ))
                    .await
                    .map(|_| ())
            }
            Effect::WithdrawReview(reason) => self
                .approval
                .clone()
                .withdraw_review(self.identity.request(
                    pb::WithdrawReviewRequest {
                        request_id: r.request_id.clone(),
                        reason,
                    },
                    actor,
                ))
                .await
                .map(|_| ()),
            Effect::Release(reason) => self
                .approval
                .clone()
                .release_reservation(self.identity.request(
                    pb::ReleaseReservationRequest {
                        request_id: r.request_id.clone(),
                        reason,
                    },
                    actor,
                ))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(s) if is_transient(&s) => Err(remote("a dependency", &s)),
            // A closed case cannot change status; anything else permanent is recorded.
            Err(s) if s.code() == Code::FailedPrecondition && is_status => Ok(()),
            Err(s) => {
                tracing::error!(request_id = r.request_id, effect = e.kind, code = ?s.code(), message = s.message(), "effect refused");
                self.store
                    .note(
                        &r.request_id,
                        SYSTEM,
                        state_of(r),
                        &format!("{} could not be carried out: {}", e.kind, s.message()),
                        now_micros(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// A decision from the approval service (the feed or the poll): recorded on the request
    /// under review, then applied.
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
        let recorded = self
            .store
            .record_decision(
                &task.request_id,
                RequestState::UnderReview,
                &task.decided_by,
                approved,
                &task.decision_reason,
                "REVIEW",
                time,
                Self::lease_until(now_micros()),
            )
            .await?;
        if recorded {
            tracing::info!(
                request_id = task.request_id,
                approved,
                by = task.decided_by,
                "decision received"
            );
            self.drive(&task.request_id).await;
        } else if let Some(r) = self.store.request(&task.request_id).await?
            && state_of(&r) == RequestState::UnderReview
            && r.decided_by.is_some()
        {
            // Recorded before, but not applied: the service stopped in between (the feed
            // resumes from the decision's cursor). Apply it now.
            tracing::info!(request_id = task.request_id, "decision recorded earlier; applying it");
            self.drive(&task.request_id).await;
        }
        Ok(())
    }

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
            let req = pb::WatchDecisionsRequest {
                after_cursor: u64::try_from(after).unwrap_or_default(),
            };
            let mut stream = match self
                .approval
                .clone()
                .watch_decisions(self.identity.request(req, None))
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
                    .approval
                    .clone()
                    .get_approval_task(self.identity.request(req, None))
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

fn remote(dependency: &str, s: &Status) -> StepError {
    StepError::Retry(format!("{dependency}: {:?}: {}", s.code(), s.message()))
}

/// "concurrent 100 -> 120, outbound 20 -> 40".
pub fn describe(change: &ValidatedChange) -> String {
    let parts: Vec<String> = change
        .changed_kinds()
        .map(|k| format!("{k} {} -> {}", change.before.get(k), change.after.get(k)))
        .collect();
    if parts.is_empty() {
        "no change".to_owned()
    } else {
        parts.join(", ")
    }
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
