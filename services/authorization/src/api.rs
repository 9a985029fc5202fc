//! `sspm.v1.AuthorizationService`: the check, visibility, and the account representative's
//! administration of business units, principals and grants.

use std::pin::Pin;
use std::time::Duration;

use sea_orm::DbErr;
use sspm_platform::Draining;
use sspm_platform::auth::{Principal as Caller, PrincipalKind as CallerKind};
use sspm_platform::caller;
use sspm_platform::db::{DbErrorKind, classify};
use sspm_platform::error::{self, db, not_found, permission_denied};
use sspm_platform::rpc::{
    self, invalid, next_page_token, now_micros, page_key, page_number, page_size, parse_at, timestamp,
};
use sspm_proto::internal::v1 as ipb;
use sspm_proto::internal::v1::authorization_service_server::AuthorizationService as InternalAuthorizationService;
use sspm_proto::v1 as pb;
use sspm_proto::v1::authorization_service_server::AuthorizationService;
use sspm_rules::{BusinessUnitId, ClusterName, PrincipalId, Text};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::entities::{business_unit, grant, principal};
use crate::model::{Perm, Subject, required};
use crate::store::Store;

/// The handlers.
#[derive(Debug, Clone)]
pub struct AuthorizationApi {
    store: Store,
    /// Changes to business units, principals and grants, made on this replica or (seen
    /// through the database's change count) on another; subscribers of
    /// WatchAuthorizationChanges drop their cached Check answers at each.
    changes: watch::Sender<u64>,
    draining: Draining,
}

impl AuthorizationApi {
    /// Handlers on `store`; change streams end when `draining` starts. Other replicas'
    /// changes are looked for every `poll` (one query), from the count read here, before
    /// the service answers anyone: none made after it starts goes unnoticed.
    pub async fn start(store: Store, draining: Draining, poll: Duration) -> Result<Self, DbErr> {
        let seen = store.generation().await?;
        let api = Self {
            store,
            changes: watch::Sender::new(0),
            draining,
        };
        tokio::spawn(api.clone().follow_other_replicas(poll, seen));
        Ok(api)
    }

    /// Reads the database's count of changes every `poll` and tells the subscribers when it
    /// moved: a change another replica made (this replica's own are told at once, and once
    /// more here, which costs a subscriber one more emptied cache).
    async fn follow_other_replicas(self, poll: Duration, mut seen: i64) {
        let mut draining = self.draining.clone();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = draining.started() => return,
            }
            match self.store.generation().await {
                Ok(now) => {
                    if now != seen {
                        self.changed();
                    }
                    seen = now;
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the authorization change count: other replicas' changes reach the services' caches only through their TTL until it is back");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Tells the subscribers that authorization facts changed (after the change committed).
    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    async fn subject(&self, id: &str) -> Result<Option<Subject>, Status> {
        Ok(self
            .store
            .principal_with_grants(id)
            .await
            .map_err(db("loading a principal"))?
            .map(|(principal, grants)| Subject { principal, grants }))
    }

    /// The caller as a subject; `None` for a service or an unregistered principal.
    async fn caller_subject(&self, caller: &Caller) -> Result<Option<Subject>, Status> {
        if caller.kind == CallerKind::Service {
            return Ok(None);
        }
        self.subject(caller.id.as_str()).await
    }

    /// Who may read the audit trail: account representatives.
    pub fn audit_readers(&self) -> sspm_platform::audit::StaffCheck {
        let api = self.clone();
        std::sync::Arc::new(move |caller: Caller| {
            let api = api.clone();
            Box::pin(async move { api.require_admin(&caller).await })
        })
    }

    /// PERMISSION_DENIED unless the caller is an account representative.
    async fn require_admin(&self, caller: &Caller) -> Result<(), Status> {
        let is_rep = self
            .caller_subject(caller)
            .await?
            .is_some_and(|s| s.has_global(Perm::AccountRepresentative));
        if is_rep {
            Ok(())
        } else {
            Err(permission_denied(
                "only an account representative may administer business units, principals and permissions",
                &["ACCOUNT_REPRESENTATIVE"],
            ))
        }
    }

    /// The principal a request is about: `raw`, or the caller when empty. Asking about
    /// someone else needs a service or an account representative.
    async fn target_principal(&self, caller: &Caller, raw: &str) -> Result<String, Status> {
        if raw.is_empty() || raw == caller.id.as_str() {
            return Ok(caller.id.to_string());
        }
        let id = parse_at("principal_id", PrincipalId::parse(raw))?;
        if caller.kind != CallerKind::Service {
            self.require_admin(caller).await.map_err(|_| {
                permission_denied(
                    "only SSPM services and account representatives may ask about another principal",
                    &["ACCOUNT_REPRESENTATIVE"],
                )
            })?;
        }
        Ok(id.to_string())
    }

    async fn existing_business_unit(&self, field: &str, id: &str) -> Result<business_unit::Model, Status> {
        let id = parse_at(field, BusinessUnitId::parse(id))?;
        self.store
            .business_unit(id.as_str())
            .await
            .map_err(db("loading a business unit"))?
            .ok_or_else(|| not_found("business unit", id.as_str()))
    }

    /// A principal's home business unit: none when empty, else one that exists.
    async fn home_business_unit(&self, field: &str, raw: &str) -> Result<Option<String>, Status> {
        if raw.is_empty() {
            return Ok(None);
        }
        let bu = self
            .existing_business_unit(field, raw)
            .await
            .map_err(|_| invalid(field, "no such business unit"))?;
        Ok(Some(bu.business_unit_id))
    }

    /// Checks a partner assignment: the partner exists, is not the business unit itself and
    /// has no partner of its own (one level of management).
    async fn check_partner(&self, field: &str, bu_id: &str, partner: &str) -> Result<(), Status> {
        if partner == bu_id {
            return Err(invalid(field, "a business unit cannot be its own partner"));
        }
        let p = parse_at(field, BusinessUnitId::parse(partner))?;
        match self
            .store
            .business_unit(p.as_str())
            .await
            .map_err(db("loading a partner"))?
        {
            None => Err(invalid(field, format!("no business unit {partner:?}"))),
            Some(p) if p.partner_id.is_some() => Err(invalid(
                field,
                format!("{partner:?} is itself a customer of a partner; partners cannot be nested"),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// An insert's result: a unique violation means `what` exists (ALREADY_EXISTS).
fn created(result: Result<(), DbErr>, context: &'static str, what: &str) -> Result<(), Status> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
            Err(Status::already_exists(format!("{what} already exists")))
        }
        Err(e) => Err(error::database(context, &e)),
    }
}

fn to_pb_bu(m: business_unit::Model) -> pb::BusinessUnit {
    pb::BusinessUnit {
        business_unit_id: m.business_unit_id,
        display_name: m.display_name,
        cluster: m.cluster,
        partner_id: m.partner_id.unwrap_or_default(),
        monitoring_gateway_enabled: m.monitoring_gateway_enabled,
        personal_connection_enabled: m.personal_connection_enabled,
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
    }
}

fn to_pb_principal(m: principal::Model) -> pb::Principal {
    let kind = pb::PrincipalKind::from(m.kind);
    pb::Principal {
        principal_id: m.principal_id,
        display_name: m.display_name,
        home_business_unit_id: m.home_business_unit_id.unwrap_or_default(),
        kind: kind.into(),
        create_time: Some(timestamp(m.create_time)),
    }
}

fn to_pb_grant(m: grant::Model) -> pb::PermissionGrant {
    let permission = pb::Permission::from(m.permission);
    pb::PermissionGrant {
        principal_id: m.principal_id,
        business_unit_id: m.business_unit_id,
        permission: permission.into(),
        granted_by: m.granted_by,
        grant_time: Some(timestamp(m.grant_time)),
    }
}

fn display_name(field: &str, raw: &str) -> Result<String, Status> {
    Ok(parse_at(field, Text::parse_max(raw, "display name", 255))?
        .as_str()
        .to_owned())
}

fn cluster(field: &str, raw: &str) -> Result<String, Status> {
    Ok(parse_at(field, ClusterName::parse(raw))?.as_str().to_owned())
}

fn deny(reason: pb::DenyReason, message: impl Into<String>) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: false,
        deny_reason: reason.into(),
        missing_permissions: Vec::new(),
        message: message.into(),
        business_unit: None,
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<ipb::WatchAuthorizationChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuthorizationService for AuthorizationApi {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let action: pb::Action = rpc::required_enum("action", req.action)?;
        let who = self.target_principal(&caller, &req.principal_id).await?;
        let (global, needs) = required(action);
        if global && !req.business_unit_id.is_empty() {
            return Err(invalid(
                "business_unit_id",
                "must be empty for a global action (daily limits, approvals, administration)",
            ));
        }
        if !global && req.business_unit_id.is_empty() {
            return Err(invalid("business_unit_id", "is required for this action"));
        }
        let Some(subject) = self.subject(&who).await? else {
            return Ok(Response::new(deny(
                pb::DenyReason::UnknownPrincipal,
                format!("principal {who} is not registered"),
            )));
        };
        if global {
            let missing: Vec<Perm> = needs.iter().copied().filter(|p| !subject.has_global(*p)).collect();
            return Ok(Response::new(if missing.is_empty() {
                pb::CheckResponse {
                    allowed: true,
                    message: "allowed".into(),
                    ..Default::default()
                }
            } else {
                pb::CheckResponse {
                    allowed: false,
                    deny_reason: pb::DenyReason::MissingPermission.into(),
                    message: format!("{who} lacks {}", names(&missing)),
                    missing_permissions: missing.into_iter().map(|p| pb::Permission::from(p).into()).collect(),
                    business_unit: None,
                }
            }));
        }
        let bu_id = parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?;
        let bu = self
            .store
            .business_unit(bu_id.as_str())
            .await
            .map_err(db("loading a business unit"))?
            .filter(|bu| subject.may_see(bu));
        let Some(bu) = bu else {
            // Unknown and invisible look the same: never leak another tenant's existence.
            return Ok(Response::new(deny(
                pb::DenyReason::NotFound,
                format!("business unit {bu_id} not found"),
            )));
        };
        if !bu.monitoring_gateway_enabled {
            return Ok(Response::new(pb::CheckResponse {
                business_unit: Some(to_pb_bu(bu)),
                ..deny(
                    pb::DenyReason::MonitoringGatewayDisabled,
                    "monitoring gateway is not enabled for this business unit (R6)",
                )
            }));
        }
        let missing: Vec<Perm> = needs.iter().copied().filter(|p| !subject.has_on(*p, &bu)).collect();
        let answer = if missing.is_empty() {
            pb::CheckResponse {
                allowed: true,
                message: "allowed".into(),
                business_unit: Some(to_pb_bu(bu)),
                ..Default::default()
            }
        } else {
            pb::CheckResponse {
                allowed: false,
                deny_reason: pb::DenyReason::MissingPermission.into(),
                message: format!("{who} lacks {} on business unit {bu_id}", names(&missing)),
                missing_permissions: missing.into_iter().map(|p| pb::Permission::from(p).into()).collect(),
                business_unit: Some(to_pb_bu(bu)),
            }
        };
        Ok(Response::new(answer))
    }

    async fn list_visible_business_units(
        &self,
        request: Request<pb::ListVisibleBusinessUnitsRequest>,
    ) -> Result<Response<pb::ListVisibleBusinessUnitsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let after = page_key(&req.page_token)?;
        if after.as_deref().is_some_and(|k| BusinessUnitId::parse(k).is_err()) {
            return Err(rpc::foreign_token());
        }
        let needs = match req.action {
            0 => None,
            raw => {
                let action: pb::Action = rpc::required_enum("action", raw)?;
                let (global, needs) = required(action);
                if global {
                    return Err(invalid(
                        "action",
                        "must be an action on a business unit (view or request port changes)",
                    ));
                }
                Some(needs)
            }
        };
        let who = self.target_principal(&caller, &req.principal_id).await?;
        let everything = caller.kind == CallerKind::Service && req.principal_id.is_empty();
        if everything && needs.is_some() {
            return Err(invalid("action", "needs a principal_id: whose permissions to apply"));
        }
        let subject = if everything { None } else { self.subject(&who).await? };
        let scope = match &subject {
            _ if everything => None,
            Some(s) => s.scope(),
            None => Some(Vec::new()),
        };
        if scope.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Response::new(pb::ListVisibleBusinessUnitsResponse::default()));
        }
        // With an action, the business units it is not allowed on are left out, page by
        // page until one is full (the callers' alternative was one Check per business unit).
        let allowed = |bu: &business_unit::Model| match (needs, &subject) {
            (None, _) => true,
            (Some(needs), Some(s)) => bu.monitoring_gateway_enabled && needs.iter().all(|p| s.has_on(*p, bu)),
            (Some(_), None) => false,
        };
        let mut rows = Vec::new();
        let mut cursor = after;
        loop {
            let batch = self
                .store
                .business_units(scope.as_deref(), cursor.as_deref(), size + 1)
                .await
                .map_err(db("listing business units"))?;
            let last_batch = batch.len() as u64 <= size;
            cursor = batch.last().map(|b| b.business_unit_id.clone());
            rows.extend(batch.into_iter().filter(|b| allowed(b)));
            if last_batch || rows.len() as u64 > size {
                break;
            }
        }
        let next = next_page_token(&mut rows, size, |b| b.business_unit_id.clone());
        Ok(Response::new(pb::ListVisibleBusinessUnitsResponse {
            business_units: rows.into_iter().map(to_pb_bu).collect(),
            next_page_token: next,
        }))
    }

    async fn create_business_unit(
        &self,
        request: Request<pb::CreateBusinessUnitRequest>,
    ) -> Result<Response<pb::CreateBusinessUnitResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let bu = request
            .into_inner()
            .business_unit
            .ok_or_else(|| invalid("business_unit", "is required"))?;
        let id = parse_at(
            "business_unit.business_unit_id",
            BusinessUnitId::parse(&bu.business_unit_id),
        )?;
        let now = now_micros();
        let partner = (!bu.partner_id.is_empty()).then_some(bu.partner_id.clone());
        if let Some(p) = &partner {
            self.check_partner("business_unit.partner_id", id.as_str(), p).await?;
        }
        let model = business_unit::Model {
            business_unit_id: id.to_string(),
            display_name: display_name("business_unit.display_name", &bu.display_name)?,
            cluster: cluster("business_unit.cluster", &bu.cluster)?,
            partner_id: partner,
            monitoring_gateway_enabled: bu.monitoring_gateway_enabled,
            personal_connection_enabled: bu.personal_connection_enabled,
            create_time: now,
            update_time: now,
        };
        created(
            self.store.insert_business_unit(model.clone()).await,
            "creating a business unit",
            &format!("business unit {id}"),
        )?;
        self.changed();
        tracing::info!(business_unit = %id, by = %caller.id, "business unit created");
        Ok(Response::new(pb::CreateBusinessUnitResponse {
            business_unit: Some(to_pb_bu(model)),
        }))
    }

    async fn update_business_unit(
        &self,
        request: Request<pb::UpdateBusinessUnitRequest>,
    ) -> Result<Response<pb::UpdateBusinessUnitResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let req = request.into_inner();
        let mut bu = self
            .existing_business_unit("business_unit_id", &req.business_unit_id)
            .await?;
        if let Some(name) = &req.display_name {
            bu.display_name = display_name("display_name", name)?;
        }
        if let Some(c) = &req.cluster {
            bu.cluster = cluster("cluster", c)?;
        }
        if let Some(p) = &req.partner_id {
            if p.is_empty() {
                bu.partner_id = None;
            } else {
                self.check_partner("partner_id", &bu.business_unit_id, p).await?;
                if self
                    .store
                    .has_customers(&bu.business_unit_id)
                    .await
                    .map_err(db("loading customers"))?
                {
                    return Err(invalid(
                        "partner_id",
                        "this business unit is a partner with customers; partners cannot be nested",
                    ));
                }
                bu.partner_id = Some(p.clone());
            }
        }
        if let Some(v) = req.monitoring_gateway_enabled {
            bu.monitoring_gateway_enabled = v;
        }
        if let Some(v) = req.personal_connection_enabled {
            bu.personal_connection_enabled = v;
        }
        bu.update_time = now_micros();
        self.store
            .update_business_unit(bu.clone())
            .await
            .map_err(db("updating a business unit"))?;
        self.changed();
        tracing::info!(business_unit = %bu.business_unit_id, by = %caller.id, "business unit updated");
        Ok(Response::new(pb::UpdateBusinessUnitResponse {
            business_unit: Some(to_pb_bu(bu)),
        }))
    }

    async fn get_business_unit(
        &self,
        request: Request<pb::GetBusinessUnitRequest>,
    ) -> Result<Response<pb::GetBusinessUnitResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let bu = self
            .existing_business_unit("business_unit_id", &req.business_unit_id)
            .await?;
        if caller.kind != CallerKind::Service {
            let visible = self.caller_subject(&caller).await?.is_some_and(|s| s.may_see(&bu));
            if !visible {
                return Err(not_found("business unit", &req.business_unit_id));
            }
        }
        Ok(Response::new(pb::GetBusinessUnitResponse {
            business_unit: Some(to_pb_bu(bu)),
        }))
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::CreatePrincipalResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let p = request
            .into_inner()
            .principal
            .ok_or_else(|| invalid("principal", "is required"))?;
        let id = parse_at("principal.principal_id", PrincipalId::parse(&p.principal_id))?;
        let kind = principal::Kind::try_from(rpc::required_enum::<pb::PrincipalKind>("principal.kind", p.kind)?)
            .map_err(|_| invalid("principal.kind", "is required"))?;
        let name = if p.display_name.is_empty() {
            id.to_string()
        } else {
            display_name("principal.display_name", &p.display_name)?
        };
        let home = self
            .home_business_unit("principal.home_business_unit_id", &p.home_business_unit_id)
            .await?;
        let model = principal::Model {
            principal_id: id.to_string(),
            display_name: name,
            home_business_unit_id: home,
            kind,
            create_time: now_micros(),
        };
        created(
            self.store.insert_principal(model.clone()).await,
            "creating a principal",
            &format!("principal {id}"),
        )?;
        self.changed();
        tracing::info!(principal = %id, by = %caller.id, "principal created");
        Ok(Response::new(pb::CreatePrincipalResponse {
            principal: Some(to_pb_principal(model)),
        }))
    }

    async fn update_principal(
        &self,
        request: Request<pb::UpdatePrincipalRequest>,
    ) -> Result<Response<pb::UpdatePrincipalResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let req = request.into_inner();
        let id = parse_at("principal_id", PrincipalId::parse(&req.principal_id))?;
        let mut p = self
            .store
            .principal(id.as_str())
            .await
            .map_err(db("loading a principal"))?
            .ok_or_else(|| not_found("principal", id.as_str()))?;
        if let Some(name) = &req.display_name {
            p.display_name = display_name("display_name", name)?;
        }
        if let Some(home) = &req.home_business_unit_id {
            p.home_business_unit_id = self.home_business_unit("home_business_unit_id", home).await?;
        }
        self.store
            .update_principal(&p, now_micros())
            .await
            .map_err(db("updating a principal"))?;
        self.changed();
        Ok(Response::new(pb::UpdatePrincipalResponse {
            principal: Some(to_pb_principal(p)),
        }))
    }

    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::GetPrincipalResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let who = self.target_principal(&caller, &req.principal_id).await?;
        let p = self
            .store
            .principal(&who)
            .await
            .map_err(db("loading a principal"))?
            .ok_or_else(|| not_found("principal", &who))?;
        Ok(Response::new(pb::GetPrincipalResponse {
            principal: Some(to_pb_principal(p)),
        }))
    }

    async fn grant_permission(
        &self,
        request: Request<pb::GrantPermissionRequest>,
    ) -> Result<Response<pb::GrantPermissionResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let req = request.into_inner();
        let (principal_id, bu, perm) = self
            .grant_key(&req.principal_id, &req.business_unit_id, req.permission)
            .await?;
        let stored = self
            .store
            .grant(grant::Model {
                principal_id,
                business_unit_id: bu,
                permission: perm,
                granted_by: caller.id.to_string(),
                grant_time: now_micros(),
            })
            .await
            .map_err(db("granting a permission"))?;
        self.changed();
        tracing::info!(principal = %stored.principal_id, business_unit = %stored.business_unit_id,
            permission = %stored.permission, by = %caller.id, "permission granted");
        Ok(Response::new(pb::GrantPermissionResponse {
            grant: Some(to_pb_grant(stored)),
        }))
    }

    async fn revoke_permission(
        &self,
        request: Request<pb::RevokePermissionRequest>,
    ) -> Result<Response<pb::RevokePermissionResponse>, Status> {
        let caller = caller(&request)?;
        self.require_admin(&caller).await?;
        let req = request.into_inner();
        let (principal_id, bu, perm) = self
            .grant_key(&req.principal_id, &req.business_unit_id, req.permission)
            .await?;
        let revoked = self
            .store
            .revoke(&principal_id, &bu, perm, now_micros())
            .await
            .map_err(db("revoking a permission"))?;
        self.changed();
        tracing::info!(principal = %principal_id, business_unit = %bu, permission = %perm,
            by = %caller.id, revoked, "permission revoked");
        Ok(Response::new(pb::RevokePermissionResponse { revoked }))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let offset = page_number::<u64>(&req.page_token)?.unwrap_or(0);
        let principal_filter = if req.principal_id.is_empty() {
            None
        } else {
            Some(parse_at("principal_id", PrincipalId::parse(&req.principal_id))?.to_string())
        };
        let is_admin = self.require_admin(&caller).await.is_ok();
        // Without administration rights, callers list only their own grants.
        let principal_filter = match (is_admin, principal_filter) {
            (true, f) => f,
            (false, None) => Some(caller.id.to_string()),
            (false, Some(p)) if p == caller.id.as_str() => Some(p),
            (false, Some(_)) => {
                return Err(permission_denied(
                    "only account representatives may list another principal's permissions",
                    &["ACCOUNT_REPRESENTATIVE"],
                ));
            }
        };
        let bu_filter = (!req.business_unit_id.is_empty()).then_some(req.business_unit_id.as_str());
        let mut rows = self
            .store
            .grants(principal_filter.as_deref(), bu_filter, offset, size + 1)
            .await
            .map_err(db("listing permissions"))?;
        let next = next_page_token(&mut rows, size, |_| (offset + size).to_string());
        Ok(Response::new(pb::ListPermissionsResponse {
            grants: rows.into_iter().map(to_pb_grant).collect(),
            next_page_token: next,
        }))
    }
}

#[tonic::async_trait]
impl InternalAuthorizationService for AuthorizationApi {
    type WatchAuthorizationChangesStream = ChangeStream;

    async fn watch_authorization_changes(
        &self,
        request: Request<ipb::WatchAuthorizationChangesRequest>,
    ) -> Result<Response<Self::WatchAuthorizationChangesStream>, Status> {
        // Internal: the caller table admits only the services that call it.
        caller(&request)?;
        let (tx, rx) = mpsc::channel(4);
        let mut changes = self.changes.subscribe();
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            loop {
                // The current generation, at once and after every change; changes that
                // come while a message waits are folded into the next one.
                let generation = *changes.borrow_and_update();
                let item = ipb::WatchAuthorizationChangesResponse { generation };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = draining.started() => {
                        // Never wait on a subscriber that does not read: the drain must end.
                        let _ = tx.try_send(Err(Draining::status()));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl AuthorizationApi {
    /// Validates the (principal, business unit, permission) of a grant or revoke.
    async fn grant_key(
        &self,
        principal_raw: &str,
        bu_raw: &str,
        permission: i32,
    ) -> Result<(String, String, Perm), Status> {
        let perm = Perm::try_from(rpc::required_enum::<pb::Permission>("permission", permission)?)
            .map_err(|_| invalid("permission", "is required"))?;
        let id = parse_at("principal_id", PrincipalId::parse(principal_raw))?;
        if self
            .store
            .principal(id.as_str())
            .await
            .map_err(db("loading a principal"))?
            .is_none()
        {
            return Err(not_found("principal", id.as_str()));
        }
        let bu = match (perm.is_global(), bu_raw.is_empty()) {
            (true, true) => String::new(),
            (true, false) => {
                return Err(invalid(
                    "business_unit_id",
                    format!("{perm} is a global permission: leave business_unit_id empty"),
                ));
            }
            (false, true) => {
                return Err(invalid(
                    "business_unit_id",
                    format!("{perm} is granted on a business unit: set business_unit_id"),
                ));
            }
            (false, false) => {
                self.existing_business_unit("business_unit_id", bu_raw)
                    .await?
                    .business_unit_id
            }
        };
        Ok((id.to_string(), bu, perm))
    }
}

fn names(perms: &[Perm]) -> String {
    perms.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
}
