//! `sspm.v1.ApprovalService`: daily limits and their ledger, approval tasks and decisions.
//! Evaluations, reservations, submissions and the decision feed are internal (SSPM
//! services); Network Operations sets limits and decides tasks.

use std::pin::Pin;
use std::time::Duration;

use sea_orm::ActiveEnum;
use sspm_platform::auth::{Principal as Caller, PrincipalKind as CallerKind};
use sspm_platform::error::{self, db, not_found, permission_denied};
use sspm_platform::rpc::{
    Authz, enum_filter, invalid, next_page_token, now_micros, page_size, page_time_id, parse_at, required_enum,
    time_id_key, timestamp, timestamp_opt,
};
use sspm_platform::{Draining, caller};
use sspm_proto::internal::v1 as ipb;
use sspm_proto::internal::v1::approval_service_server::ApprovalService as InternalApprovalService;
use sspm_proto::v1 as pb;
use sspm_proto::v1::approval_service_server::ApprovalService;
use sspm_rules::daily::{format_day, ledger_day, parse_day};
use sspm_rules::{Amount, BusinessUnitId, CaseNumber, ClusterName, PortLimit, PrincipalId, RequestId, Text};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::entities::daily_limit::Scope;
use crate::entities::{daily_limit, task};
use crate::store::{Decided, Evaluated, Store, TASK_PREFIX, Usage};

/// The handlers.
#[derive(Debug, Clone)]
pub struct ApprovalApi {
    store: Store,
    authz: Authz,
    day_offset_seconds: i32,
    decided: watch::Sender<u64>,
    draining: Draining,
    feed_poll: Duration,
}

impl ApprovalApi {
    /// Handlers on `store`; ledger days start `day_offset_minutes` after midnight UTC;
    /// decision streams end when `draining` starts.
    pub fn new(store: Store, authz: Authz, day_offset_minutes: i32, draining: Draining) -> Self {
        Self {
            store,
            authz,
            day_offset_seconds: day_offset_minutes * 60,
            decided: watch::Sender::new(0),
            draining,
            feed_poll: Duration::from_secs(1),
        }
    }

    /// How often an idle decision feed looks for other replicas' decisions.
    pub fn with_feed_poll(mut self, every: Duration) -> Self {
        self.feed_poll = every;
        self
    }

    fn today(&self) -> i64 {
        ledger_day(now_micros() / 1_000_000, self.day_offset_seconds)
    }

    /// Users allowed one of `actions` (global Network Operations actions). A service token
    /// never passes: services read only what the caller table lets them ([`Self::require_staff_or_service`]).
    async fn require_staff(&self, caller: &Caller, actions: &[pb::Action]) -> Result<(), Status> {
        if caller.is_service() {
            return Err(permission_denied("staff actions are for people, not services", &[]));
        }
        let mut first = None;
        for a in actions {
            match self.authz.require(&caller.id, *a, "").await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_else(|| permission_denied("not allowed", &[])))
    }

    /// [`Self::require_staff`], or a service the caller table admitted to this read (the
    /// request service reading a task it applies, or the day's usage for a dry run).
    async fn require_staff_or_service(&self, caller: &Caller, actions: &[pb::Action]) -> Result<(), Status> {
        if caller.is_service() {
            return Ok(());
        }
        self.require_staff(caller, actions).await
    }

    fn usage_pb(&self, usage: Vec<Usage>) -> Vec<pb::LimitUsage> {
        usage
            .into_iter()
            .map(|u| pb::LimitUsage {
                remaining: (u.limit.max_daily_increase - u.used).max(0),
                used: u.used,
                limit: Some(limit_pb(u.limit)),
            })
            .collect()
    }
}

fn limit_pb(l: daily_limit::Model) -> pb::DailyLimit {
    pb::DailyLimit {
        scope: pb::LimitScope::from(l.scope).into(),
        target: l.target,
        max_daily_increase: l.max_daily_increase,
        updated_by: l.updated_by,
        update_time: (l.update_time > 0).then(|| timestamp(l.update_time)),
    }
}

/// A task as the API shows it.
pub fn task_pb(t: task::Model) -> pb::ApprovalTask {
    let (units, nanos) = Amount {
        currency: t.currency.clone(),
        micros: t.cost_change_micros,
    }
    .units_and_nanos();
    pb::ApprovalTask {
        task_id: t.task_id,
        request_id: t.request_id,
        business_unit_id: t.business_unit_id,
        cluster: t.cluster,
        requester: t.requester,
        case_number: t.case_number,
        limits_before: Some(pb::PortLimits {
            concurrent: t.before_concurrent,
            outbound: t.before_outbound,
            agentless: t.before_agentless,
        }),
        targets: Some(pb::PortTargets {
            concurrent: t.target_concurrent,
            outbound: t.target_outbound,
            agentless: t.target_agentless,
        }),
        justification: t.justification,
        estimated_monthly_cost_change: Some(pb::Money {
            currency_code: t.currency,
            units,
            nanos,
        }),
        state: pb::ApprovalTaskState::from(t.state).into(),
        decided_by: t.decided_by.unwrap_or_default(),
        decision_reason: t.decision_reason.unwrap_or_default(),
        create_time: Some(timestamp(t.create_time)),
        decide_time: timestamp_opt(t.decide_time),
    }
}

fn port(field: &str, v: i32) -> Result<i32, Status> {
    PortLimit::parse(i64::from(v), field)
        .map(|p| i32::from(p.get()))
        .map_err(error::violation)
}

fn opt_port(field: &str, v: Option<i32>) -> Result<Option<i32>, Status> {
    v.map(|v| port(field, v)).transpose()
}

fn money_micros(m: Option<&pb::Money>) -> Result<(i64, String), Status> {
    let Some(m) = m else {
        return Ok((0, String::new()));
    };
    let micros = m
        .units
        .checked_mul(1_000_000)
        .and_then(|u| u.checked_add(i64::from(m.nanos) / 1_000))
        .ok_or_else(|| invalid("estimated_monthly_cost_change", "out of range"))?;
    Ok((micros, m.currency_code.clone()))
}

type DecisionStream = Pin<Box<dyn Stream<Item = Result<ipb::WatchDecisionsResponse, Status>> + Send>>;

/// A well-formed task id, or INVALID_ARGUMENT.
fn task_id(raw: &str) -> Result<&str, Status> {
    match raw.strip_prefix(TASK_PREFIX).map(RequestId::parse) {
        Some(Ok(_)) => Ok(raw),
        _ => Err(invalid(
            "task_id",
            format!("must be {TASK_PREFIX:?} followed by the request id, like \"task-req-1\""),
        )),
    }
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn list_approval_tasks(
        &self,
        request: Request<pb::ListApprovalTasksRequest>,
    ) -> Result<Response<pb::ListApprovalTasksResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff(&caller, &[pb::Action::DecideApprovals]).await?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let after = page_time_id(&req.page_token)?;
        // enum_filter refuses APPROVAL_TASK_STATE_UNSPECIFIED: every value names a state.
        let states: Vec<task::State> = enum_filter::<pb::ApprovalTaskState>("states", &req.states)?
            .into_iter()
            .filter_map(|s| task::State::try_from(s).ok())
            .collect();
        let cluster = if req.cluster.is_empty() {
            None
        } else {
            Some(parse_at("cluster", ClusterName::parse(&req.cluster))?.to_string())
        };
        let mut rows = self
            .store
            .tasks(&states, cluster.as_deref(), after, size + 1)
            .await
            .map_err(db("listing tasks"))?;
        let next = next_page_token(&mut rows, size, |t| time_id_key(t.create_time, &t.task_id));
        Ok(Response::new(pb::ListApprovalTasksResponse {
            tasks: rows.into_iter().map(task_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn get_approval_task(
        &self,
        request: Request<pb::GetApprovalTaskRequest>,
    ) -> Result<Response<pb::GetApprovalTaskResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff_or_service(&caller, &[pb::Action::DecideApprovals])
            .await?;
        let (t, id) = match request.into_inner().key {
            Some(pb::get_approval_task_request::Key::TaskId(id)) => {
                (self.store.task(task_id(&id)?).await.map_err(db("loading a task"))?, id)
            }
            Some(pb::get_approval_task_request::Key::RequestId(id)) => {
                let request = parse_at("request_id", RequestId::parse(&id))?;
                (
                    self.store
                        .task_of_request(request.as_str())
                        .await
                        .map_err(db("loading a task"))?,
                    id,
                )
            }
            None => return Err(invalid("key", "set task_id or request_id")),
        };
        let t = t.ok_or_else(|| not_found("approval task", &id))?;
        Ok(Response::new(pb::GetApprovalTaskResponse { task: Some(task_pb(t)) }))
    }

    async fn decide_approval_task(
        &self,
        request: Request<pb::DecideApprovalTaskRequest>,
    ) -> Result<Response<pb::DecideApprovalTaskResponse>, Status> {
        let caller = caller(&request)?;
        if caller.kind == CallerKind::Service {
            return Err(permission_denied(
                "decisions are made by people holding Network Operations › Approvals",
                &["NETWORK_OPERATIONS_APPROVE"],
            ));
        }
        self.authz.require(&caller.id, pb::Action::DecideApprovals, "").await?;
        let req = request.into_inner();
        task_id(&req.task_id)?;
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let existing = self
            .store
            .task(&req.task_id)
            .await
            .map_err(db("loading a task"))?
            .ok_or_else(|| not_found("approval task", &req.task_id))?;
        if existing.requester == caller.id.as_str() {
            return Err(permission_denied("an approver cannot decide their own request", &[]));
        }
        let decided = self
            .store
            .decide(
                &req.task_id,
                req.approve,
                caller.id.as_str(),
                reason.as_str(),
                now_micros(),
            )
            .await
            .map_err(db("deciding a task"))?;
        match decided {
            Decided::Now(_) => {
                self.decided.send_modify(|n| *n += 1);
                let t = self.store.task(&req.task_id).await.map_err(db("loading a task"))?;
                tracing::info!(task_id = req.task_id, approved = req.approve, by = %caller.id, "task decided");
                Ok(Response::new(pb::DecideApprovalTaskResponse { task: t.map(task_pb) }))
            }
            Decided::NotFound => Err(not_found("approval task", &req.task_id)),
            Decided::Already(t) => Err(Status::failed_precondition(format!(
                "task {} is already {}{}",
                t.task_id,
                t.state.to_value(),
                t.decided_by.map(|b| format!(" by {b}")).unwrap_or_default()
            ))),
        }
    }

    async fn set_daily_limit(
        &self,
        request: Request<pb::SetDailyLimitRequest>,
    ) -> Result<Response<pb::SetDailyLimitResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff(&caller, &[pb::Action::ManageDailyLimits]).await?;
        let l = request
            .into_inner()
            .limit
            .ok_or_else(|| invalid("limit", "is required"))?;
        let scope: pb::LimitScope = required_enum("limit.scope", l.scope)?;
        let (scope, target) = self.limit_key(scope, &l.target, "limit.target").await?;
        if !(0..=i32::from(PortLimit::MAX)).contains(&l.max_daily_increase) {
            return Err(invalid("limit.max_daily_increase", "must be 0 to 9999 ports"));
        }
        let model = daily_limit::Model {
            scope,
            target,
            max_daily_increase: l.max_daily_increase,
            updated_by: caller.id.to_string(),
            update_time: now_micros(),
        };
        self.store
            .set_limit(model.clone())
            .await
            .map_err(db("setting a daily limit"))?;
        tracing::info!(scope = %scope, target = model.target, max = model.max_daily_increase, by = %caller.id, "daily limit set");
        Ok(Response::new(pb::SetDailyLimitResponse {
            limit: Some(limit_pb(model)),
        }))
    }

    async fn clear_daily_limit(
        &self,
        request: Request<pb::ClearDailyLimitRequest>,
    ) -> Result<Response<pb::ClearDailyLimitResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff(&caller, &[pb::Action::ManageDailyLimits]).await?;
        let req = request.into_inner();
        let scope: pb::LimitScope = required_enum("scope", req.scope)?;
        if scope == pb::LimitScope::Default {
            return Err(invalid(
                "scope",
                "the default limit cannot be cleared; set it to another value instead",
            ));
        }
        let (scope, target) = self.limit_key(scope, &req.target, "target").await?;
        let cleared = self
            .store
            .clear_limit(scope, &target, now_micros())
            .await
            .map_err(db("clearing a daily limit"))?;
        Ok(Response::new(pb::ClearDailyLimitResponse { cleared }))
    }

    async fn list_daily_limits(
        &self,
        request: Request<pb::ListDailyLimitsRequest>,
    ) -> Result<Response<pb::ListDailyLimitsResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff(&caller, &[pb::Action::ManageDailyLimits, pb::Action::DecideApprovals])
            .await?;
        let limits = self.store.limits().await.map_err(db("listing daily limits"))?;
        Ok(Response::new(pb::ListDailyLimitsResponse {
            limits: limits.into_iter().map(limit_pb).collect(),
        }))
    }

    async fn get_daily_usage(
        &self,
        request: Request<pb::GetDailyUsageRequest>,
    ) -> Result<Response<pb::GetDailyUsageResponse>, Status> {
        let caller = caller(&request)?;
        self.require_staff_or_service(&caller, &[pb::Action::ManageDailyLimits, pb::Action::DecideApprovals])
            .await?;
        let req = request.into_inner();
        let cluster = parse_at("cluster", ClusterName::parse(&req.cluster))?;
        let bu = if req.business_unit_id.is_empty() {
            String::new()
        } else {
            parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?.to_string()
        };
        let day = if req.day.is_empty() {
            self.today()
        } else {
            parse_day(&req.day).ok_or_else(|| invalid("day", "must be a date like 2026-11-22"))?
        };
        let mut usage = self
            .store
            .usage(day, cluster.as_str(), &bu)
            .await
            .map_err(db("reading usage"))?;
        if bu.is_empty() {
            usage.truncate(1);
        }
        Ok(Response::new(pb::GetDailyUsageResponse {
            day: format_day(day),
            usage: self.usage_pb(usage),
        }))
    }
}

#[tonic::async_trait]
impl InternalApprovalService for ApprovalApi {
    async fn evaluate_increase(
        &self,
        request: Request<ipb::EvaluateIncreaseRequest>,
    ) -> Result<Response<ipb::EvaluateIncreaseResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let request_id = parse_at("request_id", RequestId::parse(&req.request_id))?;
        let bu = parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?;
        let cluster = parse_at("cluster", ClusterName::parse(&req.cluster))?;
        if !(1..=i32::from(PortLimit::MAX)).contains(&req.increase) {
            return Err(invalid("increase", "must be 1 to 9999 ports"));
        }
        let today = self.today();
        let evaluated = self
            .store
            .evaluate(
                request_id.as_str(),
                bu.as_str(),
                cluster.as_str(),
                req.increase,
                today,
                now_micros(),
            )
            .await
            .map_err(db("evaluating an increase"))?;
        let (outcome, day, usage) = match evaluated {
            Evaluated::Fits(usage) => (ipb::EvaluationOutcome::Fits, today, usage),
            Evaluated::Exceeds(usage) => (ipb::EvaluationOutcome::Exceeds, today, usage),
            Evaluated::AlreadyReserved(r) if r.release_time.is_some() => {
                return Err(Status::failed_precondition(format!(
                    "the reservation of request {request_id} was released; a request is evaluated once"
                )));
            }
            Evaluated::AlreadyReserved(r) => {
                if r.increase != req.increase || r.business_unit_id != bu.as_str() {
                    return Err(Status::already_exists(format!(
                        "request {request_id} already reserved {} ports for {}",
                        r.increase, r.business_unit_id
                    )));
                }
                let usage = self
                    .store
                    .usage(r.day, cluster.as_str(), bu.as_str())
                    .await
                    .map_err(db("reading usage"))?;
                (ipb::EvaluationOutcome::Fits, r.day, usage)
            }
        };
        tracing::info!(request_id = %request_id, cluster = %cluster, increase = req.increase,
            outcome = outcome.as_str_name(), "increase evaluated");
        Ok(Response::new(ipb::EvaluateIncreaseResponse {
            outcome: outcome.into(),
            usage: self.usage_pb(usage),
            day: format_day(day),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<ipb::ReleaseReservationRequest>,
    ) -> Result<Response<ipb::ReleaseReservationResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let request_id = parse_at("request_id", RequestId::parse(&req.request_id))?;
        let released = self
            .store
            .release(request_id.as_str(), self.today(), now_micros())
            .await
            .map_err(db("releasing a reservation"))?;
        if released {
            tracing::info!(request_id = %request_id, reason = req.reason, "reservation released");
        }
        Ok(Response::new(ipb::ReleaseReservationResponse { released }))
    }

    async fn submit_for_review(
        &self,
        request: Request<ipb::SubmitForReviewRequest>,
    ) -> Result<Response<ipb::SubmitForReviewResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let request_id = parse_at("request_id", RequestId::parse(&req.request_id))?;
        let before = req
            .limits_before
            .ok_or_else(|| invalid("limits_before", "is required"))?;
        let targets = req.targets.unwrap_or_default();
        let (micros, currency) = money_micros(req.estimated_monthly_cost_change.as_ref())?;
        let t = task::Model {
            task_id: format!("{TASK_PREFIX}{request_id}"),
            request_id: request_id.to_string(),
            business_unit_id: parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?.to_string(),
            cluster: parse_at("cluster", ClusterName::parse(&req.cluster))?.to_string(),
            requester: parse_at("requester", PrincipalId::parse(&req.requester))?.to_string(),
            case_number: parse_at("case_number", CaseNumber::parse(&req.case_number))?.to_string(),
            before_concurrent: port("limits_before.concurrent", before.concurrent)?,
            before_outbound: port("limits_before.outbound", before.outbound)?,
            before_agentless: port("limits_before.agentless", before.agentless)?,
            target_concurrent: opt_port("targets.concurrent", targets.concurrent)?,
            target_outbound: opt_port("targets.outbound", targets.outbound)?,
            target_agentless: opt_port("targets.agentless", targets.agentless)?,
            justification: parse_at("justification", Text::parse(&req.justification, "justification"))?.to_string(),
            cost_change_micros: micros,
            currency,
            state: task::State::Pending,
            decided_by: None,
            decision_reason: None,
            create_time: now_micros(),
            decide_time: None,
        };
        let stored = self.store.submit(t).await.map_err(db("submitting for review"))?;
        Ok(Response::new(ipb::SubmitForReviewResponse {
            task: Some(task_pb(stored)),
        }))
    }

    async fn withdraw_review(
        &self,
        request: Request<ipb::WithdrawReviewRequest>,
    ) -> Result<Response<ipb::WithdrawReviewResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let request_id = parse_at("request_id", RequestId::parse(&req.request_id))?;
        let reason = if req.reason.trim().is_empty() {
            "withdrawn: the request was cancelled".to_owned()
        } else {
            parse_at("reason", Text::parse(&req.reason, "reason"))?.to_string()
        };
        let t = self
            .store
            .withdraw(request_id.as_str(), &reason, now_micros())
            .await
            .map_err(db("withdrawing a task"))?;
        Ok(Response::new(ipb::WithdrawReviewResponse { task: t.map(task_pb) }))
    }

    type WatchDecisionsStream = DecisionStream;

    async fn watch_decisions(
        &self,
        request: Request<ipb::WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let mut cursor =
            i64::try_from(request.into_inner().after_cursor).map_err(|_| invalid("after_cursor", "out of range"))?;
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let mut decided = self.decided.subscribe();
        let mut draining = self.draining.clone();
        let feed_poll = self.feed_poll;
        tokio::spawn(async move {
            loop {
                // Mark the current value seen before reading, so no decision is missed.
                decided.borrow_and_update();
                let batch = match store.decisions_after(cursor, 100).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(error::database("reading decisions", &e))).await;
                        return;
                    }
                };
                let empty = batch.is_empty();
                for (event, t) in batch {
                    cursor = event.cursor;
                    let item = ipb::WatchDecisionsResponse {
                        cursor: u64::try_from(event.cursor).unwrap_or_default(),
                        task: Some(task_pb(t)),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                if empty {
                    // New decisions on this replica wake us at once; the poll covers
                    // decisions made on other replicas.
                    tokio::select! {
                        _ = decided.changed() => {}
                        _ = tokio::time::sleep(feed_poll) => {}
                        _ = tx.closed() => return,
                        _ = draining.started() => {
                            // Never wait on a subscriber that does not read: the drain must end.
                            let _ = tx.try_send(Err(Draining::status()));
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl ApprovalApi {
    /// Validates a limit's scope and target: empty for the default, a cluster name, or an
    /// existing business unit.
    async fn limit_key(&self, scope: pb::LimitScope, target: &str, field: &str) -> Result<(Scope, String), Status> {
        match scope {
            pb::LimitScope::Default if target.is_empty() => Ok((Scope::Default, String::new())),
            pb::LimitScope::Default => Err(invalid(field, "must be empty for the default limit")),
            pb::LimitScope::Cluster => Ok((Scope::Cluster, parse_at(field, ClusterName::parse(target))?.to_string())),
            pb::LimitScope::BusinessUnit => {
                let id = parse_at(field, BusinessUnitId::parse(target))?;
                if self.authz.business_unit(id.as_str()).await?.is_none() {
                    return Err(not_found("business unit", id.as_str()));
                }
                Ok((Scope::BusinessUnit, id.to_string()))
            }
            pb::LimitScope::Unspecified => Err(invalid("scope", "is required")),
        }
    }
}
