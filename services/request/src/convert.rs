//! Stored requests as the API shows them.

use sspm_platform::rpc::{timestamp, timestamp_opt};
use sspm_proto::v1 as pb;
use sspm_rules::{Amount, PortLimits, RequestState};

use crate::entities::request::{self, ApprovalPath};
use crate::events::HistoryEntry;
use crate::model::{change_of, state_of};

/// Limits as the API shows them.
pub fn limits_pb(l: PortLimits) -> pb::PortLimits {
    pb::PortLimits {
        concurrent: l.concurrent.get().into(),
        outbound: l.outbound.get().into(),
        agentless: l.agentless.get().into(),
    }
}

/// The API state of a request state. (A match, not the names: a state added to the rules
/// does not compile until it has its API value.)
pub fn state_pb(s: RequestState) -> pb::PortChangeRequestState {
    use pb::PortChangeRequestState as Pb;
    match s {
        RequestState::New => Pb::New,
        RequestState::PendingInformation => Pb::PendingInformation,
        RequestState::UnderReview => Pb::UnderReview,
        RequestState::Approved => Pb::Approved,
        RequestState::Rejected => Pb::Rejected,
        RequestState::Cancelled => Pb::Cancelled,
        RequestState::Failed => Pb::Failed,
    }
}

/// The request state of an API state; `None` for UNSPECIFIED.
pub fn state_of_pb(s: pb::PortChangeRequestState) -> Option<RequestState> {
    use pb::PortChangeRequestState as Pb;
    Some(match s {
        Pb::Unspecified => return None,
        Pb::New => RequestState::New,
        Pb::PendingInformation => RequestState::PendingInformation,
        Pb::UnderReview => RequestState::UnderReview,
        Pb::Approved => RequestState::Approved,
        Pb::Rejected => RequestState::Rejected,
        Pb::Cancelled => RequestState::Cancelled,
        Pb::Failed => RequestState::Failed,
    })
}

/// Money of a stored amount.
pub fn money(currency: &str, micros: i64) -> pb::Money {
    let (units, nanos) = Amount {
        currency: currency.to_owned(),
        micros,
    }
    .units_and_nanos();
    pb::Money {
        currency_code: currency.to_owned(),
        units,
        nanos,
    }
}

/// What creating a request did, from where it stands now.
pub fn outcome(r: &request::Model) -> pb::CreateOutcome {
    match (state_of(r), r.approval_path) {
        (RequestState::Approved, Some(ApprovalPath::Automatic)) => pb::CreateOutcome::AutoApproved,
        (RequestState::PendingInformation, _) => pb::CreateOutcome::NeedsInformation,
        (RequestState::UnderReview, _) => pb::CreateOutcome::SentToReview,
        (RequestState::Failed, _) => pb::CreateOutcome::Failed,
        (_, Some(ApprovalPath::Review)) if r.justification.is_some() => pb::CreateOutcome::SentToReview,
        (_, Some(ApprovalPath::Review)) => pb::CreateOutcome::NeedsInformation,
        _ => pb::CreateOutcome::Accepted,
    }
}

/// A stored request with its history.
pub fn request_pb(r: request::Model, history: Vec<HistoryEntry>) -> pb::PortChangeRequest {
    let change = change_of(&r).ok();
    let state = state_of(&r);
    let decision = match (&r.decided_by, r.decision_approved) {
        (Some(by), Some(approved)) => Some(pb::Decision {
            decided_by: by.clone(),
            decide_time: timestamp_opt(r.decide_time),
            approved,
            reason: r.decision_reason.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    let path = r.approval_path.map_or(pb::ApprovalPath::Unspecified, Into::into);
    let revert = r.revert_at.map(|at| pb::Revert {
        revert_at: Some(timestamp(at)),
        reverted_time: timestamp_opt(r.reverted_time),
        limits_after_revert: match (r.reverted_concurrent, r.reverted_outbound, r.reverted_agentless) {
            (Some(c), Some(o), Some(a)) => Some(pb::PortLimits {
                concurrent: c,
                outbound: o,
                agentless: a,
            }),
            _ => None,
        },
    });
    pb::PortChangeRequest {
        request_id: r.request_id,
        business_unit_id: r.business_unit_id,
        requester: r.requester,
        state: state_pb(state).into(),
        case_number: r.case_number.unwrap_or_default(),
        limits_before: change.as_ref().map(|c| limits_pb(c.before)),
        targets: Some(pb::PortTargets {
            concurrent: r.target_concurrent,
            outbound: r.target_outbound,
            agentless: r.target_agentless,
        }),
        limits_after: change.as_ref().map(|c| limits_pb(c.after)),
        estimated_monthly_cost_change: Some(money(&r.currency, r.cost_change_micros)),
        justification: r.justification.unwrap_or_default(),
        revert,
        approval_path: path.into(),
        decision,
        failure_reason: r.failure_reason.unwrap_or_default(),
        history: history.into_iter().map(history_pb).collect(),
        create_time: Some(timestamp(r.create_time)),
        update_time: Some(timestamp(r.update_time)),
    }
}

fn history_pb(h: HistoryEntry) -> pb::HistoryEvent {
    pb::HistoryEvent {
        kind: pb::HistoryEventKind::from(h.kind).into(),
        time: Some(timestamp(h.time)),
        actor: h.actor,
        from_state: h
            .from_state
            .map_or(pb::PortChangeRequestState::Unspecified, state_pb)
            .into(),
        to_state: state_pb(h.to_state).into(),
        reason: h.reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sea_orm::{ActiveEnum, Iterable};

    /// Each state is stored by the name of its API value without the prefix, and comes
    /// back from the API value as itself.
    #[test]
    fn every_request_state_has_the_api_value_of_its_stored_name() {
        for s in RequestState::ALL {
            let api = state_pb(s);
            let stored = request::State::from(s).to_value();
            assert_eq!(api.as_str_name(), format!("PORT_CHANGE_REQUEST_STATE_{stored}"));
            assert_eq!(stored, s.as_str(), "messages name a state as it is stored");
            assert_eq!(state_of_pb(api), Some(s));
            assert_eq!(RequestState::from(request::State::from(s)), s);
        }
        assert_eq!(state_of_pb(pb::PortChangeRequestState::Unspecified), None);
        assert_eq!(request::State::iter().count(), RequestState::ALL.len());
    }

    /// Paths and history kinds are stored by the names of their API values.
    #[test]
    fn paths_and_history_kinds_have_the_api_values_of_their_stored_names() {
        for p in ApprovalPath::iter() {
            let api = pb::ApprovalPath::from(p);
            assert_eq!(api.as_str_name(), format!("APPROVAL_PATH_{}", p.to_value()));
        }
        for k in crate::entities::event::Kind::iter() {
            let api = pb::HistoryEventKind::from(k);
            assert_eq!(api.as_str_name(), format!("HISTORY_EVENT_KIND_{}", k.to_value()));
        }
    }
}
