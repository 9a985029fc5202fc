//! The randomized model test (RELIABILITY.md, "The model test"): concurrent clients issue random sequences of
//! operations (create: small, large, temporary, decreasing; provide information; cancel;
//! decide; let time pass so temporary changes revert) against the real services. A monitor
//! samples R5 throughout. At the end an independent check of the stored state:
//!
//! - every business unit's limits equal its initial limits with exactly the approved
//!   changes applied and the reverted ones undone, replayed in the order the service changed
//!   the limits (its audit trail), each step checked against what the model expects;
//! - the day's ledger equals the automatic approvals;
//! - each request has exactly one case, closed because every request ended terminal;
//! - no business unit was ever seen with two open requests.
//!
//! Bounded in time and count; seeded: `SSPM_MODEL_SEED=<n>` replays a run's operations (the
//! seed is printed, and shown with the failure).

#![allow(clippy::unwrap_used)] // scenario bodies: an unwrap is an assertion

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sspm_e2e::{TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;
use sspm_proto::v1::audit_service_client::AuditServiceClient;
use tokio::sync::Mutex;
use tonic::Code;

use pb::PortChangeRequestState as S;

const PERCY: &str = "percy@classics.example";
const NETOPS: &str = "netops@sspm.example";
const REP: &str = "rep@sspm.example";
/// Percy's business units with the Monitoring Gateway, and whether each has Personal
/// Connection (outbound and agentless then never exceed concurrent).
const UNITS: [(&str, bool); 3] = [("bu-classics", true), ("bu-league", true), ("bu-musketeers", false)];
const CLIENTS: usize = 4;
const OPERATIONS: usize = 30;

const OPEN: [S; 3] = [S::New, S::PendingInformation, S::UnderReview];

fn seed() -> u64 {
    std::env::var("SSPM_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

async fn limits(s: &TestSystem, bu: &str) -> pb::PortLimits {
    s.port_limits(PERCY, bu).await
}

async fn requests_in(s: &TestSystem, bu: &str, states: &[S]) -> Vec<pb::PortChangeRequest> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .requests()
            .list_port_change_requests(s.authed(
                PERCY,
                pb::ListPortChangeRequestsRequest {
                    business_unit_id: bu.into(),
                    states: states.iter().map(|s| (*s).into()).collect(),
                    page_size: 500,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.requests);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn pending_tasks(s: &TestSystem) -> Vec<pb::ApprovalTask> {
    s.approval()
        .list_approval_tasks(s.authed(
            NETOPS,
            pb::ListApprovalTasksRequest {
                states: vec![pb::ApprovalTaskState::Pending.into()],
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tasks
}

/// What one client did that the checks need.
#[derive(Debug, Default)]
struct Log {
    acknowledged: Vec<String>,
    refused: usize,
    operations: BTreeMap<&'static str, usize>,
}

/// One client: `OPERATIONS` random operations from its own seeded generator.
async fn client(s: &TestSystem, seed: u64, c: usize, log: &Mutex<Log>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c as u64));
    for i in 0..OPERATIONS {
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..50 => "create",
            50..60 => "provide information",
            60..68 => "cancel",
            68..90 => "decide",
            _ => "let time pass",
        };
        *log.lock().await.operations.entry(op).or_default() += 1;
        match op {
            "create" => {
                let (bu, _) = UNITS[rng.random_range(0..UNITS.len())];
                let now = limits(s, bu).await.concurrent;
                let shape = rng.random_range(0..100);
                let (target, justification, revert_in) = match shape {
                    0..40 => (now + rng.random_range(1..=12), "", None),
                    40..60 => (now + rng.random_range(1..=12), "", Some(rng.random_range(1..=3))),
                    60..80 => (
                        now + rng.random_range(150..=300),
                        if rng.random_bool(0.5) { "a campaign" } else { "" },
                        None,
                    ),
                    _ => ((now - rng.random_range(1..=15)).max(60), "", None),
                };
                let id = format!("m{c}-{i}");
                let revert_at = revert_in.map(|secs: i64| prost_types::Timestamp {
                    seconds: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64
                        + secs,
                    nanos: 0,
                });
                let answer = s
                    .requests()
                    .create_port_change_request(s.authed(
                        PERCY,
                        pb::CreatePortChangeRequestRequest {
                            request_id: id.clone(),
                            business_unit_id: bu.into(),
                            targets: Some(pb::PortTargets {
                                concurrent: Some(target),
                                ..Default::default()
                            }),
                            justification: justification.into(),
                            revert_at,
                            ..Default::default()
                        },
                    ))
                    .await;
                match answer {
                    Ok(_) => log.lock().await.acknowledged.push(id),
                    // R5 (an open request), R9 (another change set the target already), R2 (a
                    // decrease under outbound), R11 (a temporary one made by a decrease): the
                    // rules refusing what a racing client asked for.
                    Err(e)
                        if e.code() == Code::FailedPrecondition
                            || (e.code() == Code::InvalidArgument
                                && (e.message().starts_with("R9:") || e.message().starts_with("R11:"))) =>
                    {
                        log.lock().await.refused += 1;
                    }
                    Err(e) => panic!("seed {seed}: {id}: {e:?}"),
                }
            }
            "provide information" => {
                let (bu, _) = UNITS[rng.random_range(0..UNITS.len())];
                if let Some(r) = requests_in(s, bu, &[S::PendingInformation]).await.first() {
                    let answer = s
                        .requests()
                        .provide_information(s.authed(
                            PERCY,
                            pb::ProvideInformationRequest {
                                request_id: r.request_id.clone(),
                                justification: "the numbers, as asked".into(),
                            },
                        ))
                        .await;
                    // Another client may have moved it on meanwhile.
                    assert!(
                        answer.is_ok() || answer.as_ref().unwrap_err().code() == Code::FailedPrecondition,
                        "seed {seed}: {answer:?}"
                    );
                }
            }
            "cancel" => {
                let (bu, _) = UNITS[rng.random_range(0..UNITS.len())];
                if let Some(r) = requests_in(s, bu, &OPEN).await.first() {
                    let answer = s
                        .requests()
                        .cancel_port_change_request(s.authed(
                            PERCY,
                            pb::CancelPortChangeRequestRequest {
                                request_id: r.request_id.clone(),
                                reason: "changed my mind".into(),
                            },
                        ))
                        .await;
                    assert!(
                        answer.is_ok() || answer.as_ref().unwrap_err().code() == Code::FailedPrecondition,
                        "seed {seed}: {answer:?}"
                    );
                }
            }
            "decide" => {
                let tasks = pending_tasks(s).await;
                if !tasks.is_empty() {
                    let task = &tasks[rng.random_range(0..tasks.len())];
                    let approve = rng.random_bool(0.6);
                    let answer = s
                        .approval()
                        .decide_approval_task(s.authed(
                            NETOPS,
                            pb::DecideApprovalTaskRequest {
                                task_id: task.task_id.clone(),
                                approve,
                                reason: if approve { "fine" } else { "not now" }.into(),
                            },
                        ))
                        .await;
                    assert!(
                        answer.is_ok() || answer.as_ref().unwrap_err().code() == Code::FailedPrecondition,
                        "seed {seed}: {answer:?}"
                    );
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await,
        }
    }
}

/// Ends what is still open: reviews decided (rejected), requests waiting for information
/// cancelled; then waits until every request is terminal, every approved temporary change
/// reverted and every case closed.
async fn wind_down(s: &TestSystem, seed: u64, acknowledged: &[String]) -> Vec<pb::PortChangeRequest> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for t in pending_tasks(s).await {
            let _ = s
                .approval()
                .decide_approval_task(s.authed(
                    NETOPS,
                    pb::DecideApprovalTaskRequest {
                        task_id: t.task_id,
                        approve: false,
                        reason: "the run is over".into(),
                    },
                ))
                .await;
        }
        for (bu, _) in UNITS {
            for r in requests_in(s, bu, &[S::PendingInformation]).await {
                let _ = s
                    .requests()
                    .cancel_port_change_request(s.authed(
                        PERCY,
                        pb::CancelPortChangeRequestRequest {
                            request_id: r.request_id,
                            reason: "the run is over".into(),
                        },
                    ))
                    .await;
            }
        }
        let mut all = Vec::new();
        for (bu, _) in UNITS {
            all.extend(requests_in(s, bu, &[]).await);
        }
        let unsettled: Vec<String> = all
            .iter()
            .filter(|r| {
                OPEN.contains(&r.state())
                    || (r.state() == S::Approved && r.revert.as_ref().is_some_and(|v| v.reverted_time.is_none()))
            })
            .map(|r| format!("{} {:?}", r.request_id, r.state()))
            .collect();
        let mut open_cases = 0;
        // Without Monitoring Gateway a unit has no requests, and its cases cannot be read (R6).
        for (bu, _) in UNITS.iter().filter(|(_, gateway)| *gateway) {
            open_cases += cases_of(s, bu)
                .await
                .iter()
                .filter(|c| c.status() != pb::CaseStatus::Closed)
                .count();
        }
        if unsettled.is_empty() && open_cases == 0 {
            assert_eq!(
                all.len(),
                acknowledged.len(),
                "seed {seed}: requests nobody acknowledged"
            );
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: not settled within 60 s: {unsettled:?}, {open_cases} open cases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cases_of(s: &TestSystem, bu: &str) -> Vec<pb::Case> {
    s.ticketing()
        .list_cases(s.authed(
            PERCY,
            pb::ListCasesRequest {
                business_unit_id: bu.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cases
}

/// `limits` as the audit trail writes them.
fn triple(l: &pb::PortLimits) -> String {
    format!("{}/{}/{}", l.concurrent, l.outbound, l.agentless)
}

/// The model of a revert (docs/ARCHITECTURE.md, "Rules", R11): each kind the change raised goes down by the same
/// delta, not below zero; with Personal Connection concurrent stays at least at outbound and
/// agentless, without rising.
fn model_revert(current: &pb::PortLimits, r: &pb::PortChangeRequest, personal_connection: bool) -> pb::PortLimits {
    let (before, after) = (r.limits_before.unwrap(), r.limits_after.unwrap());
    let down = |now: i32, a: i32, b: i32| (now - (a - b).max(0)).max(0);
    let mut out = pb::PortLimits {
        concurrent: down(current.concurrent, after.concurrent, before.concurrent),
        outbound: down(current.outbound, after.outbound, before.outbound),
        agentless: down(current.agentless, after.agentless, before.agentless),
    };
    if personal_connection {
        let floor = out.outbound.max(out.agentless);
        if out.concurrent < floor {
            let c = floor.min(current.concurrent);
            out.concurrent = c;
            out.outbound = out.outbound.min(c);
            out.agentless = out.agentless.min(c);
        }
    }
    out
}

async fn random_operations_keep_every_rule(s: &TestSystem) {
    let seed = seed();
    eprintln!("model test seed: {seed} (SSPM_MODEL_SEED={seed} replays its operations)");
    let mut initial = HashMap::new();
    for (bu, _) in UNITS {
        initial.insert(bu, limits(s, bu).await);
    }
    let log = Mutex::new(Log::default());
    let stop = AtomicBool::new(false);
    let observations = AtomicUsize::new(0);
    // The clients and the monitor run concurrently on this task (their calls interleave
    // at every await), and the services serve them on the runtime's threads.
    let monitor = async {
        while !stop.load(Ordering::Relaxed) {
            for (bu, _) in UNITS {
                let open = requests_in(s, bu, &OPEN).await;
                assert!(
                    open.len() <= 1,
                    "seed {seed}: R5: {bu} has {} open requests: {open:#?}",
                    open.len()
                );
            }
            observations.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let run = async {
        futures_util::future::join_all((0..CLIENTS).map(|c| client(s, seed, c, &log))).await;
        let acknowledged = log.lock().await.acknowledged.clone();
        let all = wind_down(s, seed, &acknowledged).await;
        stop.store(true, Ordering::Relaxed);
        all
    };
    let ((), all) = tokio::join!(monitor, run);
    let by_id: HashMap<&str, &pb::PortChangeRequest> = all.iter().map(|r| (r.request_id.as_str(), r)).collect();

    // Cases: exactly one per request, with its number, closed (every request is terminal).
    for (bu, _) in UNITS.iter().filter(|(_, gateway)| *gateway) {
        let cases = cases_of(s, bu).await;
        for r in all.iter().filter(|r| r.business_unit_id == *bu) {
            let mine: Vec<_> = cases.iter().filter(|c| c.external_reference == r.request_id).collect();
            assert_eq!(mine.len(), 1, "seed {seed}: {}: cases {mine:#?}", r.request_id);
            assert_eq!(mine[0].case_number, r.case_number, "seed {seed}");
            assert_eq!(
                mine[0].status(),
                pb::CaseStatus::Closed,
                "seed {seed}: {}",
                r.request_id
            );
        }
    }

    // Limits: replay the service's changes, in the order it made them, through the model.
    let mut trail = Vec::new();
    let mut token = String::new();
    loop {
        let page = AuditServiceClient::new(s.channel(ServiceKind::Request))
            .list_audit_events(s.authed(
                REP,
                pb::ListAuditEventsRequest {
                    page_size: 500,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        trail.extend(page.events.into_iter().filter(|e| e.action == "limits.changed"));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    trail.reverse();
    let (mut applied, mut reverted) = (HashMap::new(), HashMap::new());
    for (bu, personal_connection) in UNITS {
        let mut model = initial[bu];
        for e in trail.iter().filter(|e| e.target == bu) {
            let (change, cause) = e.detail.rsplit_once(" (").unwrap();
            let now = change.rsplit_once(" -> ").unwrap().1;
            let cause = cause.trim_end_matches(')');
            if cause.starts_with("provisioned by ") {
                // The demo seed (onboarding), before the run.
                assert_eq!(now, triple(&model), "seed {seed}: {e:?}");
                continue;
            }
            let (how, id) = cause.split_once(" by ").unwrap();
            let r = by_id[id];
            match how {
                "applied" => {
                    assert_eq!(r.state(), S::Approved, "seed {seed}: {id} applied but {:?}", r.state());
                    assert_eq!(
                        triple(&model),
                        triple(&r.limits_before.unwrap()),
                        "seed {seed}: {id} applied to limits other than those it was made from"
                    );
                    model = r.limits_after.unwrap();
                    *applied.entry(id.to_owned()).or_insert(0) += 1;
                }
                "reverted" => {
                    assert!(r.revert.is_some(), "seed {seed}: {id} reverted but not temporary");
                    model = model_revert(&model, r, personal_connection);
                    *reverted.entry(id.to_owned()).or_insert(0) += 1;
                }
                other => panic!("seed {seed}: unknown cause {other:?} in {e:?}"),
            }
            assert_eq!(
                now,
                triple(&model),
                "seed {seed}: the service and the model disagree at {e:?}"
            );
        }
        assert_eq!(
            triple(&limits(s, bu).await),
            triple(&model),
            "seed {seed}: {bu}'s limits are not its initial limits with the approved, not reverted changes"
        );
    }
    for r in &all {
        let id = r.request_id.as_str();
        let approved = r.state() == S::Approved;
        assert_eq!(
            applied.get(id).copied().unwrap_or(0),
            usize::from(approved),
            "seed {seed}: {id} applied"
        );
        let temporary = approved && r.revert.is_some();
        assert_eq!(
            reverted.get(id).copied().unwrap_or(0),
            usize::from(temporary),
            "seed {seed}: {id} reverted"
        );
    }

    // The ledger: exactly the automatic approvals (all made today).
    let automatic: i32 = all
        .iter()
        .filter(|r| r.state() == S::Approved && r.approval_path() == pb::ApprovalPath::Automatic)
        .map(|r| (r.limits_after.unwrap().concurrent - r.limits_before.unwrap().concurrent).max(0))
        .sum();
    let usage = s
        .approval()
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
        .usage;
    for u in usage {
        assert_eq!(u.used, automatic, "seed {seed}: ledger of {:?}", u.limit);
        assert!(u.used <= u.limit.unwrap().max_daily_increase, "seed {seed}: R8");
    }

    let log = log.lock().await;
    let states = all.iter().fold(BTreeMap::<String, usize>::new(), |mut m, r| {
        *m.entry(format!("{:?}", r.state())).or_default() += 1;
        m
    });
    eprintln!(
        "model test seed {seed}: {} operations {:?}; {} requests {states:?}, {} refused by the rules; \
         {} applied, {} reverted; R5 observed {} times; ledger {automatic}",
        CLIENTS * OPERATIONS,
        log.operations,
        all.len(),
        log.refused,
        applied.len(),
        reverted.len(),
        observations.load(Ordering::Relaxed)
    );
}
scenario!(random_operations_keep_every_rule, model_on_sqlite, model_on_postgres);
