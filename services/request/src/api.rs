//! `sspm.v1.PortRequestService`: what partner and customer administrators call.

use std::pin::Pin;
use std::sync::Arc;

mod pools;

use sspm_platform::error::{self, db, not_found};
use sspm_platform::rpc::{
    enum_filter, invalid, next_page_token, now_micros, page_size, page_time_id, parse_at, time_id_key,
};
use sspm_platform::{Draining, caller};
use sspm_proto::v1 as pb;
use sspm_proto::v1::port_request_service_server::PortRequestService;
use sspm_rules::{
    BusinessUnitId, CreateFields, Price, PrincipalId, RequestId, RequestState, Text, parse_create, validate_provisioned,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::admit::{Create, Created, DryRun};
use crate::capacity::Membership;
use crate::convert::{limits_pb, outcome, request_pb, state_of_pb};
use crate::entities::request;
use crate::events;
use crate::feed::Feed;
use crate::model::{limits_of, state_of};
use crate::store::Provisioned;
use crate::watch::Watchers;
use crate::workflow::{Command, Workflow, facts_of};

/// The handlers.
#[derive(Debug, Clone)]
pub struct RequestApi {
    wf: Arc<Workflow>,
    price: Price,
    draining: Draining,
    watchers: Arc<Watchers>,
    feed: Arc<Feed>,
}

impl RequestApi {
    /// Handlers driving requests with `wf`, pricing ports with `price`; watch streams are
    /// counted and bounded by `watchers` and end when `draining` starts; `WatchEvents`
    /// follows `feed`.
    pub fn new(wf: Arc<Workflow>, price: Price, draining: Draining, watchers: Arc<Watchers>, feed: Arc<Feed>) -> Self {
        Self {
            wf,
            price,
            draining,
            watchers,
            feed,
        }
    }

    async fn load(&self, id: &str) -> Result<request::Model, Status> {
        let id = parse_at("request_id", RequestId::parse(id))?;
        self.wf
            .store()
            .request(id.as_str())
            .await
            .map_err(db("loading a request"))?
            .ok_or_else(|| not_found("port change request", id.as_str()))
    }

    /// Loads a request the caller may act on with `action`; one it may not see is NOT_FOUND.
    async fn load_for(&self, caller: &PrincipalId, id: &str, action: pb::Action) -> Result<request::Model, Status> {
        sspm_platform::rpc::annotate(id, "");
        let r = self.load(id).await?;
        sspm_platform::rpc::annotate("", &r.business_unit_id);
        match self.wf.authz().require(caller, action, &r.business_unit_id).await {
            Ok(_) => Ok(r),
            Err(s) if s.code() == Code::NotFound => Err(not_found("port change request", id)),
            Err(s) => Err(s),
        }
    }

    /// A stored request with its history, as the API shows it.
    async fn show(&self, r: request::Model) -> Result<pb::PortChangeRequest, Status> {
        let history = self
            .wf
            .store()
            .history(&r.request_id)
            .await
            .map_err(db("loading history"))?;
        Ok(request_pb(r, history))
    }

    /// The answer to a create for request `r` as stored (a replay, or one whose first steps
    /// the worker goes on with).
    async fn replayed(&self, r: request::Model) -> Result<pb::CreatePortChangeRequestResponse, Status> {
        let outcome = outcome(&r);
        Ok(pb::CreatePortChangeRequestResponse {
            outcome: outcome.into(),
            request: Some(self.show(r).await?),
            validate_only: false,
        })
    }

    /// A request as it is now.
    async fn current(&self, id: &str) -> Result<pb::PortChangeRequest, Status> {
        let r = self.load(id).await?;
        self.show(r).await
    }
}

/// Entries of one ImportProvisionedLimits call at most.
const MAX_IMPORT_ENTRIES: usize = 1_000;
/// Business units named in one event filter at most.
const MAX_FEED_FILTER: usize = 100;
/// Business units whose events one caller may read at most (a partner and its customers);
/// a principal that needs more is given Events › Read all.
const MAX_FEED_UNITS: usize = 10_000;
/// Events per ListEvents page when the caller does not say, and at most.
const EVENTS_PAGE: (u64, u64) = (100, 1_000);
/// Events a WatchEvents stream reads per query.
const WATCH_BATCH: u64 = 256;

/// The types of an event filter, each one of [`events::TYPES`].
fn event_types(types: &[String]) -> Result<Vec<String>, Status> {
    let mut out = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        if !events::TYPES.contains(&t.as_str()) {
            return Err(invalid(
                &format!("types[{i}]"),
                format!("unknown event type {t:?}; the types are {}", events::TYPES.join(", ")),
            ));
        }
        out.push(t.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A feed cursor (`None` when empty).
fn feed_cursor(raw: &str) -> Result<Option<i64>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<i64>().ok().filter(|c| *c >= 0).map(Some).ok_or_else(|| {
        invalid(
            "after_cursor",
            "not a cursor: pass an event's `cursor`, a response's `next_cursor`, or \"0\" for the oldest kept",
        )
    })
}

impl RequestApi {
    /// PERMISSION_DENIED unless the caller is an account representative (a person: a
    /// service token never passes a staff check).
    async fn require_account_representative(&self, caller: &sspm_platform::Principal) -> Result<(), Status> {
        if caller.is_service() {
            return Err(error::permission_denied(
                "provisioned limits are set by account representatives, not services",
                &[],
            ));
        }
        self.wf
            .authz()
            .require(&caller.id, pb::Action::Administer, "")
            .await
            .map(|_| ())
    }

    /// The business units whose events `caller` may read among `requested` (empty: all it
    /// may see), checked as ListPortChangeRequests checks them; `None`: every business unit
    /// (Events › Read all).
    async fn event_scope(&self, caller: &PrincipalId, requested: &[String]) -> Result<Option<Vec<String>>, Status> {
        if requested.len() > MAX_FEED_FILTER {
            return Err(invalid(
                "business_unit_ids",
                format!("at most {MAX_FEED_FILTER} business units; leave it empty for all you may see"),
            ));
        }
        let mut bus = Vec::with_capacity(requested.len());
        for (i, raw) in requested.iter().enumerate() {
            bus.push(parse_at(&format!("business_unit_ids[{i}]"), BusinessUnitId::parse(raw))?.to_string());
        }
        bus.sort();
        bus.dedup();
        let authz = self.wf.authz();
        match authz.require(caller, pb::Action::ReadAllEvents, "").await {
            Ok(_) => return Ok((!bus.is_empty()).then_some(bus)),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => {}
            Err(s) => return Err(s),
        }
        if bus.is_empty() {
            let visible = authz.visible(caller, pb::Action::ViewPorts, MAX_FEED_UNITS).await?;
            return Ok(Some(visible.into_iter().map(|bu| bu.business_unit_id).collect()));
        }
        for bu in &bus {
            authz.require(caller, pb::Action::ViewPorts, bu).await?;
        }
        Ok(Some(bus))
    }

    /// Sets one business unit's provisioned limits on behalf of `actor`.
    async fn provision(
        &self,
        actor: &PrincipalId,
        business_unit_id: &str,
        limits: Option<&pb::PortLimits>,
        reason: &str,
        field: &str,
    ) -> Result<pb::SetProvisionedLimitsResponse, Status> {
        let bu = parse_at(
            &format!("{field}business_unit_id"),
            BusinessUnitId::parse(business_unit_id),
        )?;
        let limits = limits.ok_or_else(|| invalid(&format!("{field}limits"), "is required"))?;
        let unit = self
            .wf
            .authz()
            .business_unit(bu.as_str())
            .await?
            .ok_or_else(|| not_found("business unit", bu.as_str()))?;
        let (facts, membership) = (facts_of(&unit), Membership::of(&unit));
        let prefix = format!("{field}limits");
        let done = self
            .wf
            .store()
            .provision(
                bu.as_str(),
                &membership,
                actor.as_str(),
                reason,
                now_micros(),
                |current| {
                    validate_provisioned(
                        current,
                        facts,
                        limits.concurrent.into(),
                        limits.outbound.into(),
                        limits.agentless.into(),
                        &prefix,
                    )
                },
            )
            .await
            .map_err(db("setting provisioned limits"))?;
        let (before, after, changed) = match done {
            Provisioned::Set { before, after } => (before, after, true),
            Provisioned::Unchanged(now) => (now, now, false),
            Provisioned::OpenRequest(open) => return Err(r5(bu.as_str(), &open)),
            Provisioned::Invalid(v) => return Err(error::violations(&v)),
        };
        if changed {
            tracing::info!(business_unit = %bu, by = %actor, %before, %after, reason, "provisioned limits set");
            // Its `port_limits.changed` event is in the feed now.
            self.feed.written();
        }
        Ok(pb::SetProvisionedLimitsResponse {
            business_unit_id: bu.to_string(),
            limits_before: Some(limits_pb(before)),
            limits: Some(limits_pb(after)),
            changed,
        })
    }
}

fn r5(bu: &str, open: &str) -> Status {
    error::violation(crate::admit::r5(bu, open))
}

fn optional_text(field: &str, raw: &str, what: &str) -> Result<Option<String>, Status> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        Ok(Some(parse_at(field, Text::parse(raw, what))?.to_string()))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPortChangeRequestResponse, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PortRequestService for RequestApi {
    async fn get_port_limits(
        &self,
        request: Request<pb::GetPortLimitsRequest>,
    ) -> Result<Response<pb::GetPortLimitsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        sspm_platform::rpc::annotate("", &req.business_unit_id);
        let bu = parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?;
        let facts = self
            .wf
            .authz()
            .require(&caller.id, pb::Action::ViewPorts, bu.as_str())
            .await?
            .unwrap_or_default();
        let (limits, open) = self
            .wf
            .store()
            .limits_and_open_request(bu.as_str())
            .await
            .map_err(db("loading limits"))?;
        Ok(Response::new(pb::GetPortLimitsResponse {
            business_unit_id: bu.to_string(),
            limits: Some(limits_pb(limits_of(limits.as_ref()))),
            personal_connection_enabled: facts.personal_connection_enabled,
            open_request_id: open.unwrap_or_default(),
            update_time: limits.map(|l| sspm_platform::rpc::timestamp(l.update_time)),
        }))
    }

    async fn create_port_change_request(
        &self,
        request: Request<pb::CreatePortChangeRequestRequest>,
    ) -> Result<Response<pb::CreatePortChangeRequestResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        sspm_platform::rpc::annotate(&req.request_id, &req.business_unit_id);
        let t = req.targets.unwrap_or_default();
        let command = parse_create(&CreateFields {
            request_id: &req.request_id,
            business_unit_id: &req.business_unit_id,
            concurrent: t.concurrent,
            outbound: t.outbound,
            agentless: t.agentless,
            justification: &req.justification,
            revert_at: req.revert_at.as_ref().map(|ts| (ts.seconds, ts.nanos)),
        })
        .map_err(error::violation)?;
        let unit = self
            .wf
            .authz()
            .require(
                &caller.id,
                pb::Action::RequestPortChange,
                command.business_unit_id.as_str(),
            )
            .await?
            .ok_or_else(|| Status::internal("authorization answered without the business unit"))?;
        let create = Create {
            command: &command,
            requester: &caller.id,
            unit: &unit,
            price: &self.price,
        };
        if req.validate_only {
            return Ok(Response::new(match self.wf.dry_run(create).await? {
                DryRun::Replay(existing) => self.replayed(existing).await?,
                DryRun::Would { model, outcome } => pb::CreatePortChangeRequestResponse {
                    request: Some(request_pb(model, Vec::new())),
                    outcome: outcome.into(),
                    validate_only: true,
                },
            }));
        }
        Ok(Response::new(match self.wf.create(create).await? {
            Created::Replay(existing) => self.replayed(existing).await?,
            // The answer is the request as its first steps left it, durable, without
            // reading it back; the calls they queued (closing the case) go on in the
            // background.
            Created::Written {
                model,
                entry,
                started: Some(started),
            } => {
                sspm_platform::rpc::annotate_state(RequestState::from(started.request.state).as_str());
                let outcome = outcome(&started.request);
                let created = events::HistoryEntry::of(&model.request_id, model.create_time, &entry);
                pb::CreatePortChangeRequestResponse {
                    request: Some(request_pb(started.request, vec![created, started.history])),
                    outcome: outcome.into(),
                    validate_only: false,
                }
            }
            // The first steps did not finish here (the worker goes on): the request as stored.
            Created::Written { model, .. } => {
                let r = self.load(&model.request_id).await?;
                sspm_platform::rpc::annotate_state(state_of(&r).as_str());
                self.replayed(r).await?
            }
        }))
    }

    async fn get_port_change_request(
        &self,
        request: Request<pb::GetPortChangeRequestRequest>,
    ) -> Result<Response<pb::GetPortChangeRequestResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let r = self
            .load_for(&caller.id, &req.request_id, pb::Action::ViewPorts)
            .await?;
        Ok(Response::new(pb::GetPortChangeRequestResponse {
            request: Some(self.show(r).await?),
        }))
    }

    async fn list_port_change_requests(
        &self,
        request: Request<pb::ListPortChangeRequestsRequest>,
    ) -> Result<Response<pb::ListPortChangeRequestsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let after = page_time_id(&req.page_token)?;
        let mut states = Vec::new();
        for (i, s) in enum_filter::<pb::PortChangeRequestState>("states", &req.states)?
            .into_iter()
            .enumerate()
        {
            let state = state_of_pb(s).ok_or_else(|| invalid(&format!("states[{i}]"), "unknown state"))?;
            states.push(request::State::from(state));
        }
        let authz = self.wf.authz();
        let bus: Vec<String> = if req.business_unit_id.is_empty() {
            // Every business unit the caller may see and holds View on, in one call.
            authz
                .visible(&caller.id, pb::Action::ViewPorts, 500)
                .await?
                .into_iter()
                .map(|bu| bu.business_unit_id)
                .collect()
        } else {
            let bu = parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?;
            authz.require(&caller.id, pb::Action::ViewPorts, bu.as_str()).await?;
            vec![bu.to_string()]
        };
        if bus.is_empty() {
            return Ok(Response::new(pb::ListPortChangeRequestsResponse::default()));
        }
        let store = self.wf.store();
        let mut rows = store
            .list(Some(&bus), &states, after, size + 1)
            .await
            .map_err(db("listing requests"))?;
        let next = next_page_token(&mut rows, size, |r| time_id_key(r.create_time, &r.request_id));
        let ids: Vec<String> = rows.iter().map(|r| r.request_id.clone()).collect();
        let mut histories = store.histories(&ids).await.map_err(db("loading history"))?;
        let requests = rows
            .into_iter()
            .map(|r| {
                let history = histories.remove(&r.request_id).unwrap_or_default();
                request_pb(r, history)
            })
            .collect();
        Ok(Response::new(pb::ListPortChangeRequestsResponse {
            requests,
            next_page_token: next,
        }))
    }

    async fn provide_information(
        &self,
        request: Request<pb::ProvideInformationRequest>,
    ) -> Result<Response<pb::ProvideInformationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let r = self
            .load_for(&caller.id, &req.request_id, pb::Action::RequestPortChange)
            .await?;
        let justification = parse_at("justification", Text::parse(&req.justification, "justification"))?;
        let command = Command::ProvideInformation {
            by: caller.id.to_string(),
            justification: justification.to_string(),
        };
        let r = self.wf.command(&r.request_id, command).await?;
        Ok(Response::new(pb::ProvideInformationResponse {
            request: Some(self.show(r).await?),
        }))
    }

    async fn cancel_port_change_request(
        &self,
        request: Request<pb::CancelPortChangeRequestRequest>,
    ) -> Result<Response<pb::CancelPortChangeRequestResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let r = self
            .load_for(&caller.id, &req.request_id, pb::Action::RequestPortChange)
            .await?;
        let command = Command::Cancel {
            by: caller.id.to_string(),
            reason: optional_text("reason", &req.reason, "reason")?,
        };
        let r = self.wf.command(&r.request_id, command).await?;
        Ok(Response::new(pb::CancelPortChangeRequestResponse {
            request: Some(self.show(r).await?),
        }))
    }

    async fn set_provisioned_limits(
        &self,
        request: Request<pb::SetProvisionedLimitsRequest>,
    ) -> Result<Response<pb::SetProvisionedLimitsResponse>, Status> {
        let caller = caller(&request)?;
        self.require_account_representative(&caller).await?;
        let req = request.into_inner();
        sspm_platform::rpc::annotate("", &req.business_unit_id);
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let answer = self
            .provision(
                &caller.id,
                &req.business_unit_id,
                req.limits.as_ref(),
                reason.as_str(),
                "",
            )
            .await?;
        Ok(Response::new(answer))
    }

    async fn get_partner_pool(
        &self,
        request: Request<pb::GetPartnerPoolRequest>,
    ) -> Result<Response<pb::GetPartnerPoolResponse>, Status> {
        let caller = caller(&request)?;
        sspm_platform::rpc::annotate("", &request.get_ref().partner_id);
        Ok(Response::new(
            self.get_partner_pool_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn set_partner_pool(
        &self,
        request: Request<pb::SetPartnerPoolRequest>,
    ) -> Result<Response<pb::SetPartnerPoolResponse>, Status> {
        let caller = caller(&request)?;
        sspm_platform::rpc::annotate("", &request.get_ref().partner_id);
        Ok(Response::new(
            self.set_partner_pool_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn clear_partner_pool(
        &self,
        request: Request<pb::ClearPartnerPoolRequest>,
    ) -> Result<Response<pb::ClearPartnerPoolResponse>, Status> {
        let caller = caller(&request)?;
        sspm_platform::rpc::annotate("", &request.get_ref().partner_id);
        Ok(Response::new(
            self.clear_partner_pool_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_cluster_capacity(
        &self,
        request: Request<pb::GetClusterCapacityRequest>,
    ) -> Result<Response<pb::GetClusterCapacityResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.get_cluster_capacity_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn list_cluster_capacities(
        &self,
        request: Request<pb::ListClusterCapacitiesRequest>,
    ) -> Result<Response<pb::ListClusterCapacitiesResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(self.list_cluster_capacities_impl(&caller).await?))
    }

    async fn set_cluster_capacity(
        &self,
        request: Request<pb::SetClusterCapacityRequest>,
    ) -> Result<Response<pb::SetClusterCapacityResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.set_cluster_capacity_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn clear_cluster_capacity(
        &self,
        request: Request<pb::ClearClusterCapacityRequest>,
    ) -> Result<Response<pb::ClearClusterCapacityResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.clear_cluster_capacity_impl(&caller, request.into_inner()).await?,
        ))
    }

    async fn import_provisioned_limits(
        &self,
        request: Request<pb::ImportProvisionedLimitsRequest>,
    ) -> Result<Response<pb::ImportProvisionedLimitsResponse>, Status> {
        let caller = caller(&request)?;
        self.require_account_representative(&caller).await?;
        let req = request.into_inner();
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        if req.entries.is_empty() || req.entries.len() > MAX_IMPORT_ENTRIES {
            return Err(invalid(
                "entries",
                format!("must hold 1 to {MAX_IMPORT_ENTRIES} business units (split a larger import)"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in req.entries.iter().enumerate() {
            if !seen.insert(e.business_unit_id.as_str()) {
                return Err(invalid(
                    &format!("entries[{i}].business_unit_id"),
                    "appears twice: each business unit once per import",
                ));
            }
        }
        let mut results = Vec::with_capacity(req.entries.len());
        for (i, e) in req.entries.iter().enumerate() {
            let field = format!("entries[{i}].");
            let result = match self
                .provision(
                    &caller.id,
                    &e.business_unit_id,
                    e.limits.as_ref(),
                    reason.as_str(),
                    &field,
                )
                .await
            {
                Ok(done) => pb::ProvisionedLimitsResult {
                    business_unit_id: e.business_unit_id.clone(),
                    outcome: if done.changed {
                        pb::ProvisionedLimitsOutcome::Set
                    } else {
                        pb::ProvisionedLimitsOutcome::Unchanged
                    }
                    .into(),
                    ..Default::default()
                },
                // The store or a dependency failing is the call's failure, not the entry's:
                // the entries before it are set, and repeating the import is safe.
                Err(s) if matches!(s.code(), Code::Internal | Code::Unavailable | Code::DeadlineExceeded) => {
                    return Err(s);
                }
                Err(s) => pb::ProvisionedLimitsResult {
                    business_unit_id: e.business_unit_id.clone(),
                    outcome: pb::ProvisionedLimitsOutcome::Refused.into(),
                    code: s.code().into(),
                    reason: error::reason_of(&s),
                    message: s.message().to_owned(),
                },
            };
            results.push(result);
        }
        Ok(Response::new(pb::ImportProvisionedLimitsResponse { results }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let size = match u64::try_from(req.page_size) {
            Ok(0) => EVENTS_PAGE.0,
            Ok(n) if n <= EVENTS_PAGE.1 => n,
            _ => return Err(invalid("page_size", "must be between 0 and 1000")),
        };
        let types = event_types(&req.types)?;
        let after = feed_cursor(&req.after_cursor)?.unwrap_or(0);
        let scope = self.event_scope(&caller.id, &req.business_unit_ids).await?;
        // On PostgreSQL, what committed before this call is placed in the feed first (unless
        // another replica is placing it right now).
        self.feed
            .advance(self.wf.store())
            .await
            .map_err(db("placing events in the feed"))?;
        let (events, next) = self.read_events(after, scope.as_deref(), &types, size).await?;
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_cursor: next.to_string(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let types = event_types(&req.types)?;
        let start = feed_cursor(&req.after_cursor)?;
        let mut scope = self.event_scope(&caller.id, &req.business_unit_ids).await?;
        let cursor = match start {
            Some(c) => c,
            None => events::head(self.wf.store().reader())
                .await
                .map_err(db("reading events"))?,
        };
        // Counted (and bounded) with the other watch streams until it ends; see watch.rs.
        let slot = self.watchers.open_feed(&caller.id)?;
        // A cursor from before the retention is refused before the stream starts.
        let (mut batch, mut next) = self.read_events(cursor, scope.as_deref(), &types, WATCH_BATCH).await?;
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        let mut head = self.feed.subscribe();
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut asked = std::time::Instant::now();
            loop {
                let full = batch.len() as u64 == WATCH_BATCH;
                for event in batch {
                    if tx
                        .send(Ok(pb::WatchEventsResponse { event: Some(event) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let cursor = next;
                // Wait until the feed goes past the cursor (unless there is more already).
                while !full && *head.borrow_and_update() <= cursor {
                    tokio::select! {
                        moved = head.changed() => if moved.is_err() {
                            let _ = tx.try_send(Err(Draining::status()));
                            return;
                        },
                        () = tx.closed() => return,
                        _ = draining.started() => {
                            // Never wait on a watcher that does not read: the drain must end.
                            let _ = tx.try_send(Err(Draining::status()));
                            return;
                        }
                    }
                }
                if asked.elapsed() >= SCOPE_REFRESH {
                    asked = std::time::Instant::now();
                    match api.event_scope(&caller.id, &req.business_unit_ids).await {
                        Ok(s) => scope = s,
                        Err(refused) => {
                            let _ = tx.send(Err(refused)).await;
                            return;
                        }
                    }
                }
                match api.read_events(cursor, scope.as_deref(), &types, WATCH_BATCH).await {
                    Ok((b, n)) => (batch, next) = (b, n),
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchPortChangeRequestStream = WatchStream;

    async fn watch_port_change_request(
        &self,
        request: Request<pb::WatchPortChangeRequestRequest>,
    ) -> Result<Response<Self::WatchPortChangeRequestStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let r = self
            .load_for(&caller.id, &req.request_id, pb::Action::ViewPorts)
            .await?;
        let id = r.request_id;
        // Counted (and bounded) until the stream ends; see watch.rs.
        let slot = self.watchers.open(&caller.id, &id)?;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        let mut changes = self.wf.subscribe();
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut last: Option<pb::PortChangeRequest> = None;
            loop {
                match api.current(&id).await {
                    Ok(now) => {
                        if last.as_ref() != Some(&now) {
                            // The caller may have lost the right to see it since the last
                            // update: ask again before each (NOT_FOUND or PERMISSION_DENIED
                            // ends the stream, and nothing more is sent).
                            if last.is_some()
                                && let Err(refused) = api
                                    .wf
                                    .authz()
                                    .require(&caller.id, pb::Action::ViewPorts, &now.business_unit_id)
                                    .await
                            {
                                let _ = tx.send(Err(refused)).await;
                                return;
                            }
                            let done = finished(&now);
                            if tx
                                .send(Ok(pb::WatchPortChangeRequestResponse {
                                    request: Some(now.clone()),
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            if done {
                                return;
                            }
                            last = Some(now);
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
                // Woken by a change of this request: made here (the workflow's broadcast) or
                // by another replica (the process's one poller, watch.rs). No poll per stream.
                loop {
                    tokio::select! {
                        changed = changes.recv() => match changed {
                            Ok(changed) if changed != id => continue,
                            // Ours, or some were missed (lagged): read it again.
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => {
                                let _ = tx.try_send(Err(Draining::status()));
                                return;
                            }
                        },
                        _ = tx.closed() => return,
                        _ = draining.started() => {
                            // Never wait on a watcher that does not read: the drain must end.
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

/// How long a `WatchEvents` stream uses the business units it was allowed before asking
/// again (a right revoked ends the stream; a customer added joins it).
const SCOPE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl RequestApi {
    /// Events after `after` in `scope` (see [`events::feed`]), and where the next read
    /// starts: after the last of them or, when they are the last, after the head of the
    /// feed as it was before the read (nothing up to it matched). OUT_OF_RANGE when events
    /// after `after` were pruned.
    async fn read_events(
        &self,
        after: i64,
        scope: Option<&[String]>,
        types: &[String],
        limit: u64,
    ) -> Result<(Vec<pb::Event>, i64), Status> {
        let head = self.feed.head();
        let reader = self.wf.store().reader();
        let rows = if scope.is_some_and(<[String]>::is_empty) {
            Vec::new()
        } else {
            events::feed(reader, after, scope, types, limit)
                .await
                .map_err(db("reading events"))?
        };
        if after > 0 {
            let pruned = events::pruned_through(reader).await.map_err(db("reading events"))?;
            if after < pruned {
                let oldest = events::oldest(reader).await.map_err(db("reading events"))?;
                return Err(error::cursor_expired(after, oldest));
            }
        }
        let last = rows.last().and_then(|r| r.position).unwrap_or(after);
        let next = if (rows.len() as u64) < limit {
            last.max(head)
        } else {
            last
        };
        Ok((rows.into_iter().map(events::event_pb).collect(), next))
    }
}

/// A request is finished for watchers once terminal and, for a temporary change applied,
/// reverted.
fn finished(r: &pb::PortChangeRequest) -> bool {
    let terminal = !matches!(
        r.state(),
        pb::PortChangeRequestState::New
            | pb::PortChangeRequestState::PendingInformation
            | pb::PortChangeRequestState::UnderReview
    );
    let revert_pending = r.state() == pb::PortChangeRequestState::Approved
        && r.revert.as_ref().is_some_and(|v| v.reverted_time.is_none());
    terminal && !revert_pending
}
