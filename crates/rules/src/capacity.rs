//! The levels above the business unit (docs/ARCHITECTURE.md, "Rules"): a partner's pool of
//! ports (R12), set by its account representative, and a cluster's capacity (R13), set by
//! Network Operations. The limits of the business units drawing on one of them, summed,
//! never exceed its size. Pure arithmetic: the request service sums the limits and holds
//! the lock that makes the check exact.

use std::fmt;

use crate::limits::{PortKind, PortLimits, join};
use crate::violation::{Rule, Violation, Violations};

/// The largest size of a pool or a cluster's capacity, per kind (a thousand business units
/// at 9,999 ports each, and then some).
pub const MAX_SIZE: u32 = 10_000_000;

/// What bounds a sum of business units' limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// A partner's pool (R12): the partner's own business unit and its customers.
    Pool,
    /// A cluster's capacity (R13): every business unit on the cluster.
    Cluster,
}

impl Level {
    /// The rule this level enforces.
    pub fn rule(self) -> Rule {
        match self {
            Level::Pool => Rule::R12PartnerPool,
            Level::Cluster => Rule::R13ClusterCapacity,
        }
    }

    /// How messages name it.
    fn noun(self) -> &'static str {
        match self {
            Level::Pool => "partner pool",
            Level::Cluster => "cluster",
        }
    }

    /// The ErrorInfo metadata key its name goes under.
    pub fn key(self) -> &'static str {
        match self {
            Level::Pool => "pool",
            Level::Cluster => "cluster",
        }
    }
}

/// Ports of each kind, summed over business units (beyond R1's 9,999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ports {
    /// Concurrent ports.
    pub concurrent: u32,
    /// Outbound ports.
    pub outbound: u32,
    /// Agentless ports.
    pub agentless: u32,
}

impl Ports {
    /// One business unit's limits.
    pub fn of(l: PortLimits) -> Self {
        Self {
            concurrent: l.concurrent.get().into(),
            outbound: l.outbound.get().into(),
            agentless: l.agentless.get().into(),
        }
    }

    /// The ports of one kind.
    pub fn get(self, kind: PortKind) -> u32 {
        match kind {
            PortKind::Concurrent => self.concurrent,
            PortKind::Outbound => self.outbound,
            PortKind::Agentless => self.agentless,
        }
    }

    fn map(self, f: impl Fn(PortKind, u32) -> u32) -> Self {
        Self {
            concurrent: f(PortKind::Concurrent, self.concurrent),
            outbound: f(PortKind::Outbound, self.outbound),
            agentless: f(PortKind::Agentless, self.agentless),
        }
    }

    /// What is left of `self` (a size) once `allocated` is taken: zero where it is all taken
    /// (or more, allocated before the size was set).
    pub fn headroom(self, allocated: Ports) -> Ports {
        self.map(|k, size| size.saturating_sub(allocated.get(k)))
    }

    /// `self` (a sum that includes `before`) with one business unit's limits changed from
    /// `before` to `after`.
    pub fn with_change(self, before: PortLimits, after: PortLimits) -> Ports {
        let (b, a) = (Ports::of(before), Ports::of(after));
        self.map(|k, sum| sum.saturating_sub(b.get(k)).saturating_add(a.get(k)))
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "concurrent {}, outbound {}, agentless {}",
            self.concurrent, self.outbound, self.agentless
        )
    }
}

/// A pool's or a cluster's size as a caller sent it, or what is wrong with it (INVALID_ARGUMENT
/// for each field): each kind 0 to [`MAX_SIZE`], and outbound and agentless at most
/// concurrent (as in each business unit with Personal Connection, R2). Fields are named
/// under `prefix` (e.g. `size`).
pub fn validate_size(concurrent: i64, outbound: i64, agentless: i64, prefix: &str) -> Result<Ports, Violations> {
    let mut found = Vec::new();
    let mut one = |kind: PortKind, raw: i64| match u32::try_from(raw) {
        Ok(n) if n <= MAX_SIZE => n,
        _ => {
            found.push(Violation::new(
                Rule::Input,
                join(prefix, kind.field_name()),
                format!("{raw} is out of range: a size is 0 to {MAX_SIZE} ports"),
            ));
            0
        }
    };
    let size = Ports {
        concurrent: one(PortKind::Concurrent, concurrent),
        outbound: one(PortKind::Outbound, outbound),
        agentless: one(PortKind::Agentless, agentless),
    };
    if found.is_empty() {
        for kind in [PortKind::Outbound, PortKind::Agentless] {
            if size.get(kind) > size.concurrent {
                found.push(Violation::new(
                    Rule::Input,
                    join(prefix, kind.field_name()),
                    format!(
                        "{kind} {} exceeds concurrent {}: outbound and agentless are at most concurrent",
                        size.get(kind),
                        size.concurrent
                    ),
                ));
            }
        }
    }
    if found.is_empty() {
        Ok(size)
    } else {
        Err(Violations::new(found))
    }
}

/// A level (`name`, of `size`) with `allocated` ports taken from it, including `before`,
/// the current limits of the business unit that changes to `after`: the sum after the
/// change, or the violation of the level's rule for the first kind that grows past the
/// size. A kind that does not grow always passes, even where the level is over its size
/// (a decrease frees ports, it never needs any).
pub fn check_change(
    level: Level,
    name: &str,
    size: Ports,
    allocated: Ports,
    before: PortLimits,
    after: PortLimits,
) -> Result<Ports, Violation> {
    let sum = allocated.with_change(before, after);
    for kind in PortKind::ALL {
        let grows = after.get(kind) > before.get(kind);
        if grows && sum.get(kind) > size.get(kind) {
            let left = size.headroom(allocated).get(kind);
            let more = u32::from(after.get(kind).get() - before.get(kind).get());
            return Err(Violation::new(
                level.rule(),
                join("targets", kind.field_name()),
                format!(
                    "{} {name} has {left} {kind} ports left ({} of {} allocated); this change needs {more}",
                    level.noun(),
                    allocated.get(kind),
                    size.get(kind),
                ),
            )
            .with(level.key(), name)
            .with("headroom", left.to_string()));
        }
    }
    Ok(sum)
}

/// Whether a level (`name`) can be set to `size` with `allocated` ports already taken from
/// it: never below what is allocated.
pub fn check_resize(level: Level, name: &str, size: Ports, allocated: Ports, prefix: &str) -> Result<(), Violations> {
    let found: Vec<Violation> = PortKind::ALL
        .into_iter()
        .filter(|k| size.get(*k) < allocated.get(*k))
        .map(|kind| {
            Violation::new(
                level.rule(),
                join(prefix, kind.field_name()),
                format!(
                    "{} {name} has {} {kind} ports allocated: it cannot be set to {}",
                    level.noun(),
                    allocated.get(kind),
                    size.get(kind)
                ),
            )
            .with(level.key(), name)
        })
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(Violations::new(found))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::PortLimit;

    fn limits(c: u16, o: u16, a: u16) -> PortLimits {
        PortLimits {
            concurrent: PortLimit::parse(c.into(), "").unwrap(),
            outbound: PortLimit::parse(o.into(), "").unwrap(),
            agentless: PortLimit::parse(a.into(), "").unwrap(),
        }
    }

    fn ports(c: u32, o: u32, a: u32) -> Ports {
        Ports {
            concurrent: c,
            outbound: o,
            agentless: a,
        }
    }

    #[test]
    fn an_increase_past_the_pool_is_refused_naming_the_pool_and_its_headroom() {
        let size = ports(500, 200, 100);
        let allocated = ports(490, 100, 50);
        let err = check_change(
            Level::Pool,
            "classics",
            size,
            allocated,
            limits(100, 40, 20),
            limits(120, 40, 20),
        )
        .unwrap_err();
        assert_eq!(err.rule, Rule::R12PartnerPool);
        assert_eq!(err.field, "targets.concurrent");
        assert!(
            err.message
                .contains("partner pool classics has 10 concurrent ports left"),
            "{err}"
        );
        assert!(err.message.contains("needs 20"), "{err}");
        assert_eq!(
            err.metadata,
            [("pool", "classics".to_owned()), ("headroom", "10".to_owned())]
        );
        // Exactly to the edge fits.
        let sum = check_change(
            Level::Pool,
            "classics",
            size,
            allocated,
            limits(100, 40, 20),
            limits(110, 40, 20),
        );
        assert_eq!(sum, Ok(ports(500, 100, 50)));
    }

    #[test]
    fn sizes_keep_outbound_and_agentless_within_concurrent_and_in_range() {
        assert_eq!(validate_size(10, 10, 0, "pool"), Ok(ports(10, 10, 0)));
        let err = validate_size(10, 11, 12, "pool").unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["pool.outbound", "pool.agentless"]);
        let err = validate_size(-1, 0, i64::from(MAX_SIZE) + 1, "capacity").unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["capacity.concurrent", "capacity.agentless"]);
    }

    #[test]
    fn a_level_is_never_set_below_what_is_allocated() {
        let err = check_resize(Level::Cluster, "C14", ports(99, 50, 50), ports(100, 10, 60), "capacity").unwrap_err();
        let v = err.as_slice();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].rule, v[0].field.as_str()),
            (Rule::R13ClusterCapacity, "capacity.concurrent")
        );
        assert_eq!(v[1].field, "capacity.agentless");
        assert!(
            check_resize(
                Level::Cluster,
                "C14",
                ports(100, 10, 60),
                ports(100, 10, 60),
                "capacity"
            )
            .is_ok()
        );
    }

    prop_compose! {
        fn any_limits()(c in 0u16..=9_999)(c in Just(c), o in 0..=c, a in 0..=c) -> PortLimits {
            limits(c, o, a)
        }
    }

    prop_compose! {
        /// A level's business units (their limits) and a size.
        fn level()(units in prop::collection::vec(any_limits(), 0..8), slack in 0u32..3_000)
            -> (Vec<PortLimits>, Ports) {
            let sum = sum_of(&units);
            // Anywhere from under to over the sum, outbound and agentless within concurrent.
            let c = (sum.concurrent + slack).saturating_sub(1_500);
            (units, ports(c, c.min(sum.outbound + slack / 2), c.min(sum.agentless + slack / 3)))
        }
    }

    fn sum_of(units: &[PortLimits]) -> Ports {
        units
            .iter()
            .fold(Ports::default(), |s, l| s.with_change(PortLimits::default(), *l))
    }

    proptest! {
        /// Changes accepted one after another never take the sum past the size where it
        /// was within it, whatever the changes.
        #[test]
        fn allocation_never_exceeds_a_size_it_was_within(
            (mut units, size) in level(),
            changes in prop::collection::vec((0usize..8, any_limits()), 1..20),
        ) {
            let mut allocated = sum_of(&units);
            let within = |a: Ports| PortKind::ALL.iter().all(|k| a.get(*k) <= size.get(*k));
            let started_within = within(allocated);
            for (i, after) in changes {
                if units.is_empty() { break; }
                let i = i % units.len();
                let before = units[i];
                if let Ok(sum) = check_change(Level::Pool, "p", size, allocated, before, after) {
                    units[i] = after;
                    allocated = sum;
                    prop_assert_eq!(allocated, sum_of(&units));
                    if started_within { prop_assert!(within(allocated), "{allocated} over {size}"); }
                    // No kind that grew is past the size.
                    for k in PortKind::ALL {
                        if after.get(k) > before.get(k) {
                            prop_assert!(allocated.get(k) <= size.get(k));
                        }
                    }
                }
            }
        }

        /// A change that frees ports of every kind (grows none) is always accepted, even
        /// where the level is over its size.
        #[test]
        fn a_decrease_is_always_possible((units, size) in level(), i in 0usize..8, cut in 0u16..=9_999) {
            prop_assume!(!units.is_empty());
            let before = units[i % units.len()];
            let c = before.concurrent.get().min(cut);
            let after = limits(c, before.outbound.get().min(c), before.agentless.get().min(c));
            let allocated = sum_of(&units);
            let sum = check_change(Level::Cluster, "C14", size, allocated, before, after);
            prop_assert_eq!(sum, Ok(allocated.with_change(before, after)));
        }

        /// Outbound and agentless within concurrent at every level: in each business unit
        /// (generated so), so in any sum of them; and a size that breaks it is refused.
        #[test]
        fn outbound_and_agentless_stay_within_concurrent_at_every_level(
            units in prop::collection::vec(any_limits(), 0..8),
            (c, o, a) in (0i64..20_000, 0i64..20_000, 0i64..20_000),
        ) {
            let sum = sum_of(&units);
            prop_assert!(sum.outbound <= sum.concurrent && sum.agentless <= sum.concurrent);
            match validate_size(c, o, a, "pool") {
                Ok(size) => prop_assert!(size.outbound <= size.concurrent && size.agentless <= size.concurrent),
                Err(_) => prop_assert!(o > c || a > c),
            }
        }

        /// Headroom and allocation add up to the size while within it.
        #[test]
        fn headroom_is_what_is_left((units, size) in level()) {
            let allocated = sum_of(&units);
            let left = size.headroom(allocated);
            for k in PortKind::ALL {
                prop_assert_eq!(left.get(k), size.get(k).saturating_sub(allocated.get(k)));
                if allocated.get(k) <= size.get(k) {
                    prop_assert_eq!(left.get(k) + allocated.get(k), size.get(k));
                }
            }
        }
    }
}
