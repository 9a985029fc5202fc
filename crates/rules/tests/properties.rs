//! Property tests of the invariants the rules guarantee, whatever the input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use proptest::prelude::*;
use sspm_rules::daily::{Budget, LimitScope, evaluate};
use sspm_rules::lifecycle::{Event, RequestState, next};
use sspm_rules::{
    BusinessUnitFacts, PortKind, PortLimit, PortLimits, RequestedTargets, Rule, reapply, revert, validate_change,
};

/// Limits that satisfy R1 and, with Personal Connection, R2.
fn valid_limits(pc: bool) -> impl Strategy<Value = PortLimits> {
    (0u16..=PortLimit::MAX, 0u16..=PortLimit::MAX, 0u16..=PortLimit::MAX).prop_map(move |(c, o, a)| {
        let (o, a) = if pc { (o.min(c), a.min(c)) } else { (o, a) };
        PortLimits {
            concurrent: PortLimit::new(c).unwrap(),
            outbound: PortLimit::new(o).unwrap(),
            agentless: PortLimit::new(a).unwrap(),
        }
    })
}

/// Any raw target a caller could send, biased toward the interesting edges.
fn raw_target() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        Just(None),
        (-20_000i64..=20_000).prop_map(Some),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(9_999),
            Just(10_000),
            Just(i64::MIN),
            Just(i64::MAX)
        ]
        .prop_map(Some),
    ]
}

fn facts() -> impl Strategy<Value = BusinessUnitFacts> {
    (any::<bool>(), any::<bool>()).prop_map(|(mg, pc)| BusinessUnitFacts {
        monitoring_gateway: mg,
        personal_connection: pc,
    })
}

fn holds_r2(l: &PortLimits) -> bool {
    l.outbound <= l.concurrent && l.agentless <= l.concurrent
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// An accepted change never yields limits that break R1/R2, changes something (R9),
    /// sets exactly the requested kinds, and needs Monitoring Gateway (R6).
    #[test]
    fn accepted_changes_keep_r1_r2_and_change_something(
        pc in any::<bool>(),
        mg in any::<bool>(),
        current in any::<bool>().prop_flat_map(valid_limits),
        c in raw_target(), o in raw_target(), a in raw_target(),
    ) {
        let facts = BusinessUnitFacts { monitoring_gateway: mg, personal_connection: pc };
        let current = if pc { PortLimits { outbound: current.outbound.min(current.concurrent), agentless: current.agentless.min(current.concurrent), ..current } } else { current };
        let req = RequestedTargets { concurrent: c, outbound: o, agentless: a };
        match validate_change(current, facts, &req, "targets") {
            Ok(ch) => {
                prop_assert!(mg);
                prop_assert_ne!(ch.after, current);
                prop_assert!(ch.after.concurrent.get() <= PortLimit::MAX);
                if pc { prop_assert!(holds_r2(&ch.after)); }
                else {
                    prop_assert_eq!(ch.after.outbound, current.outbound);
                    prop_assert_eq!(ch.after.agentless, current.agentless);
                }
                for kind in PortKind::ALL {
                    match req.get(kind) {
                        Some(raw) => prop_assert_eq!(i64::from(ch.after.get(kind).get()), raw),
                        None => prop_assert_eq!(ch.after.get(kind), current.get(kind)),
                    }
                }
                // applying at once succeeds and gives the same limits (R3)
                prop_assert_eq!(reapply(&ch, current, facts).unwrap(), ch.after);
            }
            Err(errs) => {
                for v in errs.as_slice() {
                    prop_assert!(!v.message.is_empty());
                    if v.rule != Rule::R6MonitoringGateway && v.rule != Rule::R9EmptyChange {
                        prop_assert!(v.field.starts_with("targets."), "{}", v);
                    }
                }
                if !mg { prop_assert!(errs.breaks(Rule::R6MonitoringGateway)); }
                let out_of_range = [c, o, a].into_iter().flatten().any(|t| !(0..=9_999).contains(&t));
                if mg && out_of_range { prop_assert!(errs.breaks(Rule::R1PortRange)); }
            }
        }
    }

    /// A revert never breaks R1/R2 and never raises any limit, wherever the limits moved.
    #[test]
    fn reverts_keep_r1_r2_and_only_decrease(
        facts in facts(),
        before in any::<bool>().prop_flat_map(valid_limits),
        c in raw_target(), o in raw_target(), a in raw_target(),
        moved in any::<bool>().prop_flat_map(valid_limits),
        use_moved in any::<bool>(),
    ) {
        let facts = BusinessUnitFacts { monitoring_gateway: true, ..facts };
        let fix = |l: PortLimits| if facts.personal_connection { PortLimits { outbound: l.outbound.min(l.concurrent), agentless: l.agentless.min(l.concurrent), ..l } } else { l };
        let before = fix(before);
        let req = RequestedTargets { concurrent: c, outbound: o, agentless: a };
        let Ok(ch) = validate_change(before, facts, &req, "targets") else { return Ok(()) };
        let current = if use_moved { fix(moved) } else { ch.after };
        let out = revert(&ch, current, facts);
        for kind in PortKind::ALL {
            prop_assert!(out.get(kind) <= current.get(kind), "{kind} rose: {current} -> {out}");
        }
        if facts.personal_connection { prop_assert!(holds_r2(&out), "{current} -> {out}"); }
        if !use_moved && ch.is_increase_only() {
            prop_assert_eq!(out, before, "nothing moved: the revert restores the limits before");
        }
    }

    /// No sequence of events leaves a terminal state, and open states are exactly those
    /// from which cancel is legal.
    #[test]
    fn no_transition_leaves_a_terminal_state(events in prop::collection::vec(0usize..Event::ALL.len(), 0..20)) {
        let mut state = RequestState::New;
        let mut terminal_seen = None;
        for i in events {
            let e = Event::ALL[i];
            match next(state, e) {
                Ok(to) => {
                    prop_assert!(terminal_seen.is_none(), "{state} left by {e:?}");
                    prop_assert!(state.is_open());
                    state = to;
                    if to.is_terminal() { terminal_seen = Some(to); }
                }
                Err(v) => prop_assert_eq!(v.rule, Rule::Lifecycle),
            }
            prop_assert_eq!(next(state, Event::Cancel).is_ok(), state.is_open());
        }
    }

    /// The ledger is exact: after any sequence of evaluations, each budget's usage equals
    /// the sum of the increases that fit, and never exceeds its limit.
    #[test]
    fn ledger_never_overruns(
        max_cluster in 0u32..500,
        max_bu in proptest::option::of(0u32..200),
        increases in prop::collection::vec(0u32..300, 0..40),
    ) {
        let mut budgets = vec![Budget { scope: LimitScope::Cluster, max: max_cluster, used: 0 }];
        if let Some(m) = max_bu { budgets.push(Budget { scope: LimitScope::BusinessUnit, max: m, used: 0 }); }
        let mut fitted = 0u32;
        for inc in increases {
            let e = evaluate(&budgets, inc);
            if e.fits { fitted += inc; }
            budgets = e.budgets;
            for b in &budgets {
                prop_assert!(b.used <= b.max);
                prop_assert_eq!(b.used, fitted);
            }
        }
    }
}
