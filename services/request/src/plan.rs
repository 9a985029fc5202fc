//! The transition table: one pure function, [`next_step`], from a request, what happened
//! to it and the time, to its next step: the state it goes to, what is stored with it
//! (history, audit, the business unit's new limits) and the calls to other services it
//! queues (the outbox). The handlers (cancel, provide information) and the reconciler
//! (first steps, decisions, reverts) all go through it; the store writes a [`Step`] in one
//! transaction, and `sspm_rules::lifecycle` says which transitions are legal
//! (RELIABILITY.md, "The request path, step by step").

use sspm_proto::v1 as pb;
use sspm_rules::lifecycle::{Event, next};
use sspm_rules::{BusinessUnitFacts, PortLimits, RequestState, Rule, ValidatedChange, Violation, reapply, revert};

use crate::capacity::Room;
pub use crate::entities::event::Kind as HistoryKind;
use crate::model::{ApprovalPath, Decision, Request};
use crate::outbox::{Effect, NewEffect};

/// The actor of SSPM's own steps.
pub const SYSTEM: &str = "system";

/// The verdict on a new request's increase (R8), with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It fits the daily limit, or needs no check: approve automatically.
    Fits(String),
    /// It exceeds the daily limit: a human decides.
    Exceeds(String),
}

/// What happened to a request (an event) or what a step observed (the answers of other
/// services, the limits as they are).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// The first steps' calls answered: the request's case (linked now, or before) and the
    /// verdict on its increase; with the business unit's facts (`None`: it no longer
    /// exists) and its limits as they are.
    Started {
        /// The case's number.
        case: &'a str,
        /// The verdict.
        verdict: &'a Verdict,
        /// The business unit's facts.
        facts: Option<BusinessUnitFacts>,
        /// Its limits now.
        current: PortLimits,
        /// Its pool and cluster now (R12, R13).
        room: &'a Room,
    },
    /// An approver decided the request under review: apply or reject it.
    Decided {
        /// The decision.
        decision: &'a Decision,
        /// The business unit's facts.
        facts: Option<BusinessUnitFacts>,
        /// Its limits now.
        current: PortLimits,
        /// Its pool and cluster now (R12, R13).
        room: &'a Room,
    },
    /// The decision already recorded on an open request (by an earlier version, which
    /// recorded decisions and applied them in two steps) is carried out.
    Resume {
        /// The business unit's facts.
        facts: Option<BusinessUnitFacts>,
        /// Its limits now.
        current: PortLimits,
        /// Its pool and cluster now (R12, R13).
        room: &'a Room,
    },
    /// The requester cancels.
    Cancel {
        /// Who.
        by: &'a str,
        /// Why, if said.
        reason: Option<&'a str>,
    },
    /// The requester gives the justification asked for.
    ProvideInformation {
        /// Who.
        by: &'a str,
        /// The justification.
        justification: &'a str,
    },
    /// A temporary change's time is up (R11).
    Revert {
        /// The business unit's facts.
        facts: BusinessUnitFacts,
        /// Its limits now.
        current: PortLimits,
    },
}

/// A history entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its kind.
    pub kind: HistoryKind,
    /// Who.
    pub actor: String,
    /// State before (`None` for the creation).
    pub from: Option<RequestState>,
    /// State after.
    pub to: RequestState,
    /// Why.
    pub reason: String,
}

/// A column of the request a step sets besides its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Set {
    /// Its case's number.
    CaseNumber(String),
    /// Its decision (and approval path).
    Decision(Decision),
    /// Its approval path, before a decision.
    Path(ApprovalPath),
    /// The justification given.
    Justification(String),
    /// Why it failed.
    FailureReason(String),
    /// Its temporary change reverted, to these limits.
    Reverted(PortLimits),
}

/// An audit event besides the one of the history entry: (actor, action, detail) on the
/// request.
pub type Audit = (Option<String>, &'static str, String);

/// A request's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The state it leaves (the write is guarded by it).
    pub from: RequestState,
    /// Its history entry; its `to` is the state the request goes to.
    pub entry: Entry,
    /// The columns it sets.
    pub set: Vec<Set>,
    /// The business unit's new limits, if it changes them.
    pub limits: Option<PortLimits>,
    /// Audit events besides the history entry's.
    pub audit: Vec<Audit>,
    /// The calls it queues, in order.
    pub effects: Vec<NewEffect>,
}

impl Step {
    /// The state the request goes to.
    pub fn to(&self) -> RequestState {
        self.entry.to
    }
}

/// The next step of `r` on `input` at `now`; a lifecycle violation when `input` cannot
/// happen to the request as it is (FAILED_PRECONDITION for a caller).
pub fn next_step(r: &Request, input: Input<'_>, now: i64) -> Result<Step, Violation> {
    match input {
        Input::Started {
            case,
            verdict,
            facts,
            current,
            room,
        } => {
            if r.state != RequestState::New || r.decision.is_some() {
                return Err(moved(r));
            }
            let mut set = Vec::new();
            let mut audit = Vec::new();
            if r.case_number.is_none() {
                set.push(Set::CaseNumber(case.to_owned()));
                audit.push((None, "request.case_linked", format!("case {case}")));
            }
            match verdict {
                Verdict::Exceeds(why) => {
                    let (event, effects) = to_review(r, why);
                    let to = next(r.state, event)?;
                    set.push(Set::Path(ApprovalPath::Review));
                    Ok(Step {
                        from: r.state,
                        entry: transition(r.state, to, SYSTEM, why.clone()),
                        set,
                        limits: None,
                        audit,
                        effects,
                    })
                }
                Verdict::Fits(reason) => {
                    let decision = Decision {
                        by: SYSTEM.to_owned(),
                        approved: true,
                        reason: reason.clone(),
                        path: ApprovalPath::Automatic,
                        time: now,
                    };
                    decide(r, &decision, facts, (current, room), set, audit, true)
                }
            }
        }
        Input::Decided {
            decision,
            facts,
            current,
            room,
        } => {
            if r.decision.is_some() {
                return Err(Violation::new(
                    Rule::Lifecycle,
                    "request_id",
                    format!("request {} is decided already", r.id),
                ));
            }
            next(
                r.state,
                if decision.approved {
                    Event::Approve
                } else {
                    Event::Reject
                },
            )?;
            decide(r, decision, facts, (current, room), Vec::new(), Vec::new(), true)
        }
        Input::Resume { facts, current, room } => {
            let Some(decision) = r.decision.as_ref().filter(|_| r.state.is_open()) else {
                return Err(moved(r));
            };
            decide(r, decision, facts, (current, room), Vec::new(), Vec::new(), false)
        }
        Input::Cancel { by, reason } => {
            let to = next(r.state, Event::Cancel)?;
            let why = reason.unwrap_or("no reason given");
            let mut effects = vec![Effect::Release("cancelled".into()).by(by)];
            if r.state == RequestState::UnderReview {
                effects.push(Effect::WithdrawReview(format!("cancelled by {by}: {why}")).by(by));
            }
            effects.push(Effect::CloseCase(format!("Cancelled by {by}: {why}")).by(by));
            Ok(Step {
                from: r.state,
                entry: transition(r.state, to, by, format!("cancelled: {why}")),
                set: Vec::new(),
                limits: None,
                audit: Vec::new(),
                effects,
            })
        }
        Input::ProvideInformation { by, justification } => {
            let to = next(r.state, Event::ProvideInformation)?;
            Ok(Step {
                from: r.state,
                entry: transition(r.state, to, by, format!("justification provided: {justification}")),
                set: vec![Set::Justification(justification.to_owned())],
                limits: None,
                audit: Vec::new(),
                effects: vec![
                    Effect::Comment(format!("Justification from {by}: {justification}")).by(by),
                    Effect::CaseStatus(pb::CaseStatus::Escalated).by(SYSTEM),
                    Effect::SubmitReview.by(by),
                ],
            })
        }
        Input::Revert { facts, current } => {
            if r.state != RequestState::Approved || r.reverted || r.revert_at.is_none() {
                return Err(Violation::new(
                    Rule::Lifecycle,
                    "request_id",
                    format!("request {} has no temporary change left to revert", r.id),
                ));
            }
            let after = revert(&r.change, current, facts);
            let text = format!("temporary change reverted: {current} -> {after}");
            Ok(Step {
                from: r.state,
                entry: Entry {
                    kind: HistoryKind::Reverted,
                    actor: SYSTEM.to_owned(),
                    from: Some(r.state),
                    to: r.state,
                    reason: text.clone(),
                },
                set: vec![Set::Reverted(after)],
                limits: Some(after),
                audit: Vec::new(),
                effects: vec![Effect::Comment(format!("The {text} (requested by {}).", r.requester)).by(SYSTEM)],
            })
        }
    }
}

/// The request is no longer where this step starts (another worker or replica moved it).
fn moved(r: &Request) -> Violation {
    Violation::new(
        Rule::Lifecycle,
        "request_id",
        format!("request {} is {} now; the step no longer applies", r.id, r.state),
    )
}

/// A transition's history entry.
fn transition(from: RequestState, to: RequestState, actor: &str, reason: String) -> Entry {
    Entry {
        kind: HistoryKind::Transition,
        actor: actor.to_owned(),
        from: Some(from),
        to,
        reason,
    }
}

/// Where a request whose increase exceeds the daily limit goes, with its calls: to review
/// when it came with a justification, else to a request for information.
fn to_review(r: &Request, why: &str) -> (Event, Vec<NewEffect>) {
    if r.justification.is_some() {
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
                Effect::Comment(format!(
                    "{why}. Please provide a justification (PortRequestService.ProvideInformation) to send the request for approval."
                ))
                .by(SYSTEM),
                Effect::CaseStatus(pb::CaseStatus::WaitingOnCustomer).by(SYSTEM),
            ],
        )
    }
}

/// Carries out `decision` on `r`: an approval applies the change to the limits as they are
/// (`current`), or fails the request when that breaks a rule now (R3), or no longer fits
/// the business unit's pool or cluster (`room`: R12, R13); a rejection closes it.
/// `record` also stores the decision (with an audit event); `set` and `audit` are what the
/// step stores besides. A lifecycle violation when the request cannot be decided so.
fn decide(
    r: &Request,
    decision: &Decision,
    facts: Option<BusinessUnitFacts>,
    (current, room): (PortLimits, &Room),
    mut set: Vec<Set>,
    mut audit: Vec<Audit>,
    record: bool,
) -> Result<Step, Violation> {
    let by = decision.by.as_str();
    let reason = decision.reason.as_str();
    if record {
        let verdict = if decision.approved { "approved" } else { "rejected" };
        audit.push((
            Some(by.to_owned()),
            "request.decided",
            format!("{verdict} ({}): {reason}", decision.path),
        ));
        set.push(Set::Decision(decision.clone()));
    }
    if !decision.approved {
        let to = next(r.state, Event::Reject)?;
        return Ok(Step {
            from: r.state,
            entry: transition(r.state, to, by, reason.to_owned()),
            set,
            limits: None,
            audit,
            effects: vec![
                Effect::Release("rejected".into()).by(by),
                Effect::CloseCase(format!("Rejected by {by}: {reason}")).by(by),
            ],
        });
    }
    let event = if r.state == RequestState::New {
        Event::AutoApprove
    } else {
        Event::Approve
    };
    let applied = match facts {
        None => Err("the business unit no longer exists".to_owned()),
        Some(f) => reapply(&r.change, current, f)
            .map_err(|v| v.to_string())
            .and_then(|after| room.check(current, after).map(|()| after).map_err(|v| v.to_string())),
    };
    Ok(match (applied, next(r.state, event)) {
        (Ok(after), Ok(to)) => {
            let how = match decision.path {
                ApprovalPath::Automatic => "Approved automatically".to_owned(),
                ApprovalPath::Review => format!("Approved by {by}"),
            };
            Step {
                from: r.state,
                entry: transition(r.state, to, by, format!("{reason}; applied: {current} -> {after}")),
                set,
                limits: Some(after),
                audit,
                effects: vec![Effect::CloseCase(format!("{how} and applied: {current} -> {after}. {reason}")).by(by)],
            }
        }
        (Err(why), _) | (_, Err(Violation { message: why, .. })) => failed(r, set, audit, &why),
    })
}

/// An approved change that cannot be applied: the request fails, its reservation is
/// released and its case closed, saying why.
fn failed(r: &Request, mut set: Vec<Set>, audit: Vec<Audit>, why: &str) -> Step {
    set.push(Set::FailureReason(why.to_owned()));
    Step {
        from: r.state,
        entry: transition(
            r.state,
            RequestState::Failed,
            SYSTEM,
            format!("approved but cannot be applied: {why}"),
        ),
        set,
        limits: None,
        audit,
        effects: vec![
            Effect::Release("the change could not be applied".into()).by(SYSTEM),
            Effect::CloseCase(format!("Failed: approved but cannot be applied: {why}")).by(SYSTEM),
        ],
    }
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

#[cfg(test)]
mod tests {
    use sspm_rules::{RequestedTargets, validate_change};

    use super::*;
    use crate::entities::effect;

    /// No pool or cluster sized.
    static UNBOUNDED: Room = Room { levels: Vec::new() };
    use crate::outbox::Effect;

    const PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: true,
    };

    const WITHOUT_PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: false,
    };

    fn limits(c: i64, o: i64, a: i64) -> PortLimits {
        PortLimits::parse(c, o, a, "").unwrap()
    }

    /// A request for concurrent 100 -> `target` from 100/50/50, in `state`.
    fn request(state: RequestState, target: i64) -> Request {
        let requested = RequestedTargets {
            concurrent: Some(target),
            outbound: None,
            agentless: None,
        };
        Request {
            id: "r-1".into(),
            business_unit_id: "bu-1".into(),
            cluster: "C1".into(),
            requester: "alice".into(),
            state,
            path: None,
            // Validated without Personal Connection: any targets; R2 is the apply's to check.
            change: validate_change(limits(100, 50, 50), WITHOUT_PC, &requested, "targets").unwrap(),
            case_number: Some("00001000".into()),
            decision: None,
            justification: None,
            revert_at: None,
            reverted: false,
        }
    }

    fn decision(approved: bool) -> Decision {
        Decision {
            by: "nora".into(),
            approved,
            reason: "ok".into(),
            path: ApprovalPath::Review,
            time: 5,
        }
    }

    fn kinds(step: &Step) -> Vec<effect::Kind> {
        step.effects.iter().map(|e| e.kind).collect()
    }

    /// Every input a request can meet, in every state, with and without a decision: a step
    /// is either refused as a lifecycle violation or leaves its state for a state the
    /// lifecycle allows; it closes the case exactly when the request ends, releases the
    /// reservation when it ends without the change, creates an approval task when it goes
    /// to review, and changes limits only when it applies or reverts.
    #[test]
    fn every_step_keeps_the_lifecycle_and_the_outbox_in_step() {
        let fits = Verdict::Fits("fits".into());
        let exceeds = Verdict::Exceeds("exceeds".into());
        let (approve, reject) = (decision(true), decision(false));
        let current = limits(100, 50, 50);
        let mut steps = 0;
        for state in RequestState::ALL {
            for decided in [None, Some(decision(true)), Some(decision(false))] {
                for justified in [false, true] {
                    for temporary in [false, true] {
                        let mut r = request(state, 150);
                        r.decision = decided.clone();
                        r.justification = justified.then(|| "busy season".to_owned());
                        r.revert_at = temporary.then_some(99);
                        let inputs = [
                            Input::Started {
                                case: "00001000",
                                verdict: &fits,
                                facts: Some(PC),
                                current,
                                room: &UNBOUNDED,
                            },
                            Input::Started {
                                case: "00001000",
                                verdict: &exceeds,
                                facts: Some(PC),
                                current,
                                room: &UNBOUNDED,
                            },
                            Input::Decided {
                                decision: &approve,
                                facts: Some(PC),
                                current,
                                room: &UNBOUNDED,
                            },
                            Input::Decided {
                                decision: &reject,
                                facts: Some(PC),
                                current,
                                room: &UNBOUNDED,
                            },
                            Input::Resume {
                                facts: Some(PC),
                                current,
                                room: &UNBOUNDED,
                            },
                            Input::Cancel {
                                by: "alice",
                                reason: None,
                            },
                            Input::ProvideInformation {
                                by: "alice",
                                justification: "busy season",
                            },
                            Input::Revert { facts: PC, current },
                        ];
                        for input in inputs {
                            let Ok(step) = next_step(&r, input, 10) else {
                                continue;
                            };
                            steps += 1;
                            let to = step.to();
                            assert_eq!(step.from, state, "{input:?}");
                            assert!(
                                state.is_open() || step.entry.kind == HistoryKind::Reverted,
                                "{state} moved: {input:?}"
                            );
                            let ends = state.is_open() && to.is_terminal();
                            let closes = kinds(&step).iter().filter(|k| **k == effect::Kind::CloseCase).count();
                            assert_eq!(closes, usize::from(ends), "{state} -> {to}: {:?}", kinds(&step));
                            if ends {
                                assert_eq!(kinds(&step).last(), Some(&effect::Kind::CloseCase));
                            }
                            let releases = kinds(&step).contains(&effect::Kind::Release);
                            assert_eq!(releases, ends && to != RequestState::Approved, "{state} -> {to}");
                            assert_eq!(
                                kinds(&step).contains(&effect::Kind::SubmitReview),
                                to == RequestState::UnderReview && state != to,
                                "{state} -> {to}"
                            );
                            assert_eq!(
                                step.limits.is_some(),
                                (ends && to == RequestState::Approved) || step.entry.kind == HistoryKind::Reverted,
                                "{state} -> {to}"
                            );
                        }
                    }
                }
            }
        }
        assert!(steps > 30, "only {steps} steps taken");
    }

    #[test]
    fn an_increase_that_fits_is_linked_decided_and_applied_in_one_step() {
        let mut r = request(RequestState::New, 150);
        r.case_number = None;
        let verdict = Verdict::Fits("fits the daily limit".into());
        let input = Input::Started {
            case: "00001000",
            verdict: &verdict,
            facts: Some(PC),
            current: limits(100, 50, 50),
            room: &UNBOUNDED,
        };
        let step = next_step(&r, input, 7).unwrap();
        assert_eq!(step.to(), RequestState::Approved);
        assert_eq!(step.limits, Some(limits(150, 50, 50)));
        assert_eq!(step.set[0], Set::CaseNumber("00001000".into()));
        assert!(
            matches!(&step.set[1], Set::Decision(d) if d.approved && d.by == SYSTEM && d.path == ApprovalPath::Automatic && d.time == 7)
        );
        let actions: Vec<_> = step.audit.iter().map(|a| a.1).collect();
        assert_eq!(actions, ["request.case_linked", "request.decided"]);
        assert_eq!(
            Effect::decode(step.effects[0].kind, &step.effects[0].argument),
            Some(Effect::CloseCase(format!(
                "Approved automatically and applied: {} -> {}. fits the daily limit",
                limits(100, 50, 50),
                limits(150, 50, 50)
            )))
        );
    }

    #[test]
    fn the_limits_as_they_are_decide_whether_an_approval_applies() {
        let r = request(RequestState::UnderReview, 150);
        let approve = decision(true);
        let decided = |facts, current| {
            next_step(
                &r,
                Input::Decided {
                    decision: &approve,
                    facts,
                    current,
                    room: &UNBOUNDED,
                },
                7,
            )
            .unwrap()
        };
        // Outbound and agentless lowered since: the change applies to them as they are.
        let step = decided(Some(PC), limits(100, 30, 30));
        assert_eq!(step.to(), RequestState::Approved);
        assert_eq!(step.entry.actor, "nora");
        assert_eq!(step.limits, Some(limits(150, 30, 30)));
        // Concurrent moved since (R3), or the business unit is gone: the request fails.
        for (facts, current, why) in [
            (Some(PC), limits(120, 50, 50), "moved from 100 to 120"),
            (None, limits(100, 50, 50), "the business unit no longer exists"),
        ] {
            let step = decided(facts, current);
            assert_eq!(step.to(), RequestState::Failed);
            assert_eq!(step.entry.actor, SYSTEM);
            assert_eq!(step.limits, None);
            assert!(
                step.set
                    .iter()
                    .any(|s| matches!(s, Set::FailureReason(f) if f.contains(why))),
                "{:?}",
                step.set
            );
            assert!(step.set.iter().any(|s| matches!(s, Set::Decision(d) if d.by == "nora")));
            assert_eq!(kinds(&step), [effect::Kind::Release, effect::Kind::CloseCase]);
        }
    }

    #[test]
    fn an_approval_past_the_pool_or_the_cluster_fails_the_request_saying_which() {
        use crate::capacity::LevelState;
        use crate::entities::capacity::Level;
        use sspm_rules::capacity::Ports;
        let r = request(RequestState::UnderReview, 150);
        let approve = decision(true);
        let level = |level, name: &str, size: u32, allocated: u32| LevelState {
            level,
            name: name.into(),
            size: Some(Ports {
                concurrent: size,
                outbound: size,
                agentless: size,
            }),
            allocated: Ports {
                concurrent: allocated,
                outbound: 50,
                agentless: 50,
            },
        };
        for (room, why) in [
            (
                Room {
                    levels: vec![level(Level::Pool, "bu-classics", 520, 500)],
                },
                "R12: targets.concurrent: partner pool bu-classics has 20 concurrent ports left (500 of 520 allocated); this change needs 50",
            ),
            (
                Room {
                    levels: vec![
                        level(Level::Cluster, "C14", 1_000, 990),
                        level(Level::Pool, "bu-classics", 0, 0),
                    ],
                },
                "R13: targets.concurrent: cluster C14 has 10 concurrent ports left",
            ),
        ] {
            let input = Input::Decided {
                decision: &approve,
                facts: Some(PC),
                current: limits(100, 50, 50),
                room: &room,
            };
            let step = next_step(&r, input, 7).unwrap();
            assert_eq!(step.to(), RequestState::Failed);
            assert_eq!(step.limits, None);
            assert!(
                step.set
                    .iter()
                    .any(|s| matches!(s, Set::FailureReason(f) if f.contains(why))),
                "{:?}",
                step.set
            );
        }
        // Exactly to the edge applies.
        let room = Room {
            levels: vec![level(Level::Pool, "bu-classics", 550, 500)],
        };
        let input = Input::Decided {
            decision: &approve,
            facts: Some(PC),
            current: limits(100, 50, 50),
            room: &room,
        };
        assert_eq!(next_step(&r, input, 7).unwrap().limits, Some(limits(150, 50, 50)));
    }

    #[test]
    fn a_second_decision_and_a_late_command_are_refused() {
        let mut r = request(RequestState::UnderReview, 150);
        r.decision = Some(decision(true));
        let reject = decision(false);
        let input = Input::Decided {
            decision: &reject,
            facts: Some(PC),
            current: limits(100, 50, 50),
            room: &UNBOUNDED,
        };
        assert_eq!(next_step(&r, input, 7).unwrap_err().rule, Rule::Lifecycle);
        let done = request(RequestState::Approved, 150);
        let err = next_step(
            &done,
            Input::Cancel {
                by: "alice",
                reason: None,
            },
            7,
        )
        .unwrap_err();
        assert!(err.message.contains("final state"), "{}", err.message);
    }

    #[test]
    fn cancelling_under_review_withdraws_the_task() {
        let r = request(RequestState::UnderReview, 150);
        let step = next_step(
            &r,
            Input::Cancel {
                by: "alice",
                reason: Some("not needed"),
            },
            7,
        )
        .unwrap();
        assert_eq!(step.to(), RequestState::Cancelled);
        assert_eq!(
            kinds(&step),
            [
                effect::Kind::Release,
                effect::Kind::WithdrawReview,
                effect::Kind::CloseCase
            ]
        );
        assert_eq!(step.entry.reason, "cancelled: not needed");
    }

    #[test]
    fn a_revert_takes_back_only_what_the_request_added() {
        let mut r = request(RequestState::Approved, 150);
        r.revert_at = Some(5);
        // Someone else's +10 since: the revert leaves it.
        let step = next_step(
            &r,
            Input::Revert {
                facts: PC,
                current: limits(160, 50, 50),
            },
            7,
        )
        .unwrap();
        assert_eq!(step.limits, Some(limits(110, 50, 50)));
        assert_eq!(step.set, [Set::Reverted(limits(110, 50, 50))]);
        r.reverted = true;
        assert!(
            next_step(
                &r,
                Input::Revert {
                    facts: PC,
                    current: limits(110, 50, 50)
                },
                8
            )
            .is_err()
        );
    }
}
