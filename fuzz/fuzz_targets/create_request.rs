//! A `CreatePortChangeRequestRequest` as bytes off the wire, taken through the conversion
//! the request service makes (protobuf decoding, ids, texts, targets, the revert time) and
//! through every rule, against limits and business-unit facts also taken from the input.
//! Nothing may panic, every refusal is a bounded message, and whatever passes keeps the
//! rules: R1 ceilings, R2 with Personal Connection, R9 (something changes), R11, and a
//! revert never raising a limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sspm_proto::v1 as pb;
use sspm_rules::{
    BusinessUnitFacts, BusinessUnitId, PortKind, PortLimits, Price, RequestId, RequestedTargets, Text,
    monthly_cost_change, reapply, revert, validate_change, validate_temporary,
};

/// The longest message a refusal may carry (errors never echo a whole input).
const MAX_MESSAGE: usize = 1_000;

fuzz_target!(|data: &[u8]| {
    // The first 7 bytes: the business unit's current limits and flags; the rest: the call.
    if data.len() < 7 {
        return;
    }
    let (head, wire) = data.split_at(7);
    let limit = |i: usize| i64::from(u16::from_le_bytes([head[i], head[i + 1]]) % 10_000);
    let facts = BusinessUnitFacts {
        monitoring_gateway: head[6] & 1 == 1,
        personal_connection: head[6] & 2 == 2,
    };
    let Ok(current) = PortLimits::parse(limit(0), limit(2), limit(4), "limits") else {
        return;
    };
    let Ok(req) = pb::CreatePortChangeRequestRequest::decode(wire) else {
        return;
    };

    for refused in [
        RequestId::parse(&req.request_id).err(),
        BusinessUnitId::parse(&req.business_unit_id).err(),
        Text::parse(&req.justification, "justification").err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(refused.0.len() <= MAX_MESSAGE, "{}", refused.0.len());
    }

    let t = req.targets.unwrap_or_default();
    let requested = RequestedTargets {
        concurrent: t.concurrent.map(i64::from),
        outbound: t.outbound.map(i64::from),
        agentless: t.agentless.map(i64::from),
    };
    let change = match validate_change(current, facts, &requested, "targets") {
        Ok(change) => change,
        Err(v) => {
            assert!(!v.to_string().is_empty());
            assert!(v.to_string().len() <= MAX_MESSAGE * 4, "{}", v.to_string().len());
            return;
        }
    };
    assert!(facts.monitoring_gateway, "R6: accepted without the Monitoring Gateway");
    assert_eq!(change.before, current);
    assert_ne!(change.after, current, "R9: accepted a change that changes nothing");
    for kind in PortKind::ALL {
        let after = change.after.get(kind).get();
        assert!(after <= 9_999, "R1: {kind} {after}");
        match requested.get(kind) {
            Some(target) => assert_eq!(i64::from(after), target, "{kind} is not its target"),
            None => assert_eq!(change.after.get(kind), current.get(kind), "{kind} moved untargeted"),
        }
    }
    if facts.personal_connection {
        let a = change.after;
        assert!(a.outbound <= a.concurrent && a.agentless <= a.concurrent, "R2: {a:?}");
    }
    // Applying what was approved, to the limits it was made from, gives the same result.
    assert_eq!(reapply(&change, current, facts).ok(), Some(change.after));

    let price = Price::new("USD", 12_500_000).expect("a valid price");
    let cost = monthly_cost_change(change.before, change.after, &price);
    let _ = cost.units_and_nanos();

    if let Some(at) = req.revert_at {
        let now = 1_795_000_000;
        if validate_temporary(&change, at.seconds, now).is_ok() {
            assert!(at.seconds > now, "R11: a revert time in the past");
            assert!(change.is_increase_only(), "R11: a temporary decrease");
            let back = revert(&change, change.after, facts);
            for kind in PortKind::ALL {
                assert!(back.get(kind) <= change.after.get(kind), "a revert raised {kind}");
            }
            let r2_held = !facts.personal_connection
                || (current.outbound <= current.concurrent && current.agentless <= current.concurrent);
            if r2_held {
                assert_eq!(back, change.before, "reverting at once restores the limits");
            }
        }
    }
});
