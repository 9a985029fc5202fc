//! The request lifecycle (docs/ARCHITECTURE.md, "The request lifecycle"): which transitions are legal, which states are open.
//!
//! ```text
//!             create ──► NEW ──(daily limit fits)───────────────► APPROVED
//!                         │
//!                         └─(exceeds)─► PENDING_INFORMATION ──(justification)──► UNDER_REVIEW
//!                                            │                                    │      │
//!                                        (cancel)                          (approve)  (reject)
//!                                            ▼                                    ▼      ▼
//!                                        CANCELLED                           APPROVED  REJECTED
//! ```
//! NEW goes straight to UNDER_REVIEW when the request came with a justification. Every open
//! state may be cancelled by the requester or fail (the change can no longer be applied).

use std::fmt;

use crate::violation::{Rule, Violation};

/// State of a port change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Accepted, being processed. Open.
    New,
    /// Waiting for a justification. Open.
    PendingInformation,
    /// Waiting for a human decision. Open.
    UnderReview,
    /// Approved and applied. Terminal.
    Approved,
    /// Rejected. Terminal.
    Rejected,
    /// Cancelled by the requester. Terminal.
    Cancelled,
    /// Could not be applied. Terminal.
    Failed,
}

impl RequestState {
    /// Every state.
    pub const ALL: [RequestState; 7] = [
        RequestState::New,
        RequestState::PendingInformation,
        RequestState::UnderReview,
        RequestState::Approved,
        RequestState::Rejected,
        RequestState::Cancelled,
        RequestState::Failed,
    ];

    /// Open states count for R5 (at most one per business unit).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            RequestState::New | RequestState::PendingInformation | RequestState::UnderReview
        )
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        !self.is_open()
    }

    /// Its name in messages: the proto enum's without its prefix (which the request service
    /// also stores, by its own active enum).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::New => "NEW",
            RequestState::PendingInformation => "PENDING_INFORMATION",
            RequestState::UnderReview => "UNDER_REVIEW",
            RequestState::Approved => "APPROVED",
            RequestState::Rejected => "REJECTED",
            RequestState::Cancelled => "CANCELLED",
            RequestState::Failed => "FAILED",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The increase fits the daily limit (or needs no check): approve and apply.
    AutoApprove,
    /// The increase exceeds the daily limit and no justification was given.
    AskForInformation,
    /// The increase exceeds the daily limit and a justification came with the request.
    SendToReview,
    /// The requester provided the justification.
    ProvideInformation,
    /// An approver approved (and the change was applied).
    Approve,
    /// An approver rejected.
    Reject,
    /// The requester cancelled.
    Cancel,
    /// The change can no longer be applied.
    Fail,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 8] = [
        Event::AutoApprove,
        Event::AskForInformation,
        Event::SendToReview,
        Event::ProvideInformation,
        Event::Approve,
        Event::Reject,
        Event::Cancel,
        Event::Fail,
    ];
}

/// The state after `event` in `state`, or a lifecycle violation.
pub fn next(state: RequestState, event: Event) -> Result<RequestState, Violation> {
    use Event as E;
    use RequestState as S;
    let to = match (state, event) {
        (S::New, E::AutoApprove) => S::Approved,
        (S::New, E::AskForInformation) => S::PendingInformation,
        (S::New, E::SendToReview) => S::UnderReview,
        (S::PendingInformation, E::ProvideInformation) => S::UnderReview,
        (S::UnderReview, E::Approve) => S::Approved,
        (S::UnderReview, E::Reject) => S::Rejected,
        (s, E::Cancel) if s.is_open() => S::Cancelled,
        (s, E::Fail) if s.is_open() => S::Failed,
        (s, e) => {
            let why = if s.is_terminal() {
                format!("the request is {s}, a final state; it can no longer change")
            } else {
                format!("a request in state {s} cannot {}", verb(e))
            };
            return Err(Violation::new(Rule::Lifecycle, "request_id", why));
        }
    };
    Ok(to)
}

fn verb(e: Event) -> &'static str {
    match e {
        Event::AutoApprove => "be approved automatically",
        Event::AskForInformation => "ask for information",
        Event::SendToReview => "be sent to review",
        Event::ProvideInformation => "take information (only PENDING_INFORMATION can)",
        Event::Approve => "be approved (only UNDER_REVIEW can)",
        Event::Reject => "be rejected (only UNDER_REVIEW can)",
        Event::Cancel => "be cancelled",
        Event::Fail => "fail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RequestState as S;

    #[test]
    fn the_documented_paths_are_legal() {
        assert_eq!(next(S::New, Event::AutoApprove), Ok(S::Approved));
        assert_eq!(next(S::New, Event::AskForInformation), Ok(S::PendingInformation));
        assert_eq!(next(S::New, Event::SendToReview), Ok(S::UnderReview));
        assert_eq!(
            next(S::PendingInformation, Event::ProvideInformation),
            Ok(S::UnderReview)
        );
        assert_eq!(next(S::UnderReview, Event::Approve), Ok(S::Approved));
        assert_eq!(next(S::UnderReview, Event::Reject), Ok(S::Rejected));
        for open in [S::New, S::PendingInformation, S::UnderReview] {
            assert_eq!(next(open, Event::Cancel), Ok(S::Cancelled));
            assert_eq!(next(open, Event::Fail), Ok(S::Failed));
        }
    }

    #[test]
    fn shortcuts_are_illegal() {
        let err = next(S::PendingInformation, Event::Approve).unwrap_err();
        assert_eq!(err.rule, Rule::Lifecycle);
        assert!(next(S::New, Event::Approve).is_err());
        assert!(next(S::UnderReview, Event::ProvideInformation).is_err());
        assert!(next(S::PendingInformation, Event::AutoApprove).is_err());
    }

    #[test]
    fn terminal_states_never_change() {
        for s in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            for e in Event::ALL {
                let err = next(s, e).unwrap_err();
                assert!(err.message.contains("final state"), "{s} {e:?}: {}", err.message);
            }
        }
    }

    #[test]
    fn open_and_terminal_partition_the_states() {
        let open: Vec<_> = S::ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, [S::New, S::PendingInformation, S::UnderReview]);
        for s in S::ALL {
            assert_ne!(s.is_open(), s.is_terminal());
        }
    }
}
