//! Hostile and malformed input (RELIABILITY.md, "Hostile callers"): every RPC called with missing, out-of-range,
//! negative and huge values, unknown enum values, oversized strings, forged page tokens;
//! then bytes that are not gRPC at all, sent straight to the port. Each gets a clear status
//! (never INTERNAL or UNKNOWN for the caller's mistake, never a crash), and afterwards every
//! stored thing reads back exactly as before.

#![allow(clippy::unwrap_used)] // scenario bodies: an unwrap is an assertion

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sspm_e2e::{TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_proto::internal::v1 as ipb;
use sspm_proto::v1 as pb;
use tonic::Code;

const PERCY: &str = "percy@classics.example";
const REP: &str = "rep@sspm.example";
const NETOPS: &str = "netops@sspm.example";
/// Percy's business units with the Monitoring Gateway (their limits can be read).
const PERCYS: [&str; 3] = ["bu-classics", "bu-league", "bu-musketeers"];

/// How many bad inputs a run tried (reported at the end, for RELIABILITY.md).
static TRIED: AtomicUsize = AtomicUsize::new(0);

/// One malformed call: it must fail with `code`; and never with INTERNAL or UNKNOWN.
fn refused<T: std::fmt::Debug>(what: &str, answer: Result<tonic::Response<T>, tonic::Status>, code: Code) {
    TRIED.fetch_add(1, Ordering::Relaxed);
    let e = match answer {
        Ok(r) => panic!("{what}: accepted: {:?}", r.into_inner()),
        Err(e) => e,
    };
    assert!(
        !matches!(e.code(), Code::Internal | Code::Unknown),
        "{what}: the caller's mistake answered as a server fault: {e:?}"
    );
    assert_eq!(e.code(), code, "{what}: {e:?}");
    assert!(!e.message().is_empty(), "{what}: no message for the caller");
    assert!(
        e.message().len() + e.details().len() < 2_000,
        "{what}: the status echoes the input back ({} + {} bytes)",
        e.message().len(),
        e.details().len()
    );
}

/// Everything stored, as the partner administrator and staff read it.
async fn snapshot(s: &TestSystem) -> Vec<String> {
    let mut out = Vec::new();
    for bu in PERCYS {
        let limits = s
            .requests()
            .get_port_limits(s.authed(
                PERCY,
                pb::GetPortLimitsRequest {
                    business_unit_id: bu.into(),
                },
            ))
            .await
            .unwrap();
        out.push(format!("{:?}", limits.into_inner()));
        let requests = s
            .requests()
            .list_port_change_requests(s.authed(
                PERCY,
                pb::ListPortChangeRequestsRequest {
                    business_unit_id: bu.into(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        out.push(format!("{:?}", requests.into_inner()));
        let cases = s
            .ticketing()
            .list_cases(s.authed(
                PERCY,
                pb::ListCasesRequest {
                    business_unit_id: bu.into(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            // Without Monitoring Gateway (R6) a unit's cases cannot be read: the refusal is
            // what is observed.
            .map_or_else(|e| format!("{:?}", e.code()), |c| format!("{:?}", c.into_inner()));
        out.push(cases);
    }
    let tasks = s
        .approval()
        .list_approval_tasks(s.authed(
            NETOPS,
            pb::ListApprovalTasksRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    out.push(format!("{:?}", tasks.into_inner()));
    let limits = s
        .approval()
        .list_daily_limits(s.authed(NETOPS, pb::ListDailyLimitsRequest {}))
        .await
        .unwrap();
    out.push(format!("{:?}", limits.into_inner()));
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
        .unwrap();
    out.push(format!("{:?}", usage.into_inner()));
    let units = s
        .authorization()
        .list_visible_business_units(s.authed(
            REP,
            pb::ListVisibleBusinessUnitsRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    out.push(format!("{:?}", units.into_inner()));
    let grants = s
        .authorization()
        .list_permissions(s.authed(
            REP,
            pb::ListPermissionsRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    out.push(format!("{:?}", grants.into_inner()));
    for who in [PERCY, REP, NETOPS] {
        let p = s
            .authorization()
            .get_principal(s.authed(
                REP,
                pb::GetPrincipalRequest {
                    principal_id: who.into(),
                },
            ))
            .await
            .unwrap();
        out.push(format!("{:?}", p.into_inner()));
    }
    out
}

fn concurrent(n: i32) -> Option<pb::PortTargets> {
    Some(pb::PortTargets {
        concurrent: Some(n),
        ..Default::default()
    })
}

/// Page tokens no list RPC issued: garbage, a bad prefix, odd or non-hex digits, bytes that
/// are not UTF-8, and well-formed tokens holding keys of the wrong shape or out of range.
/// `numbered`: the list's tokens hold a number (a row id or an offset); then negative and
/// overflowing numbers too.
fn forged_tokens(numbered: bool) -> Vec<String> {
    let hex = |k: &[u8]| format!("p1.{}", k.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut tokens = vec![
        "garbage".into(),
        "p1.".into(),
        "p1.abc".into(),
        "p1.zz".into(),
        hex(&[0xff, 0xfe]),
        hex(b"no separator"),
        hex(b"99999999999999999999999|x"),
        hex(b"1.5|x"),
        format!("p1.{}", "41".repeat(50_000)),
    ];
    if numbered {
        tokens.extend([hex(b"-1"), hex(b"18446744073709551615"), hex(b"9223372036854775808")]);
    }
    tokens
}

/// Half the largest request message (`server.max_request_bytes`, 1 MiB): a field this long still
/// reaches the handler, which must refuse it naming the field.
const HUGE: usize = 1 << 19;

#[allow(clippy::too_many_lines)] // one block per RPC, in the order of the protos
async fn every_rpc_refuses_malformed_input(s: &TestSystem) {
    // Something of everything: an applied request with a closed case, one under review.
    let mut requests = s.requests();
    requests
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                request_id: "applied".into(),
                business_unit_id: "bu-league".into(),
                targets: concurrent(120),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let review = requests
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                request_id: "reviewed".into(),
                business_unit_id: "bu-musketeers".into(),
                targets: concurrent(900),
                justification: "the season opens".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let case_number = review.case_number.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let task_id = loop {
        let t = s
            .approval()
            .get_approval_task(s.authed(
                NETOPS,
                pb::GetApprovalTaskRequest {
                    key: Some(pb::get_approval_task_request::Key::RequestId("reviewed".into())),
                },
            ))
            .await;
        match t {
            Ok(t) => break t.into_inner().task.unwrap().task_id,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("no task: {e:?}"),
        }
    };
    let tried_before = TRIED.load(Ordering::Relaxed);
    let before = snapshot(s).await;
    let huge = "x".repeat(HUGE);
    let bad_ids = ["", "has space", "semi;colon", "dröp", "../etc", huge.as_str()];
    use Code::{InvalidArgument as Invalid, NotFound};

    // PortRequestService.
    for id in bad_ids {
        refused(
            "GetPortLimits with a malformed business unit id",
            requests
                .get_port_limits(s.authed(
                    PERCY,
                    pb::GetPortLimitsRequest {
                        business_unit_id: id.into(),
                    },
                ))
                .await,
            Invalid,
        );
        let create = pb::CreatePortChangeRequestRequest {
            request_id: "fresh".into(),
            business_unit_id: "bu-classics".into(),
            targets: concurrent(150),
            ..Default::default()
        };
        refused(
            "CreatePortChangeRequest with a malformed request id",
            requests
                .create_port_change_request(s.authed(
                    PERCY,
                    pb::CreatePortChangeRequestRequest {
                        request_id: id.into(),
                        ..create.clone()
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "CreatePortChangeRequest with a malformed business unit id",
            requests
                .create_port_change_request(s.authed(
                    PERCY,
                    pb::CreatePortChangeRequestRequest {
                        business_unit_id: id.into(),
                        ..create
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "GetPortChangeRequest with a malformed id",
            requests
                .get_port_change_request(s.authed(PERCY, pb::GetPortChangeRequestRequest { request_id: id.into() }))
                .await,
            Invalid,
        );
        refused(
            "ProvideInformation with a malformed id",
            requests
                .provide_information(s.authed(
                    PERCY,
                    pb::ProvideInformationRequest {
                        request_id: id.into(),
                        justification: "x".into(),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "CancelPortChangeRequest with a malformed id",
            requests
                .cancel_port_change_request(s.authed(
                    PERCY,
                    pb::CancelPortChangeRequestRequest {
                        request_id: id.into(),
                        reason: String::new(),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "WatchPortChangeRequest with a malformed id",
            requests
                .watch_port_change_request(s.authed(PERCY, pb::WatchPortChangeRequestRequest { request_id: id.into() }))
                .await,
            Invalid,
        );
    }
    let numbers = [
        (Some(i32::MIN), None, None),
        (Some(-1), None, None),
        (Some(10_000), None, None),
        (Some(i32::MAX), None, None),
        (None, Some(-5), None),
        (None, None, Some(i32::MAX)),
        (None, None, None),
    ];
    for (i, (c, o, a)) in numbers.into_iter().enumerate() {
        let answer = requests
            .create_port_change_request(s.authed(
                PERCY,
                pb::CreatePortChangeRequestRequest {
                    request_id: format!("numbers-{i}"),
                    business_unit_id: "bu-classics".into(),
                    targets: Some(pb::PortTargets {
                        concurrent: c,
                        outbound: o,
                        agentless: a,
                    }),
                    ..Default::default()
                },
            ))
            .await;
        refused(
            &format!("CreatePortChangeRequest targets {c:?}/{o:?}/{a:?}"),
            answer,
            Invalid,
        );
    }
    let bad_times = [
        prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        },
        prost_types::Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        },
        prost_types::Timestamp { seconds: 0, nanos: -1 },
        prost_types::Timestamp {
            seconds: 4_000_000_000,
            nanos: 2_000_000_000,
        },
        prost_types::Timestamp { seconds: 1, nanos: 0 },
    ];
    for (i, at) in bad_times.into_iter().enumerate() {
        let answer = requests
            .create_port_change_request(s.authed(
                PERCY,
                pb::CreatePortChangeRequestRequest {
                    request_id: format!("revert-{i}"),
                    business_unit_id: "bu-classics".into(),
                    targets: concurrent(150),
                    revert_at: Some(at),
                    ..Default::default()
                },
            ))
            .await;
        refused(&format!("CreatePortChangeRequest revert_at {at:?}"), answer, Invalid);
    }
    // (A blank justification or reason is "none" where optional: only ProvideInformation,
    // where it is required, gets one.)
    for text in [huge.as_str(), "bell\u{7}"] {
        refused(
            "CreatePortChangeRequest with an oversized or control-character justification",
            requests
                .create_port_change_request(s.authed(
                    PERCY,
                    pb::CreatePortChangeRequestRequest {
                        request_id: "justified".into(),
                        business_unit_id: "bu-classics".into(),
                        targets: concurrent(900),
                        justification: text.into(),
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "ProvideInformation with a bad justification",
            requests
                .provide_information(s.authed(
                    PERCY,
                    pb::ProvideInformationRequest {
                        request_id: "reviewed".into(),
                        justification: text.into(),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "CancelPortChangeRequest with a bad reason",
            requests
                .cancel_port_change_request(s.authed(
                    PERCY,
                    pb::CancelPortChangeRequestRequest {
                        request_id: "reviewed".into(),
                        reason: text.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    refused(
        "ProvideInformation with a blank justification",
        requests
            .provide_information(s.authed(
                PERCY,
                pb::ProvideInformationRequest {
                    request_id: "reviewed".into(),
                    justification: "   ".into(),
                },
            ))
            .await,
        Invalid,
    );
    for state in [-1, 99, i32::MAX, 0] {
        refused(
            "ListPortChangeRequests with an unknown state",
            requests
                .list_port_change_requests(s.authed(
                    PERCY,
                    pb::ListPortChangeRequestsRequest {
                        states: vec![state],
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }
    for size in [-1, 501, i32::MAX, i32::MIN] {
        refused(
            "ListPortChangeRequests with a page size out of range",
            requests
                .list_port_change_requests(s.authed(
                    PERCY,
                    pb::ListPortChangeRequestsRequest {
                        page_size: size,
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }
    for token in forged_tokens(false) {
        refused(
            "ListPortChangeRequests with a forged page token",
            requests
                .list_port_change_requests(s.authed(
                    PERCY,
                    pb::ListPortChangeRequestsRequest {
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }

    // TicketingService.
    let mut tickets = s.ticketing();
    let mut case_writes = s.internal_ticketing();
    for number in ["", "abc", "1234567", "123456789012345678901", huge.as_str()] {
        refused(
            "GetCase with a malformed case number",
            tickets
                .get_case(s.authed(
                    PERCY,
                    pb::GetCaseRequest {
                        key: Some(pb::get_case_request::Key::CaseNumber(number.into())),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "AddCaseComment to a malformed case number",
            case_writes
                .add_case_comment(s.as_service(
                    ServiceKind::Request,
                    ipb::AddCaseCommentRequest {
                        case_number: number.into(),
                        body: "x".into(),
                        comment_id: String::new(),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "UpdateCaseStatus of a malformed case number",
            case_writes
                .update_case_status(s.as_service(
                    ServiceKind::Request,
                    ipb::UpdateCaseStatusRequest {
                        case_number: number.into(),
                        status: pb::CaseStatus::Working.into(),
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "CloseCase of a malformed case number",
            case_writes
                .close_case(s.as_service(
                    ServiceKind::Request,
                    ipb::CloseCaseRequest {
                        case_number: number.into(),
                        resolution: "x".into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    refused(
        "GetCase without a key",
        tickets
            .get_case(s.authed(PERCY, pb::GetCaseRequest { key: None }))
            .await,
        Invalid,
    );
    for reference in ["", huge.as_str(), "x\u{0}y"] {
        let answer = tickets
            .get_case(s.authed(
                PERCY,
                pb::GetCaseRequest {
                    key: Some(pb::get_case_request::Key::ExternalReference(reference.into())),
                },
            ))
            .await;
        refused("GetCase with a malformed external reference", answer, Invalid);
    }
    refused(
        "GetCase of an unknown but well-formed number",
        tickets
            .get_case(s.authed(
                PERCY,
                pb::GetCaseRequest {
                    key: Some(pb::get_case_request::Key::CaseNumber("00999999".into())),
                },
            ))
            .await,
        NotFound,
    );
    for (what, open) in [
        (
            "OpenCase without a reference",
            ipb::OpenCaseRequest {
                subject: "s".into(),
                description: "d".into(),
                business_unit_id: "bu-league".into(),
                requester: PERCY.into(),
                ..Default::default()
            },
        ),
        (
            "OpenCase with an oversized subject",
            ipb::OpenCaseRequest {
                external_reference: "open-x".into(),
                subject: huge.clone(),
                description: "d".into(),
                business_unit_id: "bu-league".into(),
                requester: PERCY.into(),
            },
        ),
        (
            "OpenCase with a malformed business unit",
            ipb::OpenCaseRequest {
                external_reference: "open-y".into(),
                subject: "s".into(),
                description: "d".into(),
                business_unit_id: "not a bu".into(),
                requester: PERCY.into(),
            },
        ),
        (
            "OpenCase with a malformed requester",
            ipb::OpenCaseRequest {
                external_reference: "open-z".into(),
                subject: "s".into(),
                description: "d".into(),
                business_unit_id: "bu-league".into(),
                requester: "no at sign".into(),
            },
        ),
    ] {
        refused(
            what,
            case_writes.open_case(s.as_service(ServiceKind::Request, open)).await,
            Invalid,
        );
    }
    for (body, key) in [
        ("", ""),
        (huge.as_str(), ""),
        ("fine", huge.as_str()),
        ("fine", "key\u{1}"),
    ] {
        refused(
            "AddCaseComment with a bad body or key",
            case_writes
                .add_case_comment(s.as_service(
                    ServiceKind::Request,
                    ipb::AddCaseCommentRequest {
                        case_number: case_number.clone(),
                        body: body.into(),
                        comment_id: key.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    for status in [0, -3, 42, pb::CaseStatus::Closed as i32] {
        refused(
            "UpdateCaseStatus to an unknown or closing status",
            case_writes
                .update_case_status(s.as_service(
                    ServiceKind::Request,
                    ipb::UpdateCaseStatusRequest {
                        case_number: case_number.clone(),
                        status,
                    },
                ))
                .await,
            Invalid,
        );
    }
    refused(
        "CloseCase with an oversized resolution",
        case_writes
            .close_case(s.as_service(
                ServiceKind::Request,
                ipb::CloseCaseRequest {
                    case_number: case_number.clone(),
                    resolution: huge.clone(),
                },
            ))
            .await,
        Invalid,
    );
    refused(
        "ListCases with an unknown status",
        tickets
            .list_cases(s.authed(
                PERCY,
                pb::ListCasesRequest {
                    business_unit_id: "bu-league".into(),
                    statuses: vec![77],
                    ..Default::default()
                },
            ))
            .await,
        Invalid,
    );
    for token in forged_tokens(true) {
        refused(
            "ListCases with a forged page token",
            tickets
                .list_cases(s.authed(
                    PERCY,
                    pb::ListCasesRequest {
                        business_unit_id: "bu-league".into(),
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }

    // ApprovalService.
    let mut approval = s.approval();
    let mut reconciler_calls = s.internal_approval();
    for (what, increase, cluster) in [
        ("EvaluateIncrease of a negative increase", -1, "C14"),
        ("EvaluateIncrease of nothing", 0, "C14"),
        ("EvaluateIncrease beyond the port ceiling", i32::MAX, "C14"),
        ("EvaluateIncrease on a malformed cluster", 1, "c14; drop"),
    ] {
        refused(
            what,
            reconciler_calls
                .evaluate_increase(s.as_service(
                    ServiceKind::Request,
                    ipb::EvaluateIncreaseRequest {
                        request_id: "evaluate-x".into(),
                        business_unit_id: "bu-classics".into(),
                        cluster: cluster.into(),
                        increase,
                    },
                ))
                .await,
            Invalid,
        );
    }
    refused(
        "ReleaseReservation with a malformed id",
        reconciler_calls
            .release_reservation(s.as_service(
                ServiceKind::Request,
                ipb::ReleaseReservationRequest {
                    request_id: huge.clone(),
                    reason: String::new(),
                },
            ))
            .await,
        Invalid,
    );
    refused(
        "SubmitForReview without anything",
        reconciler_calls
            .submit_for_review(s.as_service(ServiceKind::Request, ipb::SubmitForReviewRequest::default()))
            .await,
        Invalid,
    );
    refused(
        "SubmitForReview with negative limits",
        reconciler_calls
            .submit_for_review(s.as_service(
                ServiceKind::Request,
                ipb::SubmitForReviewRequest {
                    request_id: "submit-x".into(),
                    business_unit_id: "bu-classics".into(),
                    cluster: "C14".into(),
                    requester: PERCY.into(),
                    case_number: "00000001".into(),
                    limits_before: Some(pb::PortLimits {
                        concurrent: -4,
                        outbound: 0,
                        agentless: 0,
                    }),
                    targets: concurrent(150),
                    justification: "x".into(),
                    estimated_monthly_cost_change: None,
                },
            ))
            .await,
        Invalid,
    );
    refused(
        "WithdrawReview with a malformed id",
        reconciler_calls
            .withdraw_review(s.as_service(
                ServiceKind::Request,
                ipb::WithdrawReviewRequest {
                    request_id: "a b".into(),
                    reason: String::new(),
                },
            ))
            .await,
        Invalid,
    );
    for (states, cluster, size) in [(vec![9], "", 0), (vec![], "lower", 0), (vec![], "", -7)] {
        refused(
            "ListApprovalTasks with a bad filter",
            approval
                .list_approval_tasks(s.authed(
                    NETOPS,
                    pb::ListApprovalTasksRequest {
                        states,
                        cluster: cluster.into(),
                        page_size: size,
                        page_token: String::new(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    for token in forged_tokens(false) {
        refused(
            "ListApprovalTasks with a forged page token",
            approval
                .list_approval_tasks(s.authed(
                    NETOPS,
                    pb::ListApprovalTasksRequest {
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }
    for key in [
        None,
        Some(pb::get_approval_task_request::Key::TaskId(String::new())),
        Some(pb::get_approval_task_request::Key::TaskId(huge.clone())),
        Some(pb::get_approval_task_request::Key::RequestId("bad id".into())),
    ] {
        refused(
            "GetApprovalTask with a malformed key",
            approval
                .get_approval_task(s.authed(NETOPS, pb::GetApprovalTaskRequest { key }))
                .await,
            Invalid,
        );
    }
    for (id, reason) in [
        ("", "ok"),
        (task_id.as_str(), ""),
        (task_id.as_str(), huge.as_str()),
        (huge.as_str(), "ok"),
    ] {
        refused(
            "DecideApprovalTask with a malformed task id or reason",
            approval
                .decide_approval_task(s.authed(
                    NETOPS,
                    pb::DecideApprovalTaskRequest {
                        task_id: id.into(),
                        approve: true,
                        reason: reason.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    for limit in [
        None,
        Some(pb::DailyLimit {
            scope: 0,
            max_daily_increase: 10,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: 17,
            max_daily_increase: 10,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: pb::LimitScope::Default.into(),
            max_daily_increase: -1,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: pb::LimitScope::Default.into(),
            max_daily_increase: i32::MAX,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: pb::LimitScope::Cluster.into(),
            target: "c-14".into(),
            max_daily_increase: 10,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: pb::LimitScope::Default.into(),
            target: "C14".into(),
            max_daily_increase: 10,
            ..Default::default()
        }),
        Some(pb::DailyLimit {
            scope: pb::LimitScope::BusinessUnit.into(),
            target: huge.clone(),
            max_daily_increase: 10,
            ..Default::default()
        }),
    ] {
        refused(
            "SetDailyLimit with a malformed limit",
            approval
                .set_daily_limit(s.authed(NETOPS, pb::SetDailyLimitRequest { limit: limit.clone() }))
                .await,
            Invalid,
        );
    }
    for (scope, target) in [(0, ""), (99, "C14"), (pb::LimitScope::Cluster as i32, "")] {
        refused(
            "ClearDailyLimit with a malformed scope or target",
            approval
                .clear_daily_limit(s.authed(
                    NETOPS,
                    pb::ClearDailyLimitRequest {
                        scope,
                        target: target.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    for (cluster, bu, day) in [
        ("", "", ""),
        ("C14", "", "2026-13-45"),
        ("C14", "", "yesterday"),
        ("C14", "", "-999999-01-01"),
        ("C14", "bad bu", ""),
        (huge.as_str(), "", ""),
    ] {
        refused(
            "GetDailyUsage with a malformed cluster, business unit or day",
            approval
                .get_daily_usage(s.authed(
                    NETOPS,
                    pb::GetDailyUsageRequest {
                        cluster: cluster.into(),
                        business_unit_id: bu.into(),
                        day: day.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }

    // AuthorizationService.
    let mut authz = s.authorization();
    for (action, bu) in [
        (0, "bu-league"),
        (-2, "bu-league"),
        (1_000, "bu-league"),
        (pb::Action::ViewPorts as i32, ""),
        (pb::Action::ViewPorts as i32, "bu league"),
        (pb::Action::DecideApprovals as i32, "bu-league"),
    ] {
        refused(
            "Check with a malformed action or business unit",
            authz
                .check(s.authed(
                    PERCY,
                    pb::CheckRequest {
                        principal_id: String::new(),
                        action,
                        business_unit_id: bu.into(),
                    },
                ))
                .await,
            Invalid,
        );
    }
    let pages = |numbered| {
        [(-1, String::new()), (501, String::new())]
            .into_iter()
            .chain(forged_tokens(numbered).into_iter().map(|t| (0, t)))
    };
    for (size, token) in pages(false) {
        refused(
            "ListVisibleBusinessUnits with a bad page",
            authz
                .list_visible_business_units(s.authed(
                    PERCY,
                    pb::ListVisibleBusinessUnitsRequest {
                        principal_id: String::new(),
                        page_size: size,
                        page_token: token.clone(),
                        action: 0,
                    },
                ))
                .await,
            Invalid,
        );
    }
    for (what, action) in [
        ("ListVisibleBusinessUnits for an unknown action", 99),
        ("ListVisibleBusinessUnits for a negative action", -1),
        (
            "ListVisibleBusinessUnits for a global action",
            pb::Action::Administer as i32,
        ),
    ] {
        refused(
            what,
            authz
                .list_visible_business_units(s.authed(
                    PERCY,
                    pb::ListVisibleBusinessUnitsRequest {
                        action,
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }
    for (size, token) in pages(true) {
        refused(
            "ListPermissions with a bad page",
            authz
                .list_permissions(s.authed(
                    REP,
                    pb::ListPermissionsRequest {
                        page_size: size,
                        page_token: token,
                        ..Default::default()
                    },
                ))
                .await,
            Invalid,
        );
    }
    let unit = |id: &str, name: &str, cluster: &str, partner: &str| pb::BusinessUnit {
        business_unit_id: id.into(),
        display_name: name.into(),
        cluster: cluster.into(),
        partner_id: partner.into(),
        ..Default::default()
    };
    for (what, bu) in [
        ("CreateBusinessUnit without one", None),
        ("CreateBusinessUnit without an id", Some(unit("", "n", "C14", ""))),
        (
            "CreateBusinessUnit with a malformed id",
            Some(unit("b u", "n", "C14", "")),
        ),
        ("CreateBusinessUnit without a name", Some(unit("bu-new", "", "C14", ""))),
        (
            "CreateBusinessUnit with an oversized name",
            Some(unit("bu-new", &huge, "C14", "")),
        ),
        (
            "CreateBusinessUnit with a malformed cluster",
            Some(unit("bu-new", "n", "c", "")),
        ),
        (
            "CreateBusinessUnit with a malformed partner",
            Some(unit("bu-new", "n", "C14", "p p")),
        ),
    ] {
        refused(
            what,
            authz
                .create_business_unit(s.authed(REP, pb::CreateBusinessUnitRequest { business_unit: bu }))
                .await,
            Invalid,
        );
    }
    for (what, update) in [
        (
            "UpdateBusinessUnit of a malformed id",
            pb::UpdateBusinessUnitRequest {
                business_unit_id: "b u".into(),
                display_name: Some("n".into()),
                ..Default::default()
            },
        ),
        (
            "UpdateBusinessUnit to an empty name",
            pb::UpdateBusinessUnitRequest {
                business_unit_id: "bu-league".into(),
                display_name: Some(String::new()),
                ..Default::default()
            },
        ),
        (
            "UpdateBusinessUnit to a malformed cluster",
            pb::UpdateBusinessUnitRequest {
                business_unit_id: "bu-league".into(),
                cluster: Some("lower".into()),
                ..Default::default()
            },
        ),
        (
            "UpdateBusinessUnit to be its own partner",
            pb::UpdateBusinessUnitRequest {
                business_unit_id: "bu-league".into(),
                partner_id: Some("bu-league".into()),
                ..Default::default()
            },
        ),
    ] {
        refused(what, authz.update_business_unit(s.authed(REP, update)).await, Invalid);
    }
    refused(
        "GetBusinessUnit with a malformed id",
        authz
            .get_business_unit(s.authed(
                PERCY,
                pb::GetBusinessUnitRequest {
                    business_unit_id: huge.clone(),
                },
            ))
            .await,
        Invalid,
    );
    let person = |id: &str, kind: i32, home: &str| pb::Principal {
        principal_id: id.into(),
        display_name: "n".into(),
        home_business_unit_id: home.into(),
        kind,
        ..Default::default()
    };
    for (what, p) in [
        ("CreatePrincipal without one", None),
        (
            "CreatePrincipal with a malformed id",
            Some(person("no spaces allowed", 1, "")),
        ),
        (
            "CreatePrincipal of an unknown kind",
            Some(person("new@classics.example", 9, "")),
        ),
        (
            "CreatePrincipal without a kind",
            Some(person("new@classics.example", 0, "")),
        ),
        (
            "CreatePrincipal with a malformed home",
            Some(person("new@classics.example", 1, "b u")),
        ),
    ] {
        refused(
            what,
            authz
                .create_principal(s.authed(REP, pb::CreatePrincipalRequest { principal: p }))
                .await,
            Invalid,
        );
    }
    refused(
        "UpdatePrincipal with an oversized name",
        authz
            .update_principal(s.authed(
                REP,
                pb::UpdatePrincipalRequest {
                    principal_id: PERCY.into(),
                    display_name: Some(huge.clone()),
                    home_business_unit_id: None,
                },
            ))
            .await,
        Invalid,
    );
    refused(
        "GetPrincipal with a malformed id",
        authz
            .get_principal(s.authed(
                REP,
                pb::GetPrincipalRequest {
                    principal_id: huge.clone(),
                },
            ))
            .await,
        Invalid,
    );
    for (principal, bu, permission) in [
        (PERCY, "bu-league", 0),
        (PERCY, "bu-league", 55),
        ("bad principal", "bu-league", 1),
        (PERCY, "b u", 1),
        (PERCY, "", pb::Permission::PortManagementView as i32),
    ] {
        refused(
            "GrantPermission with a malformed principal, business unit or permission",
            authz
                .grant_permission(s.authed(
                    REP,
                    pb::GrantPermissionRequest {
                        principal_id: principal.into(),
                        business_unit_id: bu.into(),
                        permission,
                    },
                ))
                .await,
            Invalid,
        );
        refused(
            "RevokePermission with a malformed principal, business unit or permission",
            authz
                .revoke_permission(s.authed(
                    REP,
                    pb::RevokePermissionRequest {
                        principal_id: principal.into(),
                        business_unit_id: bu.into(),
                        permission,
                    },
                ))
                .await,
            Invalid,
        );
    }

    raw_bytes_to_the_port(s).await;

    for (after, before) in snapshot(s).await.iter().zip(&before) {
        assert_eq!(after, before, "malformed input changed stored state");
    }
    eprintln!(
        "hostile input: {} malformed calls refused with a clear status, stored state unchanged",
        TRIED.load(Ordering::Relaxed) - tried_before
    );
}
scenario!(
    every_rpc_refuses_malformed_input,
    hostile_input_on_sqlite,
    hostile_input_on_postgres
);

/// The status of one hand-framed gRPC call: `body` is sent as the HTTP/2 request body,
/// byte for byte, with `content_type`.
async fn raw_call(
    s: &TestSystem,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (http::StatusCode, Option<Code>, String) {
    let tcp = tokio::net::TcpStream::connect(s.addr(ServiceKind::Request))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}{path}", s.addr(ServiceKind::Request)))
        .header("content-type", content_type)
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", s.token(PERCY)))
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(body.into(), true).unwrap();
    let response = response.await.unwrap();
    let http_status = response.status();
    let (head, mut body) = response.into_parts();
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|v| {
            (
                Code::from_bytes(v.as_bytes()),
                h.get("grpc-message")
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    .unwrap_or_default(),
            )
        })
    };
    let found = match status_of(&head.headers) {
        Some(found) => Some(found),
        None => {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            body.trailers().await.unwrap().as_ref().and_then(status_of)
        }
    };
    driver.abort();
    match found {
        Some((code, message)) => (http_status, Some(code), message),
        None => (http_status, None, String::new()),
    }
}

/// A gRPC message frame: compression flag, big-endian length, the bytes.
fn frame(flag: u8, declared_len: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Bytes that are not a valid call, straight to the request service's port.
async fn raw_bytes_to_the_port(s: &TestSystem) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = "/sspm.v1.PortRequestService/GetPortLimits";
    let grpc = "application/grpc";
    let cases: Vec<(&str, &str, &str, Vec<u8>, Code)> = vec![
        (
            "bytes that are not the method's message",
            limits,
            grpc,
            frame(0, 6, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Code::InvalidArgument,
        ),
        (
            "a field of the wrong wire type",
            limits,
            grpc,
            frame(0, 2, &[0x08, 0x01]),
            Code::InvalidArgument,
        ),
        (
            "a frame cut short",
            limits,
            grpc,
            frame(0, 100, b"\x0a\x03bu-"),
            Code::InvalidArgument,
        ),
        (
            "a frame header cut short",
            limits,
            grpc,
            vec![0, 0, 0],
            Code::InvalidArgument,
        ),
        ("no message at all", limits, grpc, Vec::new(), Code::InvalidArgument),
        (
            "an invalid compression flag",
            limits,
            grpc,
            frame(7, 1, &[0]),
            Code::InvalidArgument,
        ),
        (
            "a compressed message without an encoding",
            limits,
            grpc,
            frame(1, 1, &[0]),
            Code::InvalidArgument,
        ),
        (
            "a declared length beyond the limit",
            limits,
            grpc,
            frame(0, u32::MAX, &[0]),
            Code::OutOfRange,
        ),
        (
            "an unknown method",
            "/sspm.v1.PortRequestService/DropTables",
            grpc,
            frame(0, 0, &[]),
            Code::Unimplemented,
        ),
        (
            "an unknown service",
            "/evil.v1.Backdoor/Open",
            grpc,
            frame(0, 0, &[]),
            Code::Unimplemented,
        ),
    ];
    for (what, path, content_type, body, code) in cases {
        TRIED.fetch_add(1, Ordering::Relaxed);
        let (http_status, found, message) = raw_call(s, path, content_type, body).await;
        assert_eq!(http_status, http::StatusCode::OK, "{what}");
        assert_eq!(found, Some(code), "{what}: {message}");
    }
    // Not gRPC at all: HTTP/2 with another content type, HTTP/1, garbage, a torn preface.
    TRIED.fetch_add(1, Ordering::Relaxed);
    let (http_status, found, _) = raw_call(s, limits, "text/plain", b"hello".to_vec()).await;
    assert!(
        http_status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE || found.is_some(),
        "a non-gRPC content type gets a clear answer: {http_status}"
    );
    for bytes in [
        b"GET / HTTP/1.1\r\nHost: sspm\r\n\r\n".to_vec(),
        [0xde, 0xad, 0xbe, 0xef].repeat(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\xff\xff\xff\x00\x00\x00\x00\x01garbage".to_vec(),
    ] {
        TRIED.fetch_add(1, Ordering::Relaxed);
        let mut tcp = tokio::net::TcpStream::connect(s.addr(ServiceKind::Request))
            .await
            .unwrap();
        let _ = tcp.write_all(&bytes).await;
        let _ = tcp.shutdown().await;
        // The server answers what it can (an HTTP/2 GOAWAY, an HTTP/1 error) and closes.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the server closes a connection of garbage");
    }
    // And still serves.
    let limits = s
        .requests()
        .get_port_limits(s.authed(
            PERCY,
            pb::GetPortLimitsRequest {
                business_unit_id: "bu-league".into(),
            },
        ))
        .await;
    assert!(limits.is_ok(), "{limits:?}");
}
