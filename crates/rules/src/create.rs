//! A create call's fields parsed into a command, and the change it asks of a business unit:
//! the parsing and checking the request service's handler does, apart from protobuf and the
//! network, so that the fuzz target (`fuzz/fuzz_targets/create_request.rs`) runs the very
//! same code on arbitrary input.

use crate::change::{BusinessUnitFacts, RequestedTargets, ValidatedChange, validate_change, validate_temporary};
use crate::ids::{BusinessUnitId, RequestId, Text};
use crate::limits::PortLimits;
use crate::violation::{Rule, Violation, Violations};

/// The latest time a timestamp may name: 9999-12-31T23:59:59Z, as google.protobuf.Timestamp.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The fields of a create call as they come off the wire.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateFields<'a> {
    /// Client-chosen request id.
    pub request_id: &'a str,
    /// The business unit.
    pub business_unit_id: &'a str,
    /// New concurrent limit, if asked.
    pub concurrent: Option<i32>,
    /// New outbound limit, if asked.
    pub outbound: Option<i32>,
    /// New agentless limit, if asked.
    pub agentless: Option<i32>,
    /// Why (empty or blank: none given).
    pub justification: &'a str,
    /// R11: when to revert, as a timestamp's (seconds, nanos).
    pub revert_at: Option<(i64, i32)>,
}

/// A create call, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateCommand {
    /// The request's id.
    pub request_id: RequestId,
    /// Its business unit.
    pub business_unit_id: BusinessUnitId,
    /// The targets as sent.
    pub targets: (Option<i32>, Option<i32>, Option<i32>),
    /// The justification, if one was given.
    pub justification: Option<Text>,
    /// R11: when to revert, Unix microseconds.
    pub revert_at: Option<i64>,
}

/// Parses a create call's fields, in the order the handler answers for them (the first
/// field that is wrong is named).
pub fn parse_create(f: &CreateFields<'_>) -> Result<CreateCommand, Violation> {
    let request_id = RequestId::parse(f.request_id).map_err(|e| e.at("request_id"))?;
    let business_unit_id = BusinessUnitId::parse(f.business_unit_id).map_err(|e| e.at("business_unit_id"))?;
    let justification = if f.justification.trim().is_empty() {
        None
    } else {
        Some(Text::parse(f.justification, "justification").map_err(|e| e.at("justification"))?)
    };
    let revert_at = f
        .revert_at
        .map(|(seconds, nanos)| {
            if !(0..1_000_000_000).contains(&nanos) || !(0..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                return Err(Violation::new(Rule::Input, "revert_at", "not a valid timestamp"));
            }
            Ok(seconds * 1_000_000 + i64::from(nanos) / 1_000)
        })
        .transpose()?;
    Ok(CreateCommand {
        request_id,
        business_unit_id,
        targets: (f.concurrent, f.outbound, f.agentless),
        justification,
        revert_at,
    })
}

impl CreateCommand {
    /// The targets as the rules take them.
    pub fn requested(&self) -> RequestedTargets {
        RequestedTargets {
            concurrent: self.targets.0.map(i64::from),
            outbound: self.targets.1.map(i64::from),
            agentless: self.targets.2.map(i64::from),
        }
    }

    /// The change this command asks of a business unit with limits `current` and `facts`
    /// at `now` (Unix microseconds): R1, R2, R6, R9 and, for a temporary change, R11.
    pub fn change(
        &self,
        current: PortLimits,
        facts: BusinessUnitFacts,
        now: i64,
    ) -> Result<ValidatedChange, Violations> {
        let change = validate_change(current, facts, &self.requested(), "targets")?;
        if let Some(at) = self.revert_at {
            validate_temporary(&change, at.div_euclid(1_000_000), now.div_euclid(1_000_000))?;
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> CreateFields<'static> {
        CreateFields {
            request_id: "req-1",
            business_unit_id: "bu-1",
            concurrent: Some(120),
            justification: "  ",
            ..CreateFields::default()
        }
    }

    #[test]
    fn the_first_wrong_field_is_named() {
        let bad = CreateFields {
            request_id: "",
            business_unit_id: "",
            ..fields()
        };
        assert_eq!(parse_create(&bad).unwrap_err().field, "request_id");
        let bad = CreateFields {
            business_unit_id: "bu 1",
            ..fields()
        };
        assert_eq!(parse_create(&bad).unwrap_err().field, "business_unit_id");
        let bad = CreateFields {
            revert_at: Some((1, -1)),
            ..fields()
        };
        let v = parse_create(&bad).unwrap_err();
        assert_eq!((v.field.as_str(), v.rule), ("revert_at", Rule::Input));
    }

    #[test]
    fn a_blank_justification_is_none_and_times_are_microseconds() {
        let c = parse_create(&CreateFields {
            revert_at: Some((2, 500_000_000)),
            ..fields()
        })
        .unwrap();
        assert_eq!(c.justification, None);
        assert_eq!(c.revert_at, Some(2_500_000));
        assert_eq!(c.requested().concurrent, Some(120));
    }

    #[test]
    fn a_temporary_change_must_revert_later_and_only_raise() {
        let facts = BusinessUnitFacts {
            monitoring_gateway: true,
            personal_connection: false,
        };
        let current = PortLimits::parse(100, 0, 0, "").unwrap();
        let c = parse_create(&CreateFields {
            revert_at: Some((10, 0)),
            ..fields()
        })
        .unwrap();
        assert!(c.change(current, facts, 20_000_000).is_err(), "a revert in the past");
        assert_eq!(c.change(current, facts, 5_000_000).unwrap().after.concurrent.get(), 120);
    }
}
