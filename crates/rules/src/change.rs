//! Validation of a requested change against the current limits and the business unit's
//! facts (R1, R2, R4, R6, R9, R11), and re-validation when an approved change is applied (R3).

use crate::limits::{PortKind, PortLimit, PortLimits, join};
use crate::violation::{Collector, Rule, Violation, Violations};

/// What the rules need to know about a business unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusinessUnitFacts {
    /// Monitoring Gateway is enabled (R6).
    pub monitoring_gateway: bool,
    /// Personal Connection is enabled (R2).
    pub personal_connection: bool,
}

/// Raw target values as a caller sent them (any integers, each optional). R4 holds by
/// construction: one set of targets is for one business unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestedTargets {
    /// New concurrent limit.
    pub concurrent: Option<i64>,
    /// New outbound limit.
    pub outbound: Option<i64>,
    /// New agentless limit.
    pub agentless: Option<i64>,
}

impl RequestedTargets {
    /// The raw target of one kind.
    pub fn get(&self, kind: PortKind) -> Option<i64> {
        match kind {
            PortKind::Concurrent => self.concurrent,
            PortKind::Outbound => self.outbound,
            PortKind::Agentless => self.agentless,
        }
    }
}

/// Valid target values: each set kind is a valid [`PortLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    /// New concurrent limit.
    pub concurrent: Option<PortLimit>,
    /// New outbound limit.
    pub outbound: Option<PortLimit>,
    /// New agentless limit.
    pub agentless: Option<PortLimit>,
}

impl Targets {
    /// The target of one kind.
    pub fn get(&self, kind: PortKind) -> Option<PortLimit> {
        match kind {
            PortKind::Concurrent => self.concurrent,
            PortKind::Outbound => self.outbound,
            PortKind::Agentless => self.agentless,
        }
    }

    /// Sets the target of one kind.
    pub fn set(&mut self, kind: PortKind, value: PortLimit) {
        match kind {
            PortKind::Concurrent => self.concurrent = Some(value),
            PortKind::Outbound => self.outbound = Some(value),
            PortKind::Agentless => self.agentless = Some(value),
        }
    }

    /// `limits` with every set target applied.
    pub fn apply_to(&self, limits: PortLimits) -> PortLimits {
        PortKind::ALL
            .into_iter()
            .fold(limits, |acc, kind| match self.get(kind) {
                Some(v) => acc.with(kind, v),
                None => acc,
            })
    }
}

/// A change that passed every rule: what the limits are and what they will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatedChange {
    /// Limits when the change was validated.
    pub before: PortLimits,
    /// The valid targets.
    pub targets: Targets,
    /// Limits once applied.
    pub after: PortLimits,
}

impl ValidatedChange {
    /// Concurrent ports added; 0 for a decrease or no change of concurrent. This is what the
    /// daily limit (R8) counts.
    pub fn concurrent_increase(&self) -> u16 {
        self.after.concurrent.get().saturating_sub(self.before.concurrent.get())
    }

    /// The kinds whose value changes.
    pub fn changed_kinds(&self) -> impl Iterator<Item = PortKind> + '_ {
        PortKind::ALL
            .into_iter()
            .filter(|k| self.before.get(*k) != self.after.get(*k))
    }

    /// True when no kind decreases (every change is an increase).
    pub fn is_increase_only(&self) -> bool {
        PortKind::ALL
            .into_iter()
            .all(|k| self.after.get(k) >= self.before.get(k))
    }

    /// Whether the daily limit must be checked (R8): only increases of concurrent ports.
    pub fn needs_daily_limit_check(&self) -> bool {
        self.concurrent_increase() > 0
    }
}

/// Validates `requested` against the business unit's `current` limits and `facts`. Field
/// paths in violations start with `prefix` (e.g. `targets`).
///
/// Order: R6 first (nothing is available without Monitoring Gateway), then the shape of the
/// request (R9 empty, R1 ranges, R2 kinds that cannot change without Personal Connection),
/// then R9 no-op and the R2 invariants of the resulting limits.
pub fn validate_change(
    current: PortLimits,
    facts: BusinessUnitFacts,
    requested: &RequestedTargets,
    prefix: &str,
) -> Result<ValidatedChange, Violations> {
    if !facts.monitoring_gateway {
        return Err(Violation::new(
            Rule::R6MonitoringGateway,
            "business_unit_id",
            "monitoring gateway is not enabled for this business unit",
        )
        .into());
    }
    if PortKind::ALL.iter().all(|k| requested.get(*k).is_none()) {
        return Err(Violation::new(
            Rule::R9EmptyChange,
            prefix,
            "no target value given; set at least one of concurrent, outbound, agentless",
        )
        .into());
    }

    let mut found = Collector::default();
    let mut targets = Targets::default();
    for kind in PortKind::ALL {
        let Some(raw) = requested.get(kind) else { continue };
        let field = join(prefix, kind.field_name());
        match PortLimit::parse(raw, &field) {
            Ok(v) => {
                if kind != PortKind::Concurrent && !facts.personal_connection && v != current.get(kind) {
                    found.push(Violation::new(
                        Rule::R2PersonalConnection,
                        field,
                        format!(
                            "{kind} ports can only be changed with personal connection enabled; only concurrent ports can change"
                        ),
                    ));
                }
                targets.set(kind, v);
            }
            Err(v) => found.push(v),
        }
    }
    if found.has_invalid_argument() {
        return Err(found.into_violations());
    }

    let after = targets.apply_to(current);
    if after == current {
        found.push(Violation::new(
            Rule::R9EmptyChange,
            prefix,
            format!("every target equals the current value ({current}); nothing would change"),
        ));
        return Err(found.into_violations());
    }
    if facts.personal_connection {
        for kind in after.personal_connection_excess() {
            found.push(r2_excess(kind, after, &targets, prefix));
        }
    }
    found.finish()?;
    Ok(ValidatedChange {
        before: current,
        targets,
        after,
    })
}

fn r2_excess(kind: PortKind, after: PortLimits, targets: &Targets, prefix: &str) -> Violation {
    // Blame the field the caller set: the excess kind if it was set, else concurrent (a
    // decrease of concurrent blocked by the existing outbound/agentless limit).
    let blamed = if targets.get(kind).is_some() {
        kind
    } else {
        PortKind::Concurrent
    };
    Violation::new(
        Rule::R2PersonalConnection,
        join(prefix, blamed.field_name()),
        format!(
            "with personal connection, {kind} ports ({}) may not exceed concurrent ports ({})",
            after.get(kind),
            after.concurrent
        ),
    )
}

/// Re-validates an approved change against the limits as they are now (R3: the change is
/// applied whole or not at all). Fails when a kind the change sets has moved since the
/// request was made, or when the result would break R2 with the current facts.
pub fn reapply(
    change: &ValidatedChange,
    current: PortLimits,
    facts: BusinessUnitFacts,
) -> Result<PortLimits, Violations> {
    if !facts.monitoring_gateway {
        return Err(Violation::new(
            Rule::R6MonitoringGateway,
            "business_unit_id",
            "monitoring gateway is no longer enabled for this business unit",
        )
        .into());
    }
    let mut found = Collector::default();
    for kind in PortKind::ALL {
        if change.targets.get(kind).is_some() && current.get(kind) != change.before.get(kind) {
            found.push(Violation::new(
                Rule::R3Atomic,
                join("targets", kind.field_name()),
                format!(
                    "{kind} ports moved from {} to {} since the request was made; the change can no longer be applied as approved",
                    change.before.get(kind),
                    current.get(kind)
                ),
            ));
        }
    }
    found.finish()?;
    let mut found = Collector::default();
    let after = change.targets.apply_to(current);
    if facts.personal_connection {
        for kind in after.personal_connection_excess() {
            found.push(r2_excess(kind, after, &change.targets, "targets"));
        }
    } else {
        for kind in [PortKind::Outbound, PortKind::Agentless] {
            if after.get(kind) != current.get(kind) {
                found.push(Violation::new(
                    Rule::R2PersonalConnection,
                    join("targets", kind.field_name()),
                    format!("personal connection was disabled; {kind} ports can no longer change"),
                ));
            }
        }
    }
    found.finish().map(|()| after)
}

/// Longest a temporary change may last (R11), in seconds: 366 days.
pub const MAX_TEMPORARY_SECONDS: i64 = 366 * 86_400;

/// Validates a temporary change (R11): `revert_at` (Unix seconds) lies after `now` and at
/// most [`MAX_TEMPORARY_SECONDS`] ahead, and the change only increases (its revert is then a
/// decrease that needs no approval).
pub fn validate_temporary(change: &ValidatedChange, revert_at: i64, now: i64) -> Result<(), Violations> {
    let mut found = Collector::default();
    if revert_at <= now {
        found.push(Violation::new(
            Rule::R11Temporary,
            "revert_at",
            "revert time must be in the future",
        ));
    } else if revert_at - now > MAX_TEMPORARY_SECONDS {
        found.push(Violation::new(
            Rule::R11Temporary,
            "revert_at",
            "revert time may be at most 366 days ahead",
        ));
    }
    if !change.is_increase_only() {
        found.push(Violation::new(
            Rule::R11Temporary,
            "revert_at",
            "only increases can be temporary; a decrease is permanent",
        ));
    }
    found.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: true,
    };
    const NO_PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: false,
    };

    fn limits(c: u16, o: u16, a: u16) -> PortLimits {
        PortLimits {
            concurrent: PortLimit::new(c).unwrap(),
            outbound: PortLimit::new(o).unwrap(),
            agentless: PortLimit::new(a).unwrap(),
        }
    }

    fn targets(c: Option<i64>, o: Option<i64>, a: Option<i64>) -> RequestedTargets {
        RequestedTargets {
            concurrent: c,
            outbound: o,
            agentless: a,
        }
    }

    fn only(err: &Violations) -> &Violation {
        assert_eq!(err.as_slice().len(), 1, "{err}");
        err.first()
    }

    #[test]
    fn an_increase_within_range_is_accepted() {
        let ch = validate_change(limits(100, 50, 50), PC, &targets(Some(120), None, None), "targets").unwrap();
        assert_eq!(ch.after, limits(120, 50, 50));
        assert_eq!(ch.concurrent_increase(), 20);
        assert!(ch.needs_daily_limit_check());
        assert_eq!(ch.changed_kinds().collect::<Vec<_>>(), [PortKind::Concurrent]);
    }

    #[test]
    fn r1_9999_is_accepted_and_10000_is_not() {
        let ok = validate_change(limits(100, 0, 0), NO_PC, &targets(Some(9_999), None, None), "targets");
        assert_eq!(ok.unwrap().after.concurrent.get(), 9_999);
        let err = validate_change(limits(100, 0, 0), NO_PC, &targets(Some(10_000), None, None), "targets").unwrap_err();
        let v = only(&err);
        assert_eq!((v.rule, v.field.as_str()), (Rule::R1PortRange, "targets.concurrent"));
    }

    #[test]
    fn r1_negative_targets_are_refused_on_every_field() {
        let err = validate_change(limits(100, 50, 50), PC, &targets(Some(-1), Some(-5), None), "targets").unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|v| (v.rule, v.field.as_str())).collect();
        assert_eq!(
            fields,
            [
                (Rule::R1PortRange, "targets.concurrent"),
                (Rule::R1PortRange, "targets.outbound")
            ]
        );
    }

    #[test]
    fn zero_is_a_valid_limit() {
        let ch = validate_change(limits(100, 0, 0), NO_PC, &targets(Some(0), None, None), "targets").unwrap();
        assert_eq!(ch.after.concurrent.get(), 0);
        assert_eq!(ch.concurrent_increase(), 0);
        assert!(!ch.needs_daily_limit_check());
    }

    #[test]
    fn r9_empty_change_is_invalid() {
        let err = validate_change(limits(100, 0, 0), PC, &RequestedTargets::default(), "targets").unwrap_err();
        assert_eq!(only(&err).rule, Rule::R9EmptyChange);
        assert_eq!(only(&err).field, "targets");
    }

    #[test]
    fn r9_targets_equal_to_current_are_invalid() {
        let err = validate_change(
            limits(100, 20, 30),
            PC,
            &targets(Some(100), Some(20), Some(30)),
            "targets",
        )
        .unwrap_err();
        assert_eq!(only(&err).rule, Rule::R9EmptyChange);
        // one kind equal, another different: fine
        let ch = validate_change(limits(100, 20, 30), PC, &targets(Some(100), Some(25), None), "targets").unwrap();
        assert_eq!(ch.after, limits(100, 25, 30));
    }

    #[test]
    fn r2_without_personal_connection_only_concurrent_changes() {
        let err = validate_change(limits(100, 0, 0), NO_PC, &targets(None, Some(10), None), "targets").unwrap_err();
        let v = only(&err);
        assert_eq!(
            (v.rule, v.field.as_str()),
            (Rule::R2PersonalConnection, "targets.outbound")
        );
        // stating the current value of another kind is harmless
        assert!(
            validate_change(
                limits(100, 0, 0),
                NO_PC,
                &targets(Some(110), Some(0), Some(0)),
                "targets"
            )
            .is_ok()
        );
    }

    #[test]
    fn r2_outbound_may_not_exceed_concurrent() {
        let err = validate_change(limits(100, 50, 50), PC, &targets(None, Some(101), None), "targets").unwrap_err();
        let v = only(&err);
        assert_eq!(
            (v.rule, v.field.as_str()),
            (Rule::R2PersonalConnection, "targets.outbound")
        );
        // equal is fine
        assert!(validate_change(limits(100, 50, 50), PC, &targets(None, Some(100), Some(100)), "targets").is_ok());
    }

    #[test]
    fn r2_blocks_a_decrease_of_concurrent_below_outbound() {
        let err = validate_change(limits(100, 80, 10), PC, &targets(Some(70), None, None), "targets").unwrap_err();
        let v = only(&err);
        assert_eq!(
            (v.rule, v.field.as_str()),
            (Rule::R2PersonalConnection, "targets.concurrent")
        );
        assert!(v.message.contains("outbound ports (80)"), "{}", v.message);
        // lowering both together is fine (R3: one atomic change)
        let ch = validate_change(limits(100, 80, 10), PC, &targets(Some(70), Some(70), None), "targets").unwrap();
        assert_eq!(ch.after, limits(70, 70, 10));
    }

    #[test]
    fn r2_is_a_failed_precondition_and_r1_an_invalid_argument() {
        use crate::ViolationClass::*;
        let r2 = validate_change(limits(100, 80, 10), PC, &targets(Some(70), None, None), "targets").unwrap_err();
        assert_eq!(r2.class(), FailedPrecondition);
        let r1 = validate_change(limits(100, 80, 10), PC, &targets(Some(10_000), None, None), "targets").unwrap_err();
        assert_eq!(r1.class(), InvalidArgument);
    }

    #[test]
    fn r6_without_monitoring_gateway_nothing_is_available() {
        let facts = BusinessUnitFacts {
            monitoring_gateway: false,
            personal_connection: true,
        };
        let err = validate_change(limits(100, 0, 0), facts, &targets(Some(120), None, None), "targets").unwrap_err();
        assert_eq!(only(&err).rule, Rule::R6MonitoringGateway);
        assert_eq!(err.class(), crate::ViolationClass::FailedPrecondition);
    }

    #[test]
    fn r3_reapply_fails_when_limits_moved_underneath() {
        let ch = validate_change(limits(100, 50, 50), PC, &targets(Some(200), None, None), "targets").unwrap();
        assert_eq!(reapply(&ch, limits(100, 50, 50), PC).unwrap(), limits(200, 50, 50));
        let err = reapply(&ch, limits(150, 50, 50), PC).unwrap_err();
        assert_eq!(only(&err).rule, Rule::R3Atomic);
        // a kind the change does not set may move, if R2 still holds
        assert_eq!(reapply(&ch, limits(100, 60, 50), PC).unwrap(), limits(200, 60, 50));
    }

    #[test]
    fn r3_reapply_checks_r2_with_the_current_facts() {
        let ch = validate_change(limits(100, 50, 50), PC, &targets(Some(60), None, None), "targets").unwrap();
        // outbound moved to 80 meanwhile: lowering concurrent to 60 would break R2
        let err = reapply(&ch, limits(100, 80, 50), PC).unwrap_err();
        assert_eq!(only(&err).rule, Rule::R2PersonalConnection);
        let ch = validate_change(limits(100, 50, 50), PC, &targets(None, Some(60), None), "targets").unwrap();
        assert_eq!(
            only(&reapply(&ch, limits(100, 50, 50), NO_PC).unwrap_err()).rule,
            Rule::R2PersonalConnection
        );
        let off = BusinessUnitFacts {
            monitoring_gateway: false,
            personal_connection: true,
        };
        assert_eq!(
            only(&reapply(&ch, limits(100, 50, 50), off).unwrap_err()).rule,
            Rule::R6MonitoringGateway
        );
    }

    #[test]
    fn r11_revert_time_must_be_future_and_bounded_and_only_for_increases() {
        let inc = validate_change(limits(100, 0, 0), NO_PC, &targets(Some(150), None, None), "targets").unwrap();
        let now = 1_700_000_000;
        assert!(validate_temporary(&inc, now + 3600, now).is_ok());
        assert!(validate_temporary(&inc, now + MAX_TEMPORARY_SECONDS, now).is_ok());
        let past = validate_temporary(&inc, now, now).unwrap_err();
        assert_eq!(
            (only(&past).rule, only(&past).field.as_str()),
            (Rule::R11Temporary, "revert_at")
        );
        assert!(validate_temporary(&inc, now + MAX_TEMPORARY_SECONDS + 1, now).is_err());
        let dec = validate_change(limits(100, 0, 0), NO_PC, &targets(Some(50), None, None), "targets").unwrap();
        assert_eq!(
            only(&validate_temporary(&dec, now + 3600, now).unwrap_err()).rule,
            Rule::R11Temporary
        );
    }
}
