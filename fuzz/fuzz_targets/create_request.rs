//! A `CreatePortChangeRequestRequest` as bytes off the wire, taken through the parsing and
//! checks the request service's handler makes (`sspm_rules::parse_create`: ids, texts,
//! targets, the revert time, then every rule of the change), against limits and
//! business-unit facts also taken from the input. Nothing may panic, every refusal is a bounded message, and whatever passes keeps the
//! rules: R1 ceilings, R2 with Personal Connection, R9 (something changes), R11, and a
//! revert never raising a limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sspm_proto::v1 as pb;
use sspm_rules::{
    BusinessUnitFacts, CreateFields, PortKind, PortLimits, Price, monthly_cost_change, parse_create, reapply, revert,
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

    // The handler's own parsing and checks (`sspm_rules::parse_create`), on the decoded call.
    let t = req.targets.unwrap_or_default();
    let fields = CreateFields {
        request_id: &req.request_id,
        business_unit_id: &req.business_unit_id,
        concurrent: t.concurrent,
        outbound: t.outbound,
        agentless: t.agentless,
        justification: &req.justification,
        revert_at: req.revert_at.as_ref().map(|ts| (ts.seconds, ts.nanos)),
    };
    let command = match parse_create(&fields) {
        Ok(command) => command,
        Err(refused) => {
            assert!(refused.message.len() <= MAX_MESSAGE, "{}", refused.message.len());
            return;
        }
    };
    let requested = command.requested();
    let now_micros = 1_795_000_000_000_000;
    let change = match command.change(current, facts, now_micros) {
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

    if let Some(at) = command.revert_at {
        // Accepted with a revert time: R11 held.
        assert!(at > now_micros, "R11: a revert time in the past");
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
});
