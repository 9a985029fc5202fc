//! Partner pools (R12) and cluster capacity (R13) against the running services, on both
//! backends: a partner's customers fill the pool and the next increase is refused with the
//! pool's headroom; the pool raised, it goes through; a revert frees headroom; provisioned
//! limits respect pools and capacity; increases racing for the last ports of a pool or of a
//! cluster, through two replicas of the request service, never both win.
// Scenario bodies are plain async fns called by the tests: an unwrap there is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sspm_e2e::{TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;
use sspm_proto::v1::audit_service_client::AuditServiceClient;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

const PERCY: &str = "percy@classics.example";
const MARGUERITE: &str = "marguerite@league.example";
const REP: &str = "rep@sspm.example";
const NETOPS: &str = "netops@sspm.example";
const CLASSICS: &str = "bu-classics";
const LEAGUE: &str = "bu-league";
const MUSKETEERS: &str = "bu-musketeers";
const CLUSTER: &str = "C14";

fn counts(concurrent: i32, outbound: i32, agentless: i32) -> pb::PortCounts {
    pb::PortCounts {
        concurrent,
        outbound,
        agentless,
    }
}

async fn set_pool(s: &TestSystem, concurrent: i32) -> Result<pb::PartnerPool, tonic::Status> {
    s.requests()
        .set_partner_pool(s.authed(
            REP,
            pb::SetPartnerPoolRequest {
                partner_id: CLASSICS.into(),
                size: Some(counts(concurrent, 200, 200)),
                reason: "contract 2026-12".into(),
            },
        ))
        .await
        .map(|r| r.into_inner().pool.unwrap())
}

async fn pool(s: &TestSystem, principal: &str) -> Result<pb::PartnerPool, tonic::Status> {
    s.requests()
        .get_partner_pool(s.authed(
            principal,
            pb::GetPartnerPoolRequest {
                partner_id: CLASSICS.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().pool.unwrap())
}

async fn set_capacity(s: &TestSystem, concurrent: i32) -> Result<pb::ClusterCapacity, tonic::Status> {
    s.requests()
        .set_cluster_capacity(s.authed(
            NETOPS,
            pb::SetClusterCapacityRequest {
                cluster: CLUSTER.into(),
                size: Some(counts(concurrent, 300, 300)),
                reason: "rack C14 as built".into(),
            },
        ))
        .await
        .map(|r| r.into_inner().capacity.unwrap())
}

async fn clear_pool(s: &TestSystem) -> bool {
    s.requests()
        .clear_partner_pool(s.authed(
            REP,
            pb::ClearPartnerPoolRequest {
                partner_id: CLASSICS.into(),
                reason: "contract ended".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cleared
}

/// The account representative provisions the Musketeers with `concurrent` ports.
async fn provision_musketeers(
    s: &TestSystem,
    concurrent: i32,
) -> Result<pb::SetProvisionedLimitsResponse, tonic::Status> {
    s.requests()
        .set_provisioned_limits(s.authed(
            REP,
            pb::SetProvisionedLimitsRequest {
                business_unit_id: MUSKETEERS.into(),
                limits: Some(pb::PortLimits {
                    concurrent,
                    outbound: 0,
                    agentless: 0,
                }),
                reason: "onboarding".into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A request for `concurrent` ports on `bu`, id `id`.
fn change(id: &str, bu: &str, concurrent: i32) -> pb::CreatePortChangeRequestRequest {
    pb::CreatePortChangeRequestRequest {
        request_id: id.into(),
        business_unit_id: bu.into(),
        targets: Some(pb::PortTargets {
            concurrent: Some(concurrent),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ErrorInfo reason and metadata of a refusal.
fn info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    (info.reason.clone(), info.metadata.clone())
}

async fn concurrent_of(s: &TestSystem, bu: &str) -> i32 {
    s.port_limits(PERCY, bu).await.concurrent
}

async fn pools_and_capacity(s: &TestSystem) {
    // The demo: Classics 200, League 100, Musketeers 50, Baskerville 80 concurrent, all on
    // C14 and in Classics' pool of 12,000 (C14 carries 20,000).
    let demo = pool(s, PERCY).await.unwrap();
    assert_eq!(demo.size, Some(counts(12_000, 6_000, 6_000)), "{demo:?}");
    assert_eq!(demo.allocated, Some(counts(430, 100, 80)));
    assert_eq!(demo.headroom, Some(counts(11_570, 5_900, 5_920)));
    let shares: Vec<_> = demo.shares.iter().map(|s| s.business_unit_id.as_str()).collect();
    assert_eq!(shares, ["bu-baskerville", CLASSICS, LEAGUE, MUSKETEERS]);
    assert_eq!(demo.updated_by, "demo");

    // Only account representatives set pools; never below what is allocated.
    let denied = s
        .requests()
        .set_partner_pool(s.authed(
            PERCY,
            pb::SetPartnerPoolRequest {
                partner_id: CLASSICS.into(),
                size: Some(counts(1_000, 0, 0)),
                reason: "more please".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let below = set_pool(s, 400).await.unwrap_err();
    assert_eq!(below.code(), Code::FailedPrecondition, "{below:?}");
    let (reason, meta) = info(&below);
    assert_eq!(reason, "R12_PARTNER_POOL_EXCEEDED");
    assert_eq!(
        (meta["field"].as_str(), meta["pool"].as_str()),
        ("size.concurrent", CLASSICS)
    );
    let bad = s
        .requests()
        .set_partner_pool(s.authed(
            REP,
            pb::SetPartnerPoolRequest {
                partner_id: CLASSICS.into(),
                size: Some(counts(500, 501, 0)),
                reason: "typo".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "outbound above concurrent: {bad:?}");
    assert_eq!(info(&bad).1["field"], "size.outbound");
    let customer = s
        .requests()
        .set_partner_pool(s.authed(
            REP,
            pb::SetPartnerPoolRequest {
                partner_id: LEAGUE.into(),
                size: Some(counts(500, 0, 0)),
                reason: "wrong level".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(customer.code(), Code::InvalidArgument, "{customer:?}");

    let set = set_pool(s, 450).await.unwrap();
    assert_eq!(set.size, Some(counts(450, 200, 200)));
    assert_eq!(set.headroom, Some(counts(20, 100, 120)));
    assert_eq!(set.updated_by, REP);

    // A customer fills the pool to within 5 ports; the next increase is refused naming the
    // pool and its headroom, and nothing of it is written.
    let fits = s.create_concurrent(PERCY, "pool-1", LEAGUE, 115).await.unwrap();
    assert_eq!(fits.outcome(), pb::CreateOutcome::AutoApproved, "{fits:?}");
    let refused = s.create_concurrent(PERCY, "pool-2", MUSKETEERS, 60).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let (reason, meta) = info(&refused);
    assert_eq!(reason, "R12_PARTNER_POOL_EXCEEDED");
    assert_eq!(meta["pool"], CLASSICS);
    assert_eq!(meta["headroom"], "5");
    assert_eq!(meta["field"], "targets.concurrent");
    assert!(refused.message().contains("5 concurrent ports left"), "{refused:?}");
    assert_eq!(concurrent_of(s, MUSKETEERS).await, 50);
    let none = s
        .requests()
        .get_port_change_request(s.authed(
            PERCY,
            pb::GetPortChangeRequestRequest {
                request_id: "pool-2".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    // A dry run says the same, and a decrease always goes through.
    let dry = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                validate_only: true,
                ..change("pool-dry", MUSKETEERS, 60)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(info(&dry).0, "R12_PARTNER_POOL_EXCEEDED");
    let within = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                validate_only: true,
                ..change("pool-dry-2", MUSKETEERS, 55)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within.outcome(), pb::CreateOutcome::AutoApproved);

    // The partner's administrator sees the pool; a customer's user does not.
    let seen = pool(s, PERCY).await.unwrap();
    assert_eq!(seen.allocated, Some(counts(445, 100, 80)));
    assert_eq!(seen.headroom, Some(counts(5, 100, 120)));
    let league = seen.shares.iter().find(|s| s.business_unit_id == LEAGUE).unwrap();
    assert_eq!(league.limits.as_ref().unwrap().concurrent, 115);
    let hidden = pool(s, MARGUERITE).await.unwrap_err();
    assert!(
        matches!(hidden.code(), Code::PermissionDenied | Code::NotFound),
        "{hidden:?}"
    );

    // Provisioned limits respect the pool too.
    let provisioned = provision_musketeers(s, 60).await.unwrap_err();
    assert_eq!(info(&provisioned).0, "R12_PARTNER_POOL_EXCEEDED", "{provisioned:?}");

    // The pool raised, the increase goes through.
    set_pool(s, 460).await.unwrap();
    let now_fits = s.create_concurrent(PERCY, "pool-3", MUSKETEERS, 60).await.unwrap();
    assert_eq!(now_fits.outcome(), pb::CreateOutcome::AutoApproved, "{now_fits:?}");

    // A temporary increase's revert frees the pool's headroom.
    assert!(clear_pool(s).await);
    assert!(!clear_pool(s).await, "a second clear finds none");
    let unbounded = pool(s, PERCY).await.unwrap();
    assert_eq!((unbounded.size, unbounded.headroom), (None, None), "{unbounded:?}");
    set_pool(s, 470).await.unwrap(); // 455 allocated: 15 left
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let temporary = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                revert_at: Some(prost_types::Timestamp {
                    seconds: i64::try_from(secs + 2).unwrap(),
                    nanos: 0,
                }),
                ..change("pool-temp", LEAGUE, 130)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(temporary.outcome(), pb::CreateOutcome::AutoApproved, "{temporary:?}");
    assert_eq!(pool(s, PERCY).await.unwrap().headroom.unwrap().concurrent, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while concurrent_of(s, LEAGUE).await != 115 {
        assert!(tokio::time::Instant::now() < deadline, "the temporary increase reverts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool(s, PERCY).await.unwrap().headroom.unwrap().concurrent, 15);

    // Cluster capacity: Network Operations only; an increase past it is refused even where
    // the pool has room, and an approver cannot approve past it either.
    let denied = s
        .requests()
        .list_cluster_capacities(s.authed(PERCY, pb::ListClusterCapacitiesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let cap = set_capacity(s, 460).await.unwrap(); // 455 allocated on C14: 5 left
    assert_eq!(cap.allocated, Some(counts(455, 100, 80)));
    assert_eq!(cap.headroom, Some(counts(5, 200, 220)));
    assert_eq!(cap.business_units, 4);
    let below = set_capacity(s, 454).await.unwrap_err();
    assert_eq!(info(&below).0, "R13_CLUSTER_CAPACITY_EXCEEDED");
    let refused = s.create_concurrent(PERCY, "cap-1", LEAGUE, 125).await.unwrap_err();
    let (reason, meta) = info(&refused);
    assert_eq!(reason, "R13_CLUSTER_CAPACITY_EXCEEDED", "{refused:?}");
    assert_eq!((meta["cluster"].as_str(), meta["headroom"].as_str()), (CLUSTER, "5"));
    // Past the daily limit (100), within the capacity at creation: to review; then the
    // capacity is taken by another unit and the approval fails the request, saying why.
    set_capacity(s, 1_000).await.unwrap();
    let reviewed = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                justification: "season peak".into(),
                ..change("cap-review", CLASSICS, 300)
            },
        ))
        .await;
    // The pool (470, 455 allocated) refuses +100 at once: clear it for this part.
    assert_eq!(info(&reviewed.unwrap_err()).0, "R12_PARTNER_POOL_EXCEEDED");
    assert!(clear_pool(s).await);
    let reviewed = s
        .requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                justification: "season peak".into(),
                ..change("cap-review-2", CLASSICS, 400)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reviewed.outcome(), pb::CreateOutcome::SentToReview, "{reviewed:?}");
    s.wait_for_state(PERCY, "cap-review-2", pb::PortChangeRequestState::UnderReview)
        .await;
    set_capacity(s, 460).await.unwrap();
    s.decide(NETOPS, "cap-review-2", true, "ok").await;
    let failed = s
        .wait_for_state(PERCY, "cap-review-2", pb::PortChangeRequestState::Failed)
        .await;
    assert!(
        failed.failure_reason.contains("R13") && failed.failure_reason.contains("cluster C14"),
        "{failed:?}"
    );
    assert_eq!(concurrent_of(s, CLASSICS).await, 200);
    // A decrease always goes through, even at full capacity; provisioning past it is refused.
    set_capacity(s, 455).await.unwrap();
    let provisioned = provision_musketeers(s, 61).await.unwrap_err();
    assert_eq!(info(&provisioned).0, "R13_CLUSTER_CAPACITY_EXCEEDED", "{provisioned:?}");
    let down = s.create_concurrent(PERCY, "cap-down", LEAGUE, 100).await.unwrap();
    assert_eq!(down.outcome(), pb::CreateOutcome::AutoApproved, "{down:?}");
    let listed = s
        .requests()
        .list_cluster_capacities(s.authed(NETOPS, pb::ListClusterCapacitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capacities;
    let c14 = listed.iter().find(|c| c.cluster == CLUSTER).unwrap();
    assert_eq!(c14.allocated.as_ref().unwrap().concurrent, 440);
    assert!(
        listed.iter().any(|c| c.cluster == "E39" && c.size.is_none()),
        "{listed:?}"
    );

    // Every size set or cleared is an event, with its subject.
    let events: Vec<_> = s
        .all_events()
        .await
        .into_iter()
        .filter(|e| matches!(e.data, Some(pb::event::Data::CapacityChanged(_))))
        .collect();
    let pools = events
        .iter()
        .filter(|e| e.r#type == "sspm.v1.partner_pool.changed")
        .count();
    let clusters = events
        .iter()
        .filter(|e| e.r#type == "sspm.v1.cluster_capacity.changed" && e.subject == CLUSTER)
        .count();
    // The demo's two, and this scenario's.
    assert_eq!((pools, clusters), (6, 5), "{events:#?}");
    // And audited, with who and why.
    let audit = AuditServiceClient::new(s.channel(ServiceKind::Request))
        .list_audit_events(s.authed(
            REP,
            pb::ListAuditEventsRequest {
                target: CLASSICS.into(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let set: Vec<_> = audit.iter().filter(|e| e.action == "partner_pool.set").collect();
    assert!(
        set.iter().any(|e| e.actor == REP
            && e.detail
                .contains("-> concurrent 450, outbound 200, agentless 200: contract 2026-12")),
        "{audit:#?}"
    );
    assert!(audit.iter().any(|e| e.action == "partner_pool.cleared"), "{audit:#?}");
}
scenario!(
    pools_and_capacity,
    pools_and_capacity_on_sqlite,
    pools_and_capacity_on_postgres
);

/// Two increases for two customers, each through its own replica of the request service,
/// racing for the last 10 ports of the pool, and then of the cluster: exactly one wins.
async fn racing_replicas(s: &mut TestSystem) {
    let second = s.start_replica(ServiceKind::Request).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{second}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let other = PortRequestServiceClient::new(channel);
    set_pool(s, 440).await.unwrap(); // 430 allocated
    for level in ["pool", "cluster"] {
        if level == "cluster" {
            assert!(clear_pool(s).await);
            let allocated = set_capacity(s, 1_000).await.unwrap().allocated.unwrap().concurrent;
            set_capacity(s, allocated + 10).await.unwrap();
        }
        let before = concurrent_of(s, LEAGUE).await + concurrent_of(s, MUSKETEERS).await;
        let league = concurrent_of(s, LEAGUE).await + 10;
        let musketeers = concurrent_of(s, MUSKETEERS).await + 10;
        let (id_a, mut other) = (format!("race-{level}-a"), other.clone());
        let (a, b) = tokio::join!(
            s.create_concurrent(PERCY, &id_a, LEAGUE, league),
            other.create_port_change_request(s.authed(
                PERCY,
                pb::CreatePortChangeRequestRequest {
                    request_id: format!("race-{level}-b"),
                    business_unit_id: MUSKETEERS.into(),
                    targets: Some(pb::PortTargets {
                        concurrent: Some(musketeers),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        );
        let won = |r: Option<pb::CreateOutcome>| r == Some(pb::CreateOutcome::AutoApproved);
        let a_won = won(a.as_ref().ok().map(|r| r.outcome()));
        let b_won = won(b.as_ref().ok().map(|r| r.get_ref().outcome()));
        assert!(a_won ^ b_won, "{level}: exactly one wins: {a:?} {b:?}");
        // The loser was refused, or (having passed the precheck) failed saying why.
        for (outcome, lost) in [
            (a.as_ref().ok().map(|r| r.outcome()), !a_won),
            (b.as_ref().ok().map(|r| r.get_ref().outcome()), !b_won),
        ] {
            if lost && let Some(outcome) = outcome {
                assert_eq!(outcome, pb::CreateOutcome::Failed);
            }
        }
        for (id, r) in [
            (format!("race-{level}-a"), a.map(|_| ())),
            (format!("race-{level}-b"), b.map(|_| ())),
        ] {
            match r {
                Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
                Ok(()) => {
                    let r = s.port_change_request(PERCY, &id).await;
                    assert!(
                        r.state() == pb::PortChangeRequestState::Approved
                            || (r.state() == pb::PortChangeRequestState::Failed
                                && r.failure_reason.contains(if level == "pool" { "R12" } else { "R13" })),
                        "{r:?}"
                    );
                }
            }
        }
        let total = concurrent_of(s, LEAGUE).await + concurrent_of(s, MUSKETEERS).await;
        assert_eq!(total, before + 10, "{level}: one increase of 10 applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_on_sqlite() {
    let mut system = TestSystem::start(sspm_e2e::Backend::Sqlite).await;
    racing_replicas(&mut system).await;
    system.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn racing_replicas_on_postgres() {
    let mut system = TestSystem::start(sspm_e2e::Backend::Postgres).await;
    racing_replicas(&mut system).await;
    system.shutdown().await.expect("clean shutdown");
}
