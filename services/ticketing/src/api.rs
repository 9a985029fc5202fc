//! `sspm.v1.TicketingService`. Opening, commenting and closing cases is internal (SSPM
//! services); users read the cases of business units whose requests they may view.

use std::sync::Arc;

use sspm_platform::auth::Principal as Caller;
use sspm_platform::caller;
use sspm_platform::error::{db, not_found};
use sspm_platform::rpc::{
    Authz, ON_BEHALF_OF, invalid, next_page_token, now_micros, page_number, page_size, parse_at, timestamp,
    timestamp_opt,
};
use sspm_proto::internal::v1 as ipb;
use sspm_proto::internal::v1::ticketing_service_server::TicketingService as InternalTicketingService;
use sspm_proto::v1 as pb;
use sspm_proto::v1::ticketing_service_server::TicketingService;
use sspm_rules::{BusinessUnitId, CaseNumber, PrincipalId, Text};
use tonic::{Code, Request, Response, Status};

use crate::entities::case;
use crate::org::OrgSync;
use crate::store::{CaseRecord, Closed, NewCase, Store};

/// The handlers.
#[derive(Debug, Clone)]
pub struct TicketingApi {
    store: Store,
    authz: Authz,
    /// The Salesforce backend, when configured.
    org: Option<Arc<OrgSync>>,
}

impl TicketingApi {
    /// Handlers on `store`, asking `authz` about users' access.
    pub fn new(store: Store, authz: Authz) -> Self {
        Self {
            store,
            authz,
            org: None,
        }
    }

    /// Handlers whose cases are the org's, recorded in its store.
    pub fn with_org(org: Arc<OrgSync>, authz: Authz) -> Self {
        Self {
            store: org.store().clone(),
            authz,
            org: Some(org),
        }
    }

    /// A write was made: the org's worker has something to send.
    fn written(&self) {
        if let Some(org) = &self.org {
            org.wake();
        }
    }

    /// May the caller read the cases of `business_unit_id`? (No service reads cases: the
    /// caller table admits users only.)
    async fn may_read(&self, caller: &Caller, business_unit_id: &str) -> Result<(), Status> {
        self.authz
            .require(&caller.id, pb::Action::ViewPorts, business_unit_id)
            .await
            .map(|_| ())
    }

    async fn case_by_number(&self, raw: &str) -> Result<CaseRecord, Status> {
        let number = parse_at("case_number", CaseNumber::parse(raw))?;
        self.store
            .by_number(number.as_str())
            .await
            .map_err(db("loading a case"))?
            .ok_or_else(|| not_found("case", raw))
    }
}

/// Who wrote something: the end user the calling service acts for, or the caller.
fn author<T>(request: &Request<T>, caller: &Caller) -> String {
    request
        .metadata()
        .get(ON_BEHALF_OF)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v == "system" || PrincipalId::parse(v).is_ok())
        .map_or_else(|| caller.id.to_string(), str::to_owned)
}

fn to_pb(r: CaseRecord) -> pb::Case {
    let c = r.case;
    let status = pb::CaseStatus::from(c.status);
    pb::Case {
        case_number: c.case_number.unwrap_or_default(),
        external_reference: c.external_reference,
        subject: c.subject,
        description: c.description,
        business_unit_id: c.business_unit_id,
        requester: c.requester,
        status: status.into(),
        resolution: c.resolution.unwrap_or_default(),
        comments: r
            .comments
            .into_iter()
            .map(|m| pb::CaseComment {
                author: m.author,
                body: m.body,
                create_time: Some(timestamp(m.create_time)),
            })
            .collect(),
        create_time: Some(timestamp(c.create_time)),
        update_time: Some(timestamp(c.update_time)),
        close_time: timestamp_opt(c.close_time),
    }
}

fn text(field: &str, raw: &str, what: &str, max: usize) -> Result<String, Status> {
    Ok(parse_at(field, Text::parse_max(raw, what, max))?.as_str().to_owned())
}

/// A case's external reference (the caller's id for it): 1-64 characters, no control
/// characters, surrounding blanks ignored.
fn external_reference(raw: &str) -> Result<&str, Status> {
    let reference = raw.trim();
    if reference.is_empty() || reference.chars().count() > 64 || reference.chars().any(char::is_control) {
        return Err(invalid(
            "external_reference",
            "must be 1-64 characters, without control characters",
        ));
    }
    Ok(reference)
}

/// The optional idempotency key of a comment: none when empty, at most 128 characters.
fn comment_key(raw: &str) -> Result<Option<&str>, Status> {
    match raw {
        "" => Ok(None),
        k if k.len() > 128 || k.chars().any(char::is_control) => Err(invalid(
            "comment_id",
            "must be at most 128 characters, without control characters",
        )),
        k => Ok(Some(k)),
    }
}

#[tonic::async_trait]
impl TicketingService for TicketingApi {
    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        let caller = caller(&request)?;
        let (case, asked) = match request.into_inner().key {
            Some(pb::get_case_request::Key::CaseNumber(n)) => (self.case_by_number(&n).await?, n),
            Some(pb::get_case_request::Key::ExternalReference(r)) => (
                self.store
                    .by_reference(external_reference(&r)?)
                    .await
                    .map_err(db("loading a case"))?
                    .ok_or_else(|| not_found("case", &r))?,
                r,
            ),
            None => return Err(invalid("key", "set case_number or external_reference")),
        };
        match self.may_read(&caller, &case.case.business_unit_id).await {
            Ok(()) => Ok(Response::new(pb::GetCaseResponse {
                case: Some(to_pb(case)),
            })),
            // Exactly the answer for a case that does not exist: only what the caller asked
            // with, never the case number of another tenant's case.
            Err(s) if s.code() == Code::NotFound => Err(not_found("case", &asked)),
            Err(s) => Err(s),
        }
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let before = page_number::<i64>(&req.page_token)?;
        let bu = if req.business_unit_id.is_empty() {
            return Err(invalid(
                "business_unit_id",
                "is required: list the cases of one business unit you may view",
            ));
        } else {
            let id = parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?;
            self.may_read(&caller, id.as_str()).await?;
            Some(id.to_string())
        };
        // enum_filter refuses CASE_STATUS_UNSPECIFIED: every value names a status.
        let statuses: Vec<case::Status> = sspm_platform::rpc::enum_filter::<pb::CaseStatus>("statuses", &req.statuses)?
            .into_iter()
            .filter_map(|s| case::Status::try_from(s).ok())
            .collect();
        let mut rows = self
            .store
            .list(bu.as_deref(), &statuses, before, size + 1)
            .await
            .map_err(db("listing cases"))?;
        let next = next_page_token(&mut rows, size, |r| r.case.id.to_string());
        Ok(Response::new(pb::ListCasesResponse {
            cases: rows.into_iter().map(to_pb).collect(),
            next_page_token: next,
        }))
    }
}

#[tonic::async_trait]
impl InternalTicketingService for TicketingApi {
    async fn open_case(
        &self,
        request: Request<ipb::OpenCaseRequest>,
    ) -> Result<Response<ipb::OpenCaseResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let reference = external_reference(&req.external_reference)?;
        let description = if req.description.is_empty() {
            String::new()
        } else {
            text("description", &req.description, "description", 32_000)?
        };
        let new = NewCase {
            external_reference: reference.to_owned(),
            subject: text("subject", &req.subject, "subject", 255)?,
            description,
            business_unit_id: parse_at("business_unit_id", BusinessUnitId::parse(&req.business_unit_id))?.to_string(),
            requester: parse_at("requester", PrincipalId::parse(&req.requester))?.to_string(),
        };
        let (case, created) = match &self.org {
            Some(org) => org.open(new).await?,
            None => self.store.open(new, now_micros()).await.map_err(db("opening a case"))?,
        };
        if created {
            tracing::info!(case_number = ?case.case.case_number, reference, "case opened");
        }
        Ok(Response::new(ipb::OpenCaseResponse {
            case: Some(to_pb(case)),
            created,
        }))
    }

    async fn add_case_comment(
        &self,
        request: Request<ipb::AddCaseCommentRequest>,
    ) -> Result<Response<ipb::AddCaseCommentResponse>, Status> {
        let caller = caller(&request)?;
        let author = author(&request, &caller);
        let req = request.into_inner();
        let body = text("body", &req.body, "comment", Text::MAX_LEN)?;
        let key = comment_key(&req.comment_id)?;
        let case = self.case_by_number(&req.case_number).await?;
        self.store
            .comment(&case.case, &author, &body, key, now_micros())
            .await
            .map_err(db("adding a comment"))?;
        self.written();
        let case = self.case_by_number(&req.case_number).await?;
        Ok(Response::new(ipb::AddCaseCommentResponse {
            case: Some(to_pb(case)),
        }))
    }

    async fn update_case_status(
        &self,
        request: Request<ipb::UpdateCaseStatusRequest>,
    ) -> Result<Response<ipb::UpdateCaseStatusResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let status: pb::CaseStatus = sspm_platform::rpc::required_enum("status", req.status)?;
        let status = case::Status::try_from(status).map_err(|_| invalid("status", "is required"))?;
        if status == case::Status::Closed {
            return Err(invalid("status", "use CloseCase to close a case, with its resolution"));
        }
        let case = self.case_by_number(&req.case_number).await?;
        let updated = self
            .store
            .set_status(&case.case, status, now_micros())
            .await
            .map_err(db("updating a case"))?;
        self.written();
        if !updated {
            return Err(Status::failed_precondition(format!(
                "case {} is closed; its status can no longer change",
                req.case_number
            )));
        }
        let case = self.case_by_number(&req.case_number).await?;
        Ok(Response::new(ipb::UpdateCaseStatusResponse {
            case: Some(to_pb(case)),
        }))
    }

    async fn close_case(
        &self,
        request: Request<ipb::CloseCaseRequest>,
    ) -> Result<Response<ipb::CloseCaseResponse>, Status> {
        // Internal: the caller table admits only the request service.
        caller(&request)?;
        let req = request.into_inner();
        let number = parse_at("case_number", CaseNumber::parse(&req.case_number))?;
        let resolution = text("resolution", &req.resolution, "resolution", Text::MAX_LEN)?;
        let closed = self
            .store
            .close(number.as_str(), &resolution, now_micros())
            .await
            .map_err(db("closing a case"))?
            .ok_or_else(|| not_found("case", number.as_str()))?;
        self.written();
        match closed {
            Closed::Ok(case) => Ok(Response::new(ipb::CloseCaseResponse {
                case: Some(to_pb(case)),
            })),
            Closed::Conflict(case) => Err(Status::failed_precondition(format!(
                "case {} is already closed with another resolution: {:?}",
                number,
                case.case.resolution.unwrap_or_default()
            ))),
        }
    }
}
