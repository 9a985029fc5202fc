//! The request as the transition table ([`crate::plan`]) sees it: built once from its
//! stored row, with its state and approval path as enums and its change validated, so no
//! step parses the row again.

use sea_orm::DbErr;
use sspm_rules::{PortKind, PortLimit, PortLimits, RequestState, Targets, ValidatedChange};

use crate::entities::{limits, request};

pub use crate::entities::request::ApprovalPath;

/// A decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Who decided (`system` for automatic approvals).
    pub by: String,
    /// Approved or rejected.
    pub approved: bool,
    /// Why.
    pub reason: String,
    /// How.
    pub path: ApprovalPath,
    /// When, Unix microseconds.
    pub time: i64,
}

/// A port change request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id.
    pub id: String,
    /// Its business unit.
    pub business_unit_id: String,
    /// The business unit's cluster.
    pub cluster: String,
    /// Who asked.
    pub requester: String,
    /// Where it is in its lifecycle.
    pub state: RequestState,
    /// How it is decided, once known.
    pub path: Option<ApprovalPath>,
    /// What it changes, from the limits it was computed from.
    pub change: ValidatedChange,
    /// Its support case, once opened.
    pub case_number: Option<String>,
    /// Its decision, once made.
    pub decision: Option<Decision>,
    /// Why it is needed, when given.
    pub justification: Option<String>,
    /// R11: when a temporary change reverts, Unix microseconds.
    pub revert_at: Option<i64>,
    /// Whether its temporary change was reverted.
    pub reverted: bool,
}

impl Request {
    /// The request a stored row holds; an error for a row no version of SSPM writes (limits
    /// beyond R1; an unknown state or path already fails the row's read).
    pub fn from_row(r: &request::Model) -> Result<Self, DbErr> {
        let path = r.approval_path;
        let decision = match (&r.decided_by, r.decision_approved) {
            (Some(by), Some(approved)) => Some(Decision {
                by: by.clone(),
                approved,
                reason: r.decision_reason.clone().unwrap_or_default(),
                path: path.unwrap_or(ApprovalPath::Review),
                time: r.decide_time.unwrap_or(r.update_time),
            }),
            _ => None,
        };
        Ok(Self {
            id: r.request_id.clone(),
            business_unit_id: r.business_unit_id.clone(),
            cluster: r.cluster.clone(),
            requester: r.requester.clone(),
            state: r.state.into(),
            path,
            change: change_of(r)?,
            case_number: r.case_number.clone(),
            decision,
            justification: r.justification.clone(),
            revert_at: r.revert_at,
            reverted: r.reverted_time.is_some(),
        })
    }

    /// When the reconciler must look at it again of its own accord: the revert of an
    /// applied temporary change, if one is still due.
    pub fn next_look(&self) -> Option<i64> {
        (self.state == RequestState::Approved && !self.reverted)
            .then_some(self.revert_at)
            .flatten()
    }
}

/// The state of a stored request.
pub fn state_of(r: &request::Model) -> RequestState {
    r.state.into()
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
        (PortKind::Concurrent, r.target_concurrent),
        (PortKind::Outbound, r.target_outbound),
        (PortKind::Agentless, r.target_agentless),
    ] {
        if let Some(v) = v {
            let p = PortLimit::parse(v.into(), "").map_err(|e| bad(e.into()))?;
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
