//! Metrics (README, "Metrics"): each service's admin port answers `GET /metrics` in the Prometheus
//! text format, and the numbers move with the calls made: RPC counts, errors by code,
//! latency histograms, requests by state and approval path, today's daily budget and
//! approval tasks.

#![allow(clippy::unwrap_used)]

use sspm_e2e::{Backend, TestSystem, metric as value};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;

const PERCY: &str = "percy@classics.example";
const LEAGUE: &str = "bu-league";
const CLUSTER: &str = "C14";

async fn scenario(s: &TestSystem) {
    let req = s.scrape(ServiceKind::Request).await;
    let appr = s.scrape(ServiceKind::Approval).await;
    let create = [
        ("rpc_service", "sspm.v1.PortRequestService"),
        ("rpc_method", "CreatePortChangeRequest"),
    ];
    let get_limits = [
        ("rpc_service", "sspm.v1.PortRequestService"),
        ("rpc_method", "GetPortLimits"),
    ];
    let approved_auto = [("state", "APPROVED"), ("approval_path", "AUTOMATIC")];
    let pending_info = [("state", "PENDING_INFORMATION")];
    let budget = [("cluster", CLUSTER)];
    assert_eq!(value(&req, "rpc_server_requests_total", &create), 0.0, "{req}");
    assert_eq!(value(&req, "sspm_requests", &approved_auto), 0.0, "{req}");
    // Every state is there from the start, at zero.
    assert!(
        req.contains(r#"sspm_requests{approval_path="NONE",state="UNDER_REVIEW"} 0"#),
        "{req}"
    );

    // One automatic approval (+20 concurrent), one that needs a review, one refused call.
    let auto = s.create_concurrent(PERCY, "m-auto", LEAGUE, 120).await.unwrap();
    assert_eq!(auto.outcome(), pb::CreateOutcome::AutoApproved);
    let big = s.create_concurrent(PERCY, "m-big", "bu-classics", 900).await.unwrap();
    assert_eq!(big.outcome(), pb::CreateOutcome::NeedsInformation);
    let refused = s
        .requests()
        .get_port_limits(s.authed(
            PERCY,
            pb::GetPortLimitsRequest {
                business_unit_id: "not a business unit".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let req2 = s.scrape(ServiceKind::Request).await;
    assert_eq!(value(&req2, "rpc_server_requests_total", &create), 2.0, "{req2}");
    assert_eq!(
        value(
            &req2,
            "rpc_server_errors_total",
            &[get_limits[1], ("rpc_grpc_status_code", "3")]
        ),
        1.0,
        "{req2}"
    );
    assert_eq!(
        value(&req2, "rpc_server_duration_seconds_count", &create),
        2.0,
        "{req2}"
    );
    let under_10s = [create[0], create[1], ("le", "10")];
    assert_eq!(
        value(&req2, "rpc_server_duration_seconds_bucket", &under_10s),
        2.0,
        "{req2}"
    );
    assert!(value(&req2, "rpc_server_duration_seconds_sum", &create) > 0.0, "{req2}");
    assert_eq!(value(&req2, "sspm_requests", &approved_auto), 1.0, "{req2}");
    assert_eq!(value(&req2, "sspm_requests", &pending_info), 1.0, "{req2}");

    // The approval service counted its internal calls and the ports used today.
    let appr2 = s.scrape(ServiceKind::Approval).await;
    let evaluate = [("rpc_method", "EvaluateIncrease")];
    assert!(
        value(&appr2, "rpc_server_requests_total", &evaluate)
            >= value(&appr, "rpc_server_requests_total", &evaluate) + 2.0,
        "{appr2}"
    );
    let used_before = value(&appr, "sspm_daily_budget_used", &budget);
    assert_eq!(
        value(&appr2, "sspm_daily_budget_used", &budget),
        used_before + 20.0,
        "{appr2}"
    );
    let limit = value(&appr2, "sspm_daily_budget_limit", &budget);
    assert_eq!(
        value(&appr2, "sspm_daily_budget_left", &budget),
        limit - used_before - 20.0,
        "{appr2}"
    );

    // The review: a justification makes a pending approval task.
    s.requests()
        .provide_information(s.authed(
            PERCY,
            pb::ProvideInformationRequest {
                request_id: "m-big".into(),
                justification: "Holiday campaign".into(),
            },
        ))
        .await
        .unwrap();
    let appr3 = s.scrape(ServiceKind::Approval).await;
    assert_eq!(
        value(&appr3, "sspm_approval_tasks", &[("state", "PENDING")]),
        1.0,
        "{appr3}"
    );
    let req3 = s.scrape(ServiceKind::Request).await;
    assert_eq!(
        value(
            &req3,
            "sspm_requests",
            &[("state", "UNDER_REVIEW"), ("approval_path", "REVIEW")]
        ),
        1.0,
        "{req3}"
    );

    // The other two services have their own endpoints, with their own RPCs.
    let tick = s.scrape(ServiceKind::Ticketing).await;
    assert!(
        value(&tick, "rpc_server_requests_total", &[("rpc_method", "OpenCase")]) >= 2.0,
        "{tick}"
    );
    let authz = s.scrape(ServiceKind::Authorization).await;
    assert!(
        value(&authz, "rpc_server_requests_total", &[("rpc_method", "Check")]) >= 3.0,
        "{authz}"
    );
    assert_eq!(value(&authz, "rpc_server_requests_total", &create), 0.0, "{authz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_calls_on_sqlite() {
    let s = TestSystem::start(Backend::Sqlite).await;
    scenario(&s).await;
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn metrics_move_with_calls_on_postgres() {
    let s = TestSystem::start(Backend::Postgres).await;
    scenario(&s).await;
    s.shutdown().await.unwrap();
}
