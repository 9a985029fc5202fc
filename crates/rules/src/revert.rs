//! Temporary changes (R11): undo an applied increase when its time has passed.

use crate::change::{BusinessUnitFacts, ValidatedChange};
use crate::limits::{PortKind, PortLimits};

/// The limits after reverting `change` from the `current` limits: every kind the change
/// raised is lowered by the same delta (never below zero), and with Personal Connection
/// concurrent is kept at least at outbound and agentless, so R1 and R2 still hold. Kinds the
/// change did not touch keep their current value. The result never exceeds `current` in any
/// kind: a revert is a decrease and needs no approval.
pub fn revert(change: &ValidatedChange, current: PortLimits, facts: BusinessUnitFacts) -> PortLimits {
    let mut out = current;
    for kind in PortKind::ALL {
        let delta = change
            .after
            .get(kind)
            .get()
            .saturating_sub(change.before.get(kind).get());
        out = out.with(kind, current.get(kind).saturating_sub(delta));
    }
    if facts.personal_connection {
        let floor = out.outbound.max(out.agentless);
        if out.concurrent < floor {
            // Clamp concurrent up, but never above where it is now: if outbound/agentless
            // exceed even the current concurrent (R2 already broken), lower them too.
            let c = floor.min(current.concurrent);
            out.concurrent = c;
            out.outbound = out.outbound.min(c);
            out.agentless = out.agentless.min(c);
        }
    }
    debug_assert!(PortKind::ALL.iter().all(|k| out.get(*k) <= current.get(*k)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{RequestedTargets, validate_change};
    use crate::limits::PortLimit;

    const PC: BusinessUnitFacts = BusinessUnitFacts {
        monitoring_gateway: true,
        personal_connection: true,
    };

    fn limits(c: u16, o: u16, a: u16) -> PortLimits {
        PortLimits {
            concurrent: PortLimit::new(c).unwrap(),
            outbound: PortLimit::new(o).unwrap(),
            agentless: PortLimit::new(a).unwrap(),
        }
    }

    fn change(before: PortLimits, c: Option<i64>, o: Option<i64>) -> ValidatedChange {
        let t = RequestedTargets {
            concurrent: c,
            outbound: o,
            agentless: None,
        };
        validate_change(before, PC, &t, "targets").unwrap()
    }

    #[test]
    fn revert_undoes_the_delta_when_nothing_moved() {
        let ch = change(limits(100, 50, 50), Some(150), Some(120));
        assert_eq!(revert(&ch, ch.after, PC), limits(100, 50, 50));
    }

    #[test]
    fn revert_reverses_the_delta_not_the_old_value() {
        // +50 concurrent; meanwhile another change added 20 more
        let ch = change(limits(100, 0, 0), Some(150), None);
        assert_eq!(revert(&ch, limits(170, 0, 0), PC), limits(120, 0, 0));
    }

    #[test]
    fn revert_clamps_at_zero() {
        let ch = change(limits(100, 0, 0), Some(150), None);
        // someone lowered concurrent to 30 meanwhile
        assert_eq!(revert(&ch, limits(30, 0, 0), PC), limits(0, 0, 0));
    }

    #[test]
    fn revert_keeps_r2_by_stopping_concurrent_at_outbound() {
        // +100 concurrent; meanwhile outbound was raised to 180 by another request
        let ch = change(limits(100, 50, 50), Some(200), None);
        let out = revert(&ch, limits(200, 180, 50), PC);
        assert_eq!(out, limits(180, 180, 50));
    }
}
