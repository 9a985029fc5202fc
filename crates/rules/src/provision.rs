//! Provisioned limits: what an account representative sets directly, outside the request
//! lifecycle (onboarding a customer who already has ports, a contract change). No daily
//! limit applies (R8 is for self-service increases); R1 and R2 do.

use crate::change::BusinessUnitFacts;
use crate::limits::{PortKind, PortLimits, join};
use crate::violation::{Rule, Violation, Violations};

/// The provisioned limits `concurrent`/`outbound`/`agentless` of a business unit whose
/// limits are `current`, or the rules they break: R1 for each kind; with Personal
/// Connection, R2 (outbound and agentless at most concurrent); without it, outbound and
/// agentless stay as they are (only concurrent ports are in use, R2). Fields are named
/// under `prefix` (e.g. `limits`).
pub fn validate_provisioned(
    current: PortLimits,
    facts: BusinessUnitFacts,
    concurrent: i64,
    outbound: i64,
    agentless: i64,
    prefix: &str,
) -> Result<PortLimits, Violations> {
    let limits = PortLimits::parse(concurrent, outbound, agentless, prefix)?;
    let mut found = Vec::new();
    if facts.personal_connection {
        for kind in limits.personal_connection_excess() {
            found.push(Violation::new(
                Rule::R2PersonalConnection,
                join(prefix, kind.field_name()),
                format!(
                    "{kind} {} exceeds concurrent {}: with Personal Connection it may not",
                    limits.get(kind),
                    limits.concurrent
                ),
            ));
        }
    } else {
        for kind in [PortKind::Outbound, PortKind::Agentless] {
            if limits.get(kind) != current.get(kind) {
                found.push(Violation::new(
                    Rule::R2PersonalConnection,
                    join(prefix, kind.field_name()),
                    format!(
                        "the business unit has no Personal Connection: {kind} ports stay at {}",
                        current.get(kind)
                    ),
                ));
            }
        }
    }
    if found.is_empty() {
        Ok(limits)
    } else {
        Err(Violations::new(found))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: true,
    };
    const NO_PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: false,
    };

    fn limits(c: i64, o: i64, a: i64) -> PortLimits {
        PortLimits::parse(c, o, a, "").unwrap()
    }

    #[test]
    fn onboarding_sets_any_limits_within_r1_and_r2() {
        let zero = PortLimits::default();
        assert_eq!(
            validate_provisioned(zero, PC, 500, 200, 100, "limits"),
            Ok(limits(500, 200, 100))
        );
        assert_eq!(
            validate_provisioned(zero, PC, 9_999, 9_999, 0, "limits"),
            Ok(limits(9_999, 9_999, 0))
        );
        let err = validate_provisioned(zero, PC, 10_000, 0, 0, "limits").unwrap_err();
        assert_eq!(err.first().rule, Rule::R1PortRange);
        assert_eq!(err.first().field, "limits.concurrent");
        let err = validate_provisioned(zero, PC, 100, 101, 102, "limits").unwrap_err();
        assert_eq!(err.as_slice().len(), 2, "{err}");
        assert!(err.as_slice().iter().all(|v| v.rule == Rule::R2PersonalConnection));
    }

    #[test]
    fn without_personal_connection_only_concurrent_moves() {
        let now = limits(100, 20, 10);
        assert_eq!(
            validate_provisioned(now, NO_PC, 500, 20, 10, "limits"),
            Ok(limits(500, 20, 10))
        );
        let err = validate_provisioned(now, NO_PC, 500, 30, 10, "limits").unwrap_err();
        assert_eq!(err.first().field, "limits.outbound");
        // Outbound above concurrent is what it was: not this change's to refuse.
        assert!(validate_provisioned(now, NO_PC, 5, 20, 10, "limits").is_ok());
    }

    proptest! {
        /// Whatever passes keeps R1 and, with Personal Connection, R2; and a decrease of
        /// concurrent that keeps R2 is always possible (nothing else blocks it).
        #[test]
        fn accepted_limits_keep_the_rules(c in -5i64..10_005, o in -5i64..10_005, a in -5i64..10_005, pc: bool) {
            let facts = BusinessUnitFacts { monitoring_gateway: true, personal_connection: pc };
            let current = limits(9_999, 50, 50);
            if let Ok(l) = validate_provisioned(current, facts, c, o, a, "limits") {
                prop_assert!(l.concurrent.get() <= 9_999);
                if pc {
                    prop_assert!(l.outbound <= l.concurrent && l.agentless <= l.concurrent);
                } else {
                    prop_assert_eq!((l.outbound, l.agentless), (current.outbound, current.agentless));
                }
            }
            if (0..=9_999).contains(&c) && c >= 50 {
                prop_assert!(validate_provisioned(current, facts, c, 50, 50, "limits").is_ok());
            }
        }
    }
}
