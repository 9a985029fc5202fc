//! A create, after the handler parsed it and the authorization service allowed it: the
//! request computed from the business unit's limits, written in state NEW (its primary key
//! answers a replay, the R5 index another open request, a compare-and-set on the limits a
//! change applied meanwhile), then taken through its first steps ([`Workflow::start`]). A
//! dry run (`validate_only`) computes the same and writes nothing. Errors are one type
//! ([`CreateError`]), mapped to a `Status` at the edge.

use std::sync::Arc;

use sea_orm::DbErr;
use sspm_platform::db::{DbErrorKind, classify};
use sspm_platform::rpc::now_micros;
use sspm_proto::v1 as pb;
use sspm_rules::daily::{Budget, LimitScope};
use sspm_rules::{
    BusinessUnitFacts, CreateCommand, Price, PrincipalId, RequestState, Rule, ValidatedChange, Violation, Violations,
    monthly_cost_change,
};
use tonic::Status;

use crate::capacity::Membership;
use crate::entities::request;
use crate::model::limits_of;
use crate::plan::{Entry, HistoryKind, describe};
use crate::store::{Inserted, Written};
use crate::workflow::Workflow;

/// A create to carry out.
#[derive(Debug, Clone, Copy)]
pub struct Create<'a> {
    /// What was asked, parsed.
    pub command: &'a CreateCommand,
    /// Who asks.
    pub requester: &'a PrincipalId,
    /// The business unit as the authorization service answered (cluster, feature flags).
    pub unit: &'a pb::BusinessUnit,
    /// R10's price.
    pub price: &'a Price,
}

/// What a create did.
#[derive(Debug)]
pub enum Created {
    /// The same create was made before (same id, requester and payload): the request as
    /// stored.
    Replay(request::Model),
    /// Written, with its creation entry; `started` is the request as its first steps left
    /// it, or `None` when they did not finish in this call (the worker goes on with them).
    Written {
        /// The request as inserted.
        model: request::Model,
        /// Its creation entry.
        entry: Entry,
        /// After the first steps.
        started: Option<Written>,
    },
}

/// What a dry run found.
#[derive(Debug)]
pub enum DryRun {
    /// The same create was made before: the request as stored.
    Replay(request::Model),
    /// The request that would be created, and what would happen to it.
    Would {
        /// The request, not written.
        model: request::Model,
        /// Applied at once, sent to review, or waiting for a justification.
        outcome: pb::CreateOutcome,
    },
}

/// Why a create was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The change breaks rules (FAILED_PRECONDITION, each rule named).
    #[error("{0:?}")]
    Refused(Violations),
    /// The id names another request (ALREADY_EXISTS).
    #[error("request id {0} is already used for another request; choose a new id")]
    IdTaken(String),
    /// R5: the business unit has another open request.
    #[error("{0}")]
    OpenRequest(Violation),
    /// The business unit's limits changed at every attempt (ABORTED: retry).
    #[error("the business unit's limits keep changing while the request is made; retry")]
    LimitsKeepMoving,
    /// The approval service could not say whether a dry run fits the daily limit.
    #[error("{}", .0.message())]
    Downstream(Status),
    /// The database failed.
    #[error("{what}: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: DbErr,
    },
}

impl From<CreateError> for Status {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Refused(v) => sspm_platform::error::violations(&v),
            CreateError::IdTaken(_) => Status::already_exists(e.to_string()),
            CreateError::OpenRequest(v) => sspm_platform::error::violation(v),
            CreateError::LimitsKeepMoving => Status::aborted(e.to_string()),
            CreateError::Downstream(s) => s,
            CreateError::Db { what, source } => sspm_platform::error::database(what, &source),
        }
    }
}

fn db(what: &'static str) -> impl FnOnce(DbErr) -> CreateError {
    move |source| CreateError::Db { what, source }
}

/// R5's refusal, naming the open request.
pub fn r5(bu: &str, open: &str) -> Violation {
    Violation::new(
        Rule::R5OneOpenRequest,
        "business_unit_id",
        format!("business unit {bu} already has an open request ({open}); wait for it to finish or cancel it"),
    )
}

/// Whether stored request `r` is the one `command` by `requester` asks for (an idempotent
/// replay of a create) rather than another request under the same id.
pub fn same_create(command: &CreateCommand, r: &request::Model, requester: &PrincipalId) -> bool {
    r.requester == requester.as_str()
        && r.business_unit_id == command.business_unit_id.as_str()
        && (r.target_concurrent, r.target_outbound, r.target_agentless) == command.targets
        && r.justification.as_deref() == command.justification.as_ref().map(|j| j.as_str())
        && r.revert_at == command.revert_at
}

impl Create<'_> {
    fn facts(&self) -> BusinessUnitFacts {
        crate::workflow::facts_of(self.unit)
    }

    fn membership(&self) -> Membership {
        Membership::of(self.unit)
    }

    /// The stored request under this id, if it is this create made before; an error if the
    /// id is another request's.
    fn replay(&self, existing: request::Model) -> Result<request::Model, CreateError> {
        if same_create(self.command, &existing, self.requester) {
            Ok(existing)
        } else {
            Err(CreateError::IdTaken(self.command.request_id.to_string()))
        }
    }

    /// The request in state NEW and its creation entry, for `change` computed at `now`.
    fn new_request(&self, change: &ValidatedChange, now: i64) -> (request::Model, Entry) {
        let (command, t) = (self.command, self.command.targets);
        let cost = monthly_cost_change(change.before, change.after, self.price);
        let model = request::Model {
            request_id: command.request_id.to_string(),
            business_unit_id: command.business_unit_id.to_string(),
            cluster: self.unit.cluster.clone(),
            requester: self.requester.to_string(),
            state: RequestState::New.into(),
            case_number: None,
            before_concurrent: change.before.concurrent.get().into(),
            before_outbound: change.before.outbound.get().into(),
            before_agentless: change.before.agentless.get().into(),
            target_concurrent: t.0,
            target_outbound: t.1,
            target_agentless: t.2,
            cost_change_micros: cost.micros,
            currency: cost.currency,
            justification: command.justification.as_ref().map(ToString::to_string),
            approval_path: None,
            decided_by: None,
            decision_approved: None,
            decision_reason: None,
            decide_time: None,
            failure_reason: None,
            revert_at: command.revert_at,
            reverted_time: None,
            reverted_concurrent: None,
            reverted_outbound: None,
            reverted_agentless: None,
            // Leased to this call until its first steps are done; the worker takes it
            // over if the call dies.
            next_attempt_at: Some(Workflow::lease_until(now)),
            attempts: 0,
            create_time: now,
            update_time: now,
        };
        let entry = Entry {
            kind: HistoryKind::Transition,
            actor: self.requester.to_string(),
            from: None,
            to: RequestState::New,
            reason: format!("requested: {}", describe(change)),
        };
        (model, entry)
    }
}

impl Workflow {
    async fn existing(&self, id: &str) -> Result<Option<request::Model>, CreateError> {
        self.store.request(id).await.map_err(db("loading a request"))
    }

    /// The change against the business unit's limits as they are now, or the stored request
    /// when the change no longer validates because it is this create's, applied since.
    async fn compute(&self, c: &Create<'_>) -> Result<Result<ValidatedChange, request::Model>, CreateError> {
        let bu = c.command.business_unit_id.as_str();
        let (limits, room) = self
            .store
            .limits_and_room(bu, &c.membership())
            .await
            .map_err(db("loading limits"))?;
        let current = limits_of(limits.as_ref());
        // R12, R13 as things stand: an increase that does not fit its pool or cluster now is
        // refused before anything is written (the exact check is the first step's).
        let checked = c.command.change(current, c.facts(), now_micros()).and_then(|change| {
            room.check(change.before, change.after)
                .map(|()| change)
                .map_err(Into::into)
        });
        match checked {
            Ok(change) => Ok(Ok(change)),
            Err(v) => match self.existing(c.command.request_id.as_str()).await? {
                Some(existing) => Ok(Err(c.replay(existing)?)),
                None => Err(CreateError::Refused(v)),
            },
        }
    }

    /// Creates the request and runs its first steps: an automatic approval is applied and
    /// durable when this returns.
    pub async fn create(self: &Arc<Self>, c: Create<'_>) -> Result<Created, CreateError> {
        let (id, bu) = (c.command.request_id.as_str(), c.command.business_unit_id.as_str());
        // The request is computed from the limits as read; the insert checks, in its
        // transaction, that they have not moved since (else `before` would be stale).
        let mut attempt = 0;
        let (model, entry) = loop {
            attempt += 1;
            let change = match self.compute(&c).await? {
                Ok(change) => change,
                Err(replay) => return Ok(Created::Replay(replay)),
            };
            let (model, entry) = c.new_request(&change, now_micros());
            match self.store.insert(model.clone(), entry.clone()).await {
                Ok(Inserted::Done) => {
                    tracing::info!(request_id = %id, business_unit = %bu, requester = %c.requester,
                        change = %describe(&change), "request created");
                    break (model, entry);
                }
                // A change applied meanwhile: compute the request again.
                Ok(Inserted::LimitsMoved) if attempt < 5 => {}
                Ok(Inserted::LimitsMoved) => return Err(CreateError::LimitsKeepMoving),
                Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
                    // Either the same id was created concurrently (a replay), or another
                    // request for the business unit opened first (R5, in the database).
                    if let Some(existing) = self.existing(id).await? {
                        return Ok(Created::Replay(c.replay(existing)?));
                    }
                    let open = self
                        .store
                        .open_request_of(bu)
                        .await
                        .map_err(db("loading the open request"))?
                        .unwrap_or_default();
                    return Err(CreateError::OpenRequest(r5(bu, &open)));
                }
                Err(e) => {
                    return Err(CreateError::Db {
                        what: "creating a request",
                        source: e,
                    });
                }
            }
        };
        let started = self.start(&model, (c.facts(), c.membership())).await;
        Ok(Created::Written { model, entry, started })
    }

    /// What [`Workflow::create`] would do, writing nothing.
    pub async fn dry_run(&self, c: Create<'_>) -> Result<DryRun, CreateError> {
        let bu = c.command.business_unit_id.as_str();
        if let Some(existing) = self.existing(c.command.request_id.as_str()).await? {
            return Ok(DryRun::Replay(c.replay(existing)?));
        }
        let change = match self.compute(&c).await? {
            Ok(change) => change,
            Err(replay) => return Ok(DryRun::Replay(replay)),
        };
        if let Some(open) = self
            .store
            .open_request_of(bu)
            .await
            .map_err(db("loading the open request"))?
        {
            return Err(CreateError::OpenRequest(r5(bu, &open)));
        }
        let (model, _) = c.new_request(&change, now_micros());
        let outcome = if !change.needs_daily_limit_check()
            || self
                .would_fit(bu, &c.unit.cluster, change.concurrent_increase())
                .await?
        {
            pb::CreateOutcome::AutoApproved
        } else if c.command.justification.is_some() {
            pb::CreateOutcome::SentToReview
        } else {
            pb::CreateOutcome::NeedsInformation
        };
        Ok(DryRun::Would { model, outcome })
    }

    /// Whether an increase would fit the daily limits now (R8, the approval service's
    /// arithmetic on its figures), for a dry run.
    async fn would_fit(&self, bu: &str, cluster: &str, increase: u16) -> Result<bool, CreateError> {
        let req = pb::GetDailyUsageRequest {
            cluster: cluster.to_owned(),
            business_unit_id: bu.to_owned(),
            day: String::new(),
        };
        let usage = self
            .approval()
            .get_daily_usage(self.identity().request(req, None))
            .await
            .map_err(|s| CreateError::Downstream(sspm_platform::rpc::downstream("approval service", &s)))?
            .into_inner();
        let budgets: Vec<Budget> = usage
            .usage
            .iter()
            .map(|u| {
                let limit = u.limit.clone().unwrap_or_default();
                Budget {
                    scope: match limit.scope() {
                        pb::LimitScope::BusinessUnit => LimitScope::BusinessUnit,
                        pb::LimitScope::Cluster => LimitScope::Cluster,
                        _ => LimitScope::Default,
                    },
                    max: u32::try_from(limit.max_daily_increase).unwrap_or(0),
                    used: u32::try_from(u.used).unwrap_or(0),
                }
            })
            .collect();
        Ok(sspm_rules::daily::evaluate(&budgets, u32::from(increase)).fits)
    }
}
