//! Port limits (R1): a number of ports is 0..=9,999 and cannot be anything else.

use std::fmt;

use crate::violation::{Rule, Violation};

/// The three kinds of port limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortKind {
    /// Simultaneous voice connections.
    Concurrent,
    /// Ports for outbound dialing (Personal Connection).
    Outbound,
    /// Ports for agentless campaigns (Personal Connection).
    Agentless,
}

impl PortKind {
    /// All kinds, concurrent first.
    pub const ALL: [PortKind; 3] = [PortKind::Concurrent, PortKind::Outbound, PortKind::Agentless];

    /// The proto field name of this kind (`concurrent`, …).
    pub fn field_name(self) -> &'static str {
        match self {
            PortKind::Concurrent => "concurrent",
            PortKind::Outbound => "outbound",
            PortKind::Agentless => "agentless",
        }
    }
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field_name())
    }
}

/// A number of ports, 0..=9,999 (R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortLimit(u16);

impl PortLimit {
    /// The most ports a business unit may hold (R1).
    pub const MAX: u16 = 9_999;
    /// No ports.
    pub const ZERO: PortLimit = PortLimit(0);

    /// Validates a raw number (any integer a caller could send) against R1; `field` names
    /// the offending field in the violation.
    pub fn parse(raw: i64, field: &str) -> Result<Self, Violation> {
        if raw < 0 {
            Err(Violation::new(
                Rule::R1PortRange,
                field,
                format!("{raw} is negative; port limits are 0 to {}", Self::MAX),
            ))
        } else if raw > i64::from(Self::MAX) {
            Err(Violation::new(
                Rule::R1PortRange,
                field,
                format!("{raw} exceeds the maximum of {} ports", Self::MAX),
            ))
        } else {
            Ok(Self(raw as u16))
        }
    }

    /// A limit from a value already known to be in range; `None` otherwise.
    pub fn new(value: u16) -> Option<Self> {
        (value <= Self::MAX).then_some(Self(value))
    }

    /// The number of ports.
    pub fn get(self) -> u16 {
        self.0
    }

    /// This limit lowered by `by`, not below zero.
    pub fn saturating_sub(self, by: u16) -> Self {
        Self(self.0.saturating_sub(by))
    }
}

impl fmt::Display for PortLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The three limits of a business unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortLimits {
    /// Concurrent ports.
    pub concurrent: PortLimit,
    /// Outbound ports.
    pub outbound: PortLimit,
    /// Agentless ports.
    pub agentless: PortLimit,
}

impl PortLimits {
    /// Validates three raw numbers (R1); field names are `prefix.concurrent` etc.
    pub fn parse(concurrent: i64, outbound: i64, agentless: i64, prefix: &str) -> Result<Self, crate::Violations> {
        let mut c = crate::violation::Collector::default();
        let mut get = |raw, kind: PortKind| {
            PortLimit::parse(raw, &join(prefix, kind.field_name()))
                .map_err(|v| c.push(v))
                .unwrap_or_default()
        };
        let limits = Self {
            concurrent: get(concurrent, PortKind::Concurrent),
            outbound: get(outbound, PortKind::Outbound),
            agentless: get(agentless, PortKind::Agentless),
        };
        c.finish().map(|()| limits)
    }

    /// The limit of one kind.
    pub fn get(&self, kind: PortKind) -> PortLimit {
        match kind {
            PortKind::Concurrent => self.concurrent,
            PortKind::Outbound => self.outbound,
            PortKind::Agentless => self.agentless,
        }
    }

    /// These limits with one kind replaced.
    pub fn with(mut self, kind: PortKind, value: PortLimit) -> Self {
        match kind {
            PortKind::Concurrent => self.concurrent = value,
            PortKind::Outbound => self.outbound = value,
            PortKind::Agentless => self.agentless = value,
        }
        self
    }

    /// R2 for a business unit with Personal Connection: the kinds that exceed concurrent.
    pub fn personal_connection_excess(&self) -> impl Iterator<Item = PortKind> + '_ {
        [PortKind::Outbound, PortKind::Agentless]
            .into_iter()
            .filter(|k| self.get(*k) > self.concurrent)
    }
}

impl fmt::Display for PortLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "concurrent {}, outbound {}, agentless {}",
            self.concurrent, self.outbound, self.agentless
        )
    }
}

pub(crate) fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r1_bounds_are_zero_and_9999() {
        assert_eq!(PortLimit::parse(0, "f").unwrap().get(), 0);
        assert_eq!(PortLimit::parse(9_999, "f").unwrap().get(), 9_999);
        let over = PortLimit::parse(10_000, "targets.concurrent").unwrap_err();
        assert_eq!(over.rule, Rule::R1PortRange);
        assert_eq!(over.field, "targets.concurrent");
        assert!(over.message.contains("9999"));
        assert_eq!(PortLimit::parse(-1, "f").unwrap_err().rule, Rule::R1PortRange);
        assert!(PortLimit::parse(i64::MAX, "f").is_err());
        assert!(PortLimit::parse(i64::MIN, "f").is_err());
        assert!(PortLimit::new(10_000).is_none());
    }

    #[test]
    fn parse_reports_every_bad_field() {
        let err = PortLimits::parse(10_000, -1, 5, "limits").unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["limits.concurrent", "limits.outbound"]);
    }
}
