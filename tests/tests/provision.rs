//! Provisioned limits (onboarding): an account representative sets a business unit's limits
//! directly, one at a time or as an import, with R1 and R2 and without the daily limit,
//! never under an open request, recorded with its reason; nobody else may.

// Scenario bodies are plain async fns called by the tests: an unwrap there is an assertion.
#![allow(clippy::unwrap_used)]

use sspm_e2e::{TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_platform::error::reason_of;
use sspm_proto::v1 as pb;
use sspm_proto::v1::audit_service_client::AuditServiceClient;
use tonic::Code;

const REP: &str = "rep@sspm.example";
const PERCY: &str = "percy@classics.example";
const NETOPS: &str = "netops@sspm.example";
/// Personal Connection enabled.
const LEAGUE: &str = "bu-league";
/// Personal Connection disabled (50/0/0 in the demo).
const MUSKETEERS: &str = "bu-musketeers";

fn limits(concurrent: i32, outbound: i32, agentless: i32) -> pb::PortLimits {
    pb::PortLimits {
        concurrent,
        outbound,
        agentless,
    }
}

fn set(bu: &str, l: pb::PortLimits, reason: &str) -> pb::SetProvisionedLimitsRequest {
    pb::SetProvisionedLimitsRequest {
        business_unit_id: bu.into(),
        limits: Some(l),
        reason: reason.into(),
    }
}

async fn provision(
    s: &TestSystem,
    who: &str,
    req: pb::SetProvisionedLimitsRequest,
) -> Result<pb::SetProvisionedLimitsResponse, tonic::Status> {
    s.requests()
        .set_provisioned_limits(s.authed(who, req))
        .await
        .map(tonic::Response::into_inner)
}

async fn daily_used(s: &TestSystem) -> i32 {
    s.approval()
        .get_daily_usage(s.authed(
            NETOPS,
            pb::GetDailyUsageRequest {
                cluster: "C14".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .usage
        .iter()
        .map(|u| u.used)
        .sum()
}

async fn an_account_representative_onboards_a_business_unit(s: &TestSystem) {
    let used = daily_used(s).await;
    // Far above the daily limit of 100 for automatic approval: onboarding is not an increase
    // by self-service, so no daily limit applies and nothing is reserved.
    let done = provision(s, REP, set(LEAGUE, limits(2_500, 2_000, 500), "contract 4711"))
        .await
        .unwrap();
    assert!(done.changed);
    assert_eq!(done.limits_before, Some(limits(100, 40, 20)));
    assert_eq!(done.limits, Some(limits(2_500, 2_000, 500)));
    assert_eq!(s.port_limits(PERCY, LEAGUE).await, limits(2_500, 2_000, 500));
    assert_eq!(daily_used(s).await, used, "nothing reserved");

    // The same again changes nothing and writes nothing.
    let again = provision(s, REP, set(LEAGUE, limits(2_500, 2_000, 500), "contract 4711"))
        .await
        .unwrap();
    assert!(!again.changed);

    // Recorded with its reason and its actor, under the business unit.
    let events = AuditServiceClient::new(s.channel(ServiceKind::Request))
        .list_audit_events(s.authed(
            REP,
            pb::ListAuditEventsRequest {
                target: LEAGUE.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    // (The demo tenancy's own limits were provisioned too, by "demo".)
    let provisioned: Vec<_> = events
        .iter()
        .filter(|e| e.action == "limits.provisioned" && e.actor == REP)
        .collect();
    assert_eq!(provisioned.len(), 1, "once, though asked twice: {events:#?}");
    assert!(
        provisioned[0].detail.contains("contract 4711"),
        "{}",
        provisioned[0].detail
    );

    // A request afterwards starts from the provisioned limits.
    let r = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                request_id: "after-onboarding".into(),
                business_unit_id: LEAGUE.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(2_550),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::CreateOutcome::AutoApproved);
    assert_eq!(r.request.unwrap().limits_before, Some(limits(2_500, 2_000, 500)));
}

async fn provisioning_keeps_the_rules_and_the_staff_line(s: &TestSystem) {
    let before = s.port_limits(PERCY, LEAGUE).await;
    // Only account representatives: a partner administrator with every right on the unit
    // may not, nor Network Operations.
    for who in [PERCY, NETOPS] {
        let err = provision(s, who, set(LEAGUE, limits(500, 0, 0), "mine"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
    }
    // R1, R2 (with Personal Connection), R2 (without: only concurrent moves).
    let err = provision(s, REP, set(LEAGUE, limits(10_000, 0, 0), "big"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err), "R1_PORT_RANGE", "{err:?}");
    let err = provision(s, REP, set(LEAGUE, limits(100, 101, 0), "pc"))
        .await
        .unwrap_err();
    assert!(err.message().contains("outbound"), "{err:?}");
    assert_eq!(reason_of(&err), "R2_PERSONAL_CONNECTION", "{err:?}");
    let err = provision(s, REP, set(MUSKETEERS, limits(500, 10, 0), "no pc"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), "R2_PERSONAL_CONNECTION", "{err:?}");
    assert!(
        provision(s, REP, set(MUSKETEERS, limits(500, 0, 0), "no pc"))
            .await
            .unwrap()
            .changed
    );
    // A reason is required; an unknown business unit is NOT_FOUND; no limits is invalid.
    let err = provision(s, REP, set(LEAGUE, limits(500, 0, 0), "  "))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = provision(s, REP, set("bu-nowhere", limits(500, 0, 0), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut no_limits = set(LEAGUE, limits(0, 0, 0), "x");
    no_limits.limits = None;
    let err = provision(s, REP, no_limits).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Never under an open request: it was computed from the limits the unit has.
    let open = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                request_id: "open-one".into(),
                business_unit_id: LEAGUE.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(before.concurrent + 1_000),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.outcome(), pb::CreateOutcome::NeedsInformation);
    let err = provision(s, REP, set(LEAGUE, limits(700, 0, 0), "during"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("open-one"), "{err:?}");
    assert_eq!(
        s.port_limits(PERCY, LEAGUE).await,
        before,
        "nothing written by any refusal"
    );
}

async fn an_import_answers_each_entry(s: &TestSystem) {
    let entry = |bu: &str, l: pb::PortLimits| pb::ProvisionedLimits {
        business_unit_id: bu.into(),
        limits: Some(l),
    };
    let import = |entries: Vec<pb::ProvisionedLimits>| {
        let mut client = s.requests();
        let req = s.authed(
            REP,
            pb::ImportProvisionedLimitsRequest {
                entries,
                reason: "migration from the old portal".into(),
            },
        );
        async move { client.import_provisioned_limits(req).await }
    };
    let entries = vec![
        entry(LEAGUE, limits(300, 100, 100)),
        entry(MUSKETEERS, limits(60, 1, 0)),
        entry("bu-nowhere", limits(1, 0, 0)),
        entry("bu-classics", limits(200, 50, 50)),
    ];
    let results = import(entries.clone()).await.unwrap().into_inner().results;
    let outcomes: Vec<_> = results
        .iter()
        .map(|r| (r.business_unit_id.as_str(), r.outcome()))
        .collect();
    use pb::ProvisionedLimitsOutcome as O;
    assert_eq!(
        outcomes,
        [
            (LEAGUE, O::Set),
            (MUSKETEERS, O::Refused),
            ("bu-nowhere", O::Refused),
            ("bu-classics", O::Unchanged),
        ]
    );
    assert_eq!(results[1].reason, "R2_PERSONAL_CONNECTION", "{:?}", results[1]);
    assert_eq!(results[1].code, Code::FailedPrecondition as i32, "{:?}", results[1]);
    assert!(
        results[1].message.contains("entries[1].limits.outbound"),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].code, Code::NotFound as i32);
    assert_eq!(s.port_limits(PERCY, LEAGUE).await, limits(300, 100, 100));
    // Safe to repeat: what was set is unchanged now.
    let again = import(entries).await.unwrap().into_inner().results;
    assert_eq!(again[0].outcome(), O::Unchanged);
    // Bounds: empty, too many, a business unit twice.
    for entries in [
        vec![],
        (0..1_001).map(|i| entry(&format!("bu-{i}"), limits(1, 0, 0))).collect(),
        vec![entry(LEAGUE, limits(1, 0, 0)), entry(LEAGUE, limits(2, 0, 0))],
    ] {
        let err = import(entries).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = s
        .requests()
        .import_provisioned_limits(s.authed(
            PERCY,
            pb::ImportProvisionedLimitsRequest {
                entries: vec![entry(LEAGUE, limits(1, 0, 0))],
                reason: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

scenario!(
    an_account_representative_onboards_a_business_unit,
    onboarding_on_sqlite,
    onboarding_on_postgres
);
scenario!(
    provisioning_keeps_the_rules_and_the_staff_line,
    provisioning_rules_on_sqlite,
    provisioning_rules_on_postgres
);
scenario!(an_import_answers_each_entry, import_on_sqlite, import_on_postgres);
