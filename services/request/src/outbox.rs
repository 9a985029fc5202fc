//! The outbox: the calls to other services a step queues, stored in the transaction of
//! the step ([`crate::entities::effect`]) and carried out in order after it committed, each
//! idempotent on the other side (RELIABILITY.md, "The request path, step by step").

use sspm_platform::client::InternalChannel;
use sspm_platform::rpc::ServiceIdentity;
use sspm_proto::internal::v1 as ipb;
use sspm_proto::internal::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::internal::v1::ticketing_service_client::TicketingServiceClient;
use sspm_proto::v1 as pb;
use tonic::Status;

use crate::entities::{effect, request};
use crate::model::change_of;

/// A call to another service that a step queues, with what it needs.
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

/// An effect to enqueue, as the outbox stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEffect {
    /// Kind ([`Effect::kind`]).
    pub kind: effect::Kind,
    /// Argument.
    pub argument: String,
    /// On whose behalf.
    pub actor: String,
}

impl Effect {
    /// Stored kind.
    pub fn kind(&self) -> effect::Kind {
        match self {
            Effect::Comment(_) => effect::Kind::Comment,
            Effect::CaseStatus(_) => effect::Kind::CaseStatus,
            Effect::CloseCase(_) => effect::Kind::CloseCase,
            Effect::SubmitReview => effect::Kind::SubmitReview,
            Effect::WithdrawReview(_) => effect::Kind::WithdrawReview,
            Effect::Release(_) => effect::Kind::Release,
        }
    }

    /// Stored argument.
    fn argument(&self) -> String {
        match self {
            Effect::Comment(text) | Effect::CloseCase(text) | Effect::WithdrawReview(text) | Effect::Release(text) => {
                text.clone()
            }
            Effect::CaseStatus(status) => case_status_name(*status).to_owned(),
            Effect::SubmitReview => String::new(),
        }
    }

    /// The effect a stored row holds; `None` for a case status this version does not know.
    /// (A kind it does not know fails the row's read instead: it stays queued for a version
    /// that knows it.)
    pub fn decode(kind: effect::Kind, argument: &str) -> Option<Self> {
        let text = argument.to_owned();
        Some(match kind {
            effect::Kind::Comment => Effect::Comment(text),
            effect::Kind::CaseStatus => Effect::CaseStatus(case_status_of(argument)?),
            effect::Kind::CloseCase => Effect::CloseCase(text),
            effect::Kind::SubmitReview => Effect::SubmitReview,
            effect::Kind::WithdrawReview => Effect::WithdrawReview(text),
            effect::Kind::Release => Effect::Release(text),
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

/// The stored name of a case status (as the ticketing service names it).
fn case_status_name(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Unspecified => "UNSPECIFIED",
        pb::CaseStatus::New => "NEW",
        pb::CaseStatus::Working => "WORKING",
        pb::CaseStatus::WaitingOnCustomer => "WAITING_ON_CUSTOMER",
        pb::CaseStatus::Escalated => "ESCALATED",
        pb::CaseStatus::Closed => "CLOSED",
    }
}

/// The case status of a stored name; `None` for one this version does not know.
fn case_status_of(name: &str) -> Option<pb::CaseStatus> {
    [
        pb::CaseStatus::New,
        pb::CaseStatus::Working,
        pb::CaseStatus::WaitingOnCustomer,
        pb::CaseStatus::Escalated,
        pb::CaseStatus::Closed,
    ]
    .into_iter()
    .find(|s| case_status_name(*s) == name)
}

/// Carries out stored effects: the clients of the services they call.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The ticketing service (the case).
    pub ticketing: TicketingServiceClient<InternalChannel>,
    /// The approval service (the task and the reservation).
    pub approval: ApprovalServiceClient<InternalChannel>,
    /// The approval service's public reads (the task of a decision to apply, the day's usage
    /// for a dry run), on the same connection.
    pub approval_reads: sspm_proto::v1::approval_service_client::ApprovalServiceClient<InternalChannel>,
    /// Who calls.
    pub identity: ServiceIdentity,
}

impl Outbox {
    /// Makes the call of stored effect `e` of request `r` (an effect this version does not
    /// know is skipped, and says so).
    pub async fn call(&self, r: &request::Model, e: &effect::Model) -> Result<(), Status> {
        let Some(effect) = Effect::decode(e.kind, &e.argument) else {
            tracing::error!(request_id = r.request_id, kind = ?e.kind, argument = e.argument, "unknown case status; skipped");
            return Ok(());
        };
        let case = r.case_number.clone().unwrap_or_default();
        let actor = Some(e.actor.as_str());
        let id = self.identity.clone();
        match effect {
            Effect::Comment(body) => {
                let req = ipb::AddCaseCommentRequest {
                    case_number: case,
                    body,
                    // The outbox entry's id: a retry after a crash or a timeout does not
                    // comment twice.
                    comment_id: format!("{}/{}", r.request_id, e.id),
                };
                self.ticketing.clone().add_case_comment(id.request(req, actor)).await?;
            }
            Effect::CaseStatus(status) => {
                let req = ipb::UpdateCaseStatusRequest {
                    case_number: case,
                    status: status.into(),
                };
                self.ticketing
                    .clone()
                    .update_case_status(id.request(req, actor))
                    .await?;
            }
            Effect::CloseCase(resolution) => {
                let req = ipb::CloseCaseRequest {
                    case_number: case,
                    resolution,
                };
                self.ticketing.clone().close_case(id.request(req, actor)).await?;
            }
            Effect::SubmitReview => {
                let req = review_of(r, case).map_err(|e| Status::internal(e.to_string()))?;
                self.approval.clone().submit_for_review(id.request(req, actor)).await?;
            }
            Effect::WithdrawReview(reason) => {
                let req = ipb::WithdrawReviewRequest {
                    request_id: r.request_id.clone(),
                    reason,
                };
                self.approval.clone().withdraw_review(id.request(req, actor)).await?;
            }
            Effect::Release(reason) => {
                let req = ipb::ReleaseReservationRequest {
                    request_id: r.request_id.clone(),
                    reason,
                };
                self.approval
                    .clone()
                    .release_reservation(id.request(req, actor))
                    .await?;
            }
        }
        Ok(())
    }
}

/// The approval task of request `r`, whose case is `case`.
fn review_of(r: &request::Model, case: String) -> Result<ipb::SubmitForReviewRequest, sea_orm::DbErr> {
    let change = change_of(r)?;
    let (units, nanos) = sspm_rules::Amount {
        currency: r.currency.clone(),
        micros: r.cost_change_micros,
    }
    .units_and_nanos();
    Ok(ipb::SubmitForReviewRequest {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored case status comes back as the status it was (the names are the proto's
    /// without their prefix, as the ticketing service stores them).
    #[test]
    fn case_statuses_round_trip_through_their_stored_names() {
        for n in 1..=5 {
            let status = pb::CaseStatus::try_from(n).expect("a case status");
            let stored = Effect::CaseStatus(status).argument();
            assert_eq!(format!("CASE_STATUS_{stored}"), status.as_str_name());
            assert_eq!(
                Effect::decode(effect::Kind::CaseStatus, &stored),
                Some(Effect::CaseStatus(status))
            );
        }
        assert_eq!(Effect::decode(effect::Kind::CaseStatus, "UNSPECIFIED"), None);
        assert_eq!(Effect::decode(effect::Kind::CaseStatus, "closed"), None);
    }
}
