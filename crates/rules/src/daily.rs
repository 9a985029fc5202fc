//! Daily-limit arithmetic (R8): which limits apply to an increase, whether it fits, what is
//! left, and which ledger day a moment belongs to.

/// What a daily limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// Every cluster without its own limit.
    Default,
    /// One cluster; replaces the default for that cluster.
    Cluster,
    /// One business unit; applies in addition to its cluster's (or the default) limit.
    BusinessUnit,
}

/// The daily limits configured for one business unit's increase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyLimitSettings {
    /// The default limit for clusters without their own.
    pub default: u32,
    /// The cluster's own limit, if set.
    pub cluster: Option<u32>,
    /// The business unit's own limit, if set.
    pub business_unit: Option<u32>,
}

impl DailyLimitSettings {
    /// The limits that apply: the cluster's own limit or else the default (both counted
    /// against the cluster's usage), and the business unit's limit if set (counted against
    /// the business unit's usage).
    pub fn applicable(&self) -> Vec<(LimitScope, u32)> {
        let mut out = vec![match self.cluster {
            Some(max) => (LimitScope::Cluster, max),
            None => (LimitScope::Default, self.default),
        }];
        if let Some(max) = self.business_unit {
            out.push((LimitScope::BusinessUnit, max));
        }
        out
    }
}

/// One applicable limit with the day's automatically approved increases under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// What the limit applies to.
    pub scope: LimitScope,
    /// Ports that may be added per day.
    pub max: u32,
    /// Ports already added today by automatic approval.
    pub used: u32,
}

impl Budget {
    /// Ports left today; zero when the limit was lowered below what is already used.
    pub fn remaining(&self) -> u32 {
        self.max.saturating_sub(self.used)
    }

    /// Whether `increase` more ports fit.
    pub fn fits(&self, increase: u32) -> bool {
        u64::from(self.used) + u64::from(increase) <= u64::from(self.max)
    }
}

/// Result of evaluating an increase against every applicable budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// True when the increase fits every budget: approve automatically and reserve it.
    pub fits: bool,
    /// The budgets after the evaluation (with the increase counted when it fits).
    pub budgets: Vec<Budget>,
}

/// Evaluates an increase of concurrent ports against every applicable budget (R8): it fits
/// only if it fits all of them. A zero increase needs no check and always fits.
pub fn evaluate(budgets: &[Budget], increase: u32) -> Evaluation {
    let fits = budgets.iter().all(|b| b.fits(increase));
    let budgets = budgets
        .iter()
        .map(|b| Budget {
            used: if fits { b.used + increase } else { b.used },
            ..*b
        })
        .collect();
    Evaluation { fits, budgets }
}

/// Seconds in a day.
pub const DAY_SECONDS: i64 = 86_400;

/// The ledger day (days since 1970-01-01) of the Unix time `unix_seconds`, with days
/// starting at UTC plus `utc_offset_seconds` (0 for UTC days).
pub fn ledger_day(unix_seconds: i64, utc_offset_seconds: i32) -> i64 {
    (unix_seconds + i64::from(utc_offset_seconds)).div_euclid(DAY_SECONDS)
}

/// The civil date `(year, month, day)` of a day number (days since 1970-01-01), by Howard
/// Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a civil date; `None` for a date that does not exist.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_len = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_len {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Formats a day number as `YYYY-MM-DD`.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day number.
pub fn parse_day(raw: &str) -> Option<i64> {
    let b = raw.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| s.parse::<u32>().ok().filter(|_| s.bytes().all(|c| c.is_ascii_digit()));
    days_from_civil(i64::from(num(&raw[0..4])?), num(&raw[5..7])?, num(&raw[8..10])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_limit_replaces_the_default_and_bu_limit_adds() {
        let s = DailyLimitSettings {
            default: 100,
            cluster: None,
            business_unit: None,
        };
        assert_eq!(s.applicable(), [(LimitScope::Default, 100)]);
        let s = DailyLimitSettings {
            default: 100,
            cluster: Some(300),
            business_unit: Some(50),
        };
        assert_eq!(
            s.applicable(),
            [(LimitScope::Cluster, 300), (LimitScope::BusinessUnit, 50)]
        );
    }

    #[test]
    fn an_increase_fits_exactly_up_to_the_limit() {
        let b = [Budget {
            scope: LimitScope::Cluster,
            max: 100,
            used: 80,
        }];
        let e = evaluate(&b, 20);
        assert!(e.fits);
        assert_eq!(e.budgets[0].used, 100);
        assert_eq!(e.budgets[0].remaining(), 0);
        let e = evaluate(&b, 21);
        assert!(!e.fits);
        assert_eq!(e.budgets[0].used, 80, "nothing is counted when it does not fit");
    }

    #[test]
    fn every_applicable_limit_must_hold() {
        let b = [
            Budget {
                scope: LimitScope::Cluster,
                max: 1000,
                used: 0,
            },
            Budget {
                scope: LimitScope::BusinessUnit,
                max: 10,
                used: 5,
            },
        ];
        assert!(!evaluate(&b, 6).fits);
        assert!(evaluate(&b, 5).fits);
    }

    #[test]
    fn a_zero_limit_admits_only_zero_and_lowered_limits_leave_nothing() {
        let b = [Budget {
            scope: LimitScope::Default,
            max: 0,
            used: 0,
        }];
        assert!(!evaluate(&b, 1).fits);
        assert!(evaluate(&b, 0).fits);
        let lowered = Budget {
            scope: LimitScope::Default,
            max: 10,
            used: 30,
        };
        assert_eq!(lowered.remaining(), 0);
        assert!(!lowered.fits(1));
    }

    #[test]
    fn ledger_days_are_utc_unless_configured() {
        // 2026-11-22T23:30:00Z
        let t = 1_795_390_200;
        assert_eq!(format_day(ledger_day(t, 0)), "2026-11-22");
        assert_eq!(format_day(ledger_day(t, 3600)), "2026-11-23");
        assert_eq!(format_day(ledger_day(t, -24 * 3600)), "2026-11-21");
        assert_eq!(format_day(ledger_day(-1, 0)), "1969-12-31");
    }

    #[test]
    fn dates_round_trip_and_invalid_dates_are_refused() {
        for d in [-719_162, -1, 0, 1, 19_000, 20_514, 2_932_896] {
            assert_eq!(parse_day(&format_day(d)), Some(d), "{d}");
        }
        assert_eq!(parse_day("2024-02-29"), days_from_civil(2024, 2, 29));
        assert!(parse_day("2026-02-29").is_none());
        assert!(parse_day("2026-13-01").is_none());
        assert!(parse_day("2026-1-01").is_none());
        assert!(parse_day("2026-01-+1").is_none());
        assert!(parse_day("yesterday").is_none());
    }
}
