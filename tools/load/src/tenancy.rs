//! The load tenancy: names shared by `sspm-load seed` and the scenarios, so that a run
//! finds what the seed made without any lookup.

/// The partner every load business unit belongs to (its users' grants cover them all).
pub const PARTNER: &str = "bu-load";
/// The cluster of the review business units; its daily limit is 0, so every increase there
/// goes to human review.
pub const REVIEW_CLUSTER: &str = "LREVIEW";
/// The Network Operations principal of the load tenancy (daily limits, approvals).
pub const NETOPS: &str = "load-netops@load.example";
/// The daily limit the seed sets as the default: the most a cluster may grow a day without
/// review (R8), so that `create` runs approve automatically.
pub const DAILY_LIMIT: i32 = 9999;

/// The `i`-th customer business unit.
pub fn unit(i: usize) -> String {
    format!("bu-load-{i:06}")
}

/// The cluster of the `i`-th customer business unit, out of `clusters`.
pub fn cluster(i: usize, clusters: usize) -> String {
    format!("L{:03}", i % clusters.max(1))
}

/// The `i`-th review business unit.
pub fn review_unit(i: usize) -> String {
    format!("bu-load-review-{i:04}")
}

/// The `i`-th load user (a partner administrator of `PARTNER`).
pub fn user(i: usize) -> String {
    format!("load-{i:03}@load.example")
}

#[cfg(test)]
mod tests {
    use sspm_rules::{BusinessUnitId, ClusterName, PrincipalId};

    use super::*;

    #[test]
    fn names_are_valid_ids() {
        for id in [unit(0), unit(999_999), review_unit(9999), PARTNER.to_owned()] {
            BusinessUnitId::parse(&id).unwrap();
        }
        for c in [cluster(0, 1000), cluster(999, 1000), REVIEW_CLUSTER.to_owned()] {
            ClusterName::parse(&c).unwrap();
        }
        for p in [user(0), user(999), NETOPS.to_owned()] {
            PrincipalId::parse(&p).unwrap();
        }
        assert_ne!(cluster(1, 3), cluster(2, 3));
        assert_eq!(cluster(1, 3), cluster(4, 3));
    }
}
