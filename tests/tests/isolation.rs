//! Tenant isolation (docs/ARCHITECTURE.md, "The trust model"): a principal of one partner calls every RPC with the business
//! unit, request, case and approval ids of another partner (and a customer user with those of
//! a sibling customer). Nothing leaks: ids it may not see answer exactly like ids that do not
//! exist, lists hold nothing of the other tenant, internal and staff RPCs refuse it, and the
//! other tenant's requests, cases and limits are unchanged afterwards.

#![allow(clippy::unwrap_used)] // scenario bodies: an unwrap is an assertion

use sspm_e2e::{TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_proto::internal::v1 as ipb;
use sspm_proto::v1 as pb;
use tonic::Code;

const PERCY: &str = "percy@classics.example";
const MARGUERITE: &str = "marguerite@league.example";
const REP: &str = "rep@sspm.example";
const NEMO: &str = "nemo@nautilus.example";
const LEAGUE: &str = "bu-league";
const MUSKETEERS: &str = "bu-musketeers";
const NAUTILUS: &str = "bu-nautilus";

/// What one tenant owns: the ids another tenant will try.
#[derive(Debug, Clone)]
struct Owned {
    owner: &'static str,
    business_unit: &'static str,
    request_id: String,
    case_number: String,
    task_id: Option<String>,
}

/// What the owner sees of its own things; compared before and after the probes.
#[derive(Debug, PartialEq)]
struct Seen {
    request: pb::PortChangeRequest,
    limits: pb::GetPortLimitsResponse,
    case: pb::Case,
    task: Option<pb::ApprovalTask>,
}

async fn register_nemo(s: &TestSystem) {
    let mut authz = s.authorization();
    authz
        .create_principal(s.authed(
            REP,
            pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    principal_id: NEMO.into(),
                    display_name: "Captain Nemo".into(),
                    home_business_unit_id: NAUTILUS.into(),
                    kind: pb::PrincipalKind::User.into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    for perm in [
        pb::Permission::MonitoringGatewayView,
        pb::Permission::PortManagementView,
        pb::Permission::PortManagementCreate,
    ] {
        authz
            .grant_permission(s.authed(
                REP,
                pb::GrantPermissionRequest {
                    principal_id: NEMO.into(),
                    business_unit_id: NAUTILUS.into(),
                    permission: perm.into(),
                },
            ))
            .await
            .unwrap();
    }
}

/// `owner` asks for `concurrent` ports on `bu`; with a justification the request goes to
/// review and the task id is returned too.
async fn own(s: &TestSystem, owner: &'static str, bu: &'static str, id: &str, concurrent: i32, why: &str) -> Owned {
    let created = s
        .requests()
        .create_port_change_request(s.authed(
            owner,
            pb::CreatePortChangeRequestRequest {
                request_id: id.into(),
                business_unit_id: bu.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(concurrent),
                    ..Default::default()
                }),
                justification: why.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let request = created.request.unwrap();
    assert!(!request.case_number.is_empty(), "{request:?}");
    let task_id = if why.is_empty() {
        None
    } else {
        Some(s.approval_task(id).await.task_id)
    };
    Owned {
        owner,
        business_unit: bu,
        request_id: id.into(),
        case_number: request.case_number,
        task_id,
    }
}

async fn seen(s: &TestSystem, o: &Owned) -> Seen {
    let request = s
        .requests()
        .get_port_change_request(s.authed(
            o.owner,
            pb::GetPortChangeRequestRequest {
                request_id: o.request_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let limits = s
        .requests()
        .get_port_limits(s.authed(
            o.owner,
            pb::GetPortLimitsRequest {
                business_unit_id: o.business_unit.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let case = s
        .ticketing()
        .get_case(s.authed(
            o.owner,
            pb::GetCaseRequest {
                key: Some(pb::get_case_request::Key::CaseNumber(o.case_number.clone())),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    let task = match &o.task_id {
        Some(id) => Some(
            s.approval()
                .get_approval_task(s.as_service(
                    ServiceKind::Request,
                    pb::GetApprovalTaskRequest {
                        key: Some(pb::get_approval_task_request::Key::TaskId(id.clone())),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap(),
        ),
        None => None,
    };
    Seen {
        request,
        limits,
        case,
        task,
    }
}

/// Asserts `answer` is NOT_FOUND and reads exactly like the answer for an id that does not
/// exist (`unknown`, with `id` and `ghost` swapped): the caller cannot tell the difference.
fn like_unknown<T: std::fmt::Debug>(
    what: &str,
    answer: Result<T, tonic::Status>,
    id: &str,
    unknown: Result<T, tonic::Status>,
    ghost: &str,
) {
    let e = answer.expect_err(what);
    let u = unknown.expect_err(what);
    assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
    assert_eq!(u.code(), Code::NotFound, "{what} (unknown id): {u:?}");
    assert_eq!(
        e.message().replace(id, "<id>"),
        u.message().replace(ghost, "<id>"),
        "{what}: another tenant's id answers differently from an unknown one"
    );
}

fn refused<T: std::fmt::Debug>(what: &str, answer: Result<T, tonic::Status>, code: Code) {
    let e = answer.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
}

/// `intruder` tries everything on `victim`'s ids.
#[allow(clippy::too_many_lines)] // one probe per RPC, in the order of the protos
async fn probe(s: &TestSystem, intruder: &str, victim: &Owned) {
    let ghost_bu = "bu-ghost";
    let ghost_req = "ghost-request";
    let ghost_case = "00999999";
    let bu = victim.business_unit;
    let rid = victim.request_id.as_str();
    let cn = victim.case_number.as_str();
    let mut requests = s.requests();
    let mut tickets = s.ticketing();
    let mut case_writes = s.internal_ticketing();
    let mut approval = s.approval();
    let mut reconciler_calls = s.internal_approval();
    let mut authz = s.authorization();

    // PortRequestService.
    let limits = |b: &str| pb::GetPortLimitsRequest {
        business_unit_id: b.into(),
    };
    like_unknown(
        "GetPortLimits",
        requests.get_port_limits(s.authed(intruder, limits(bu))).await,
        bu,
        requests.get_port_limits(s.authed(intruder, limits(ghost_bu))).await,
        ghost_bu,
    );
    for validate_only in [true, false] {
        let create = |b: &str| pb::CreatePortChangeRequestRequest {
            request_id: format!("intruder-{validate_only}"),
            business_unit_id: b.into(),
            targets: Some(pb::PortTargets {
                concurrent: Some(1),
                ..Default::default()
            }),
            validate_only,
            ..Default::default()
        };
        like_unknown(
            "CreatePortChangeRequest on another tenant's business unit",
            requests
                .create_port_change_request(s.authed(intruder, create(bu)))
                .await,
            bu,
            requests
                .create_port_change_request(s.authed(intruder, create(ghost_bu)))
                .await,
            ghost_bu,
        );
    }
    let get = |id: &str| pb::GetPortChangeRequestRequest { request_id: id.into() };
    like_unknown(
        "GetPortChangeRequest",
        requests.get_port_change_request(s.authed(intruder, get(rid))).await,
        rid,
        requests
            .get_port_change_request(s.authed(intruder, get(ghost_req)))
            .await,
        ghost_req,
    );
    let info = |id: &str| pb::ProvideInformationRequest {
        request_id: id.into(),
        justification: "let me in".into(),
    };
    like_unknown(
        "ProvideInformation",
        requests.provide_information(s.authed(intruder, info(rid))).await,
        rid,
        requests.provide_information(s.authed(intruder, info(ghost_req))).await,
        ghost_req,
    );
    let cancel = |id: &str| pb::CancelPortChangeRequestRequest {
        request_id: id.into(),
        reason: "mischief".into(),
    };
    like_unknown(
        "CancelPortChangeRequest",
        requests
            .cancel_port_change_request(s.authed(intruder, cancel(rid)))
            .await,
        rid,
        requests
            .cancel_port_change_request(s.authed(intruder, cancel(ghost_req)))
            .await,
        ghost_req,
    );
    let watch = |id: &str| pb::WatchPortChangeRequestRequest { request_id: id.into() };
    like_unknown(
        "WatchPortChangeRequest",
        requests
            .watch_port_change_request(s.authed(intruder, watch(rid)))
            .await
            .map(|_| ()),
        rid,
        requests
            .watch_port_change_request(s.authed(intruder, watch(ghost_req)))
            .await
            .map(|_| ()),
        ghost_req,
    );
    let list = |b: &str| pb::ListPortChangeRequestsRequest {
        business_unit_id: b.into(),
        ..Default::default()
    };
    like_unknown(
        "ListPortChangeRequests of another tenant's business unit",
        requests.list_port_change_requests(s.authed(intruder, list(bu))).await,
        bu,
        requests
            .list_port_change_requests(s.authed(intruder, list(ghost_bu)))
            .await,
        ghost_bu,
    );
    let mine = requests
        .list_port_change_requests(s.authed(intruder, list("")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        mine.requests
            .iter()
            .all(|r| r.request_id != rid && r.business_unit_id != bu),
        "{intruder} lists another tenant's request: {mine:?}"
    );
    // Request ids are one namespace (client-chosen, like idempotency keys): reusing another
    // tenant's says only that the id is taken; nothing of the request comes back.
    let reuse = requests
        .create_port_change_request(s.authed(
            intruder,
            pb::CreatePortChangeRequestRequest {
                request_id: rid.into(),
                business_unit_id: bu.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::NotFound, "{reuse:?}");
    let home = if intruder == NEMO { NAUTILUS } else { LEAGUE };
    let reuse = requests
        .create_port_change_request(s.authed(
            intruder,
            pb::CreatePortChangeRequestRequest {
                request_id: rid.into(),
                business_unit_id: home.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    // (Marguerite may only view: she is refused before the id is looked at.)
    let expected = if intruder == MARGUERITE {
        Code::PermissionDenied
    } else {
        Code::AlreadyExists
    };
    assert_eq!(reuse.code(), expected, "{reuse:?}");
    for secret in [bu, cn, victim.owner] {
        assert!(!reuse.message().contains(secret), "{reuse:?} reveals {secret}");
    }

    // TicketingService: reads like unknown, writes are internal.
    let by_number = |n: &str| pb::GetCaseRequest {
        key: Some(pb::get_case_request::Key::CaseNumber(n.into())),
    };
    like_unknown(
        "GetCase by number",
        tickets.get_case(s.authed(intruder, by_number(cn))).await,
        cn,
        tickets.get_case(s.authed(intruder, by_number(ghost_case))).await,
        ghost_case,
    );
    let by_reference = |r: &str| pb::GetCaseRequest {
        key: Some(pb::get_case_request::Key::ExternalReference(r.into())),
    };
    like_unknown(
        "GetCase by external reference",
        tickets.get_case(s.authed(intruder, by_reference(rid))).await,
        rid,
        tickets.get_case(s.authed(intruder, by_reference(ghost_req))).await,
        ghost_req,
    );
    let cases = |b: &str| pb::ListCasesRequest {
        business_unit_id: b.into(),
        ..Default::default()
    };
    like_unknown(
        "ListCases",
        tickets.list_cases(s.authed(intruder, cases(bu))).await,
        bu,
        tickets.list_cases(s.authed(intruder, cases(ghost_bu))).await,
        ghost_bu,
    );
    refused(
        "ListCases of every business unit",
        tickets.list_cases(s.authed(intruder, cases(""))).await,
        Code::InvalidArgument,
    );
    refused(
        "OpenCase",
        case_writes
            .open_case(s.authed(
                intruder,
                ipb::OpenCaseRequest {
                    external_reference: rid.into(),
                    subject: "x".into(),
                    description: "x".into(),
                    business_unit_id: bu.into(),
                    requester: intruder.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "AddCaseComment",
        case_writes
            .add_case_comment(s.authed(
                intruder,
                ipb::AddCaseCommentRequest {
                    case_number: cn.into(),
                    body: "hello".into(),
                    comment_id: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "UpdateCaseStatus",
        case_writes
            .update_case_status(s.authed(
                intruder,
                ipb::UpdateCaseStatusRequest {
                    case_number: cn.into(),
                    status: pb::CaseStatus::Escalated.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "CloseCase",
        case_writes
            .close_case(s.authed(
                intruder,
                ipb::CloseCaseRequest {
                    case_number: cn.into(),
                    resolution: "closed by an intruder".into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );

    // ApprovalService: partner and customer users are neither services nor staff.
    let task_key = victim.task_id.clone().unwrap_or_else(|| "task-x".into());
    refused(
        "EvaluateIncrease",
        reconciler_calls
            .evaluate_increase(s.authed(
                intruder,
                ipb::EvaluateIncreaseRequest {
                    request_id: rid.into(),
                    business_unit_id: bu.into(),
                    cluster: "C14".into(),
                    increase: 1,
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "ReleaseReservation",
        reconciler_calls
            .release_reservation(s.authed(
                intruder,
                ipb::ReleaseReservationRequest {
                    request_id: rid.into(),
                    reason: "x".into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "SubmitForReview",
        reconciler_calls
            .submit_for_review(s.authed(
                intruder,
                ipb::SubmitForReviewRequest {
                    request_id: rid.into(),
                    business_unit_id: bu.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "WithdrawReview",
        reconciler_calls
            .withdraw_review(s.authed(
                intruder,
                ipb::WithdrawReviewRequest {
                    request_id: rid.into(),
                    reason: "x".into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "ListApprovalTasks",
        approval
            .list_approval_tasks(s.authed(intruder, pb::ListApprovalTasksRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    for key in [
        pb::get_approval_task_request::Key::TaskId(task_key.clone()),
        pb::get_approval_task_request::Key::RequestId(rid.into()),
    ] {
        refused(
            "GetApprovalTask",
            approval
                .get_approval_task(s.authed(intruder, pb::GetApprovalTaskRequest { key: Some(key) }))
                .await,
            Code::PermissionDenied,
        );
    }
    refused(
        "DecideApprovalTask",
        approval
            .decide_approval_task(s.authed(
                intruder,
                pb::DecideApprovalTaskRequest {
                    task_id: task_key,
                    approve: true,
                    reason: "approved by an intruder".into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "WatchDecisions",
        reconciler_calls
            .watch_decisions(s.authed(intruder, ipb::WatchDecisionsRequest::default()))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
    );
    refused(
        "SetDailyLimit",
        approval
            .set_daily_limit(s.authed(
                intruder,
                pb::SetDailyLimitRequest {
                    limit: Some(pb::DailyLimit {
                        scope: pb::LimitScope::BusinessUnit.into(),
                        target: bu.into(),
                        max_daily_increase: 0,
                        ..Default::default()
                    }),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "ClearDailyLimit",
        approval
            .clear_daily_limit(s.authed(
                intruder,
                pb::ClearDailyLimitRequest {
                    scope: pb::LimitScope::Default.into(),
                    target: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "ListDailyLimits",
        approval
            .list_daily_limits(s.authed(intruder, pb::ListDailyLimitsRequest {}))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "GetDailyUsage",
        approval
            .get_daily_usage(s.authed(
                intruder,
                pb::GetDailyUsageRequest {
                    cluster: "C14".into(),
                    business_unit_id: bu.into(),
                    day: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );

    // AuthorizationService.
    let check = |b: &str| pb::CheckRequest {
        principal_id: String::new(),
        action: pb::Action::ViewPorts.into(),
        business_unit_id: b.into(),
    };
    let answer = authz.check(s.authed(intruder, check(bu))).await.unwrap().into_inner();
    let unknown = authz
        .check(s.authed(intruder, check(ghost_bu)))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.allowed && answer.business_unit.is_none(), "{answer:?}");
    assert_eq!(answer.deny_reason(), pb::DenyReason::NotFound);
    assert_eq!(
        answer.message.replace(bu, "<id>"),
        unknown.message.replace(ghost_bu, "<id>")
    );
    refused(
        "Check on behalf of the victim",
        authz
            .check(s.authed(
                intruder,
                pb::CheckRequest {
                    principal_id: victim.owner.into(),
                    ..check(bu)
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let visible = authz
        .list_visible_business_units(s.authed(intruder, pb::ListVisibleBusinessUnitsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        visible.business_units.iter().all(|b| b.business_unit_id != bu),
        "{intruder} sees {bu}: {visible:?}"
    );
    refused(
        "ListVisibleBusinessUnits of the victim",
        authz
            .list_visible_business_units(s.authed(
                intruder,
                pb::ListVisibleBusinessUnitsRequest {
                    principal_id: victim.owner.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let get_bu = |b: &str| pb::GetBusinessUnitRequest {
        business_unit_id: b.into(),
    };
    like_unknown(
        "GetBusinessUnit",
        authz.get_business_unit(s.authed(intruder, get_bu(bu))).await,
        bu,
        authz.get_business_unit(s.authed(intruder, get_bu(ghost_bu))).await,
        ghost_bu,
    );
    refused(
        "UpdateBusinessUnit",
        authz
            .update_business_unit(s.authed(
                intruder,
                pb::UpdateBusinessUnitRequest {
                    business_unit_id: bu.into(),
                    monitoring_gateway_enabled: Some(false),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "CreateBusinessUnit under the victim",
        authz
            .create_business_unit(s.authed(
                intruder,
                pb::CreateBusinessUnitRequest {
                    business_unit: Some(pb::BusinessUnit {
                        business_unit_id: "bu-cuckoo".into(),
                        display_name: "Cuckoo".into(),
                        cluster: "C14".into(),
                        partner_id: bu.into(),
                        ..Default::default()
                    }),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "GetPrincipal of the victim",
        authz
            .get_principal(s.authed(
                intruder,
                pb::GetPrincipalRequest {
                    principal_id: victim.owner.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "GrantPermission to oneself on the victim's business unit",
        authz
            .grant_permission(s.authed(
                intruder,
                pb::GrantPermissionRequest {
                    principal_id: intruder.into(),
                    business_unit_id: bu.into(),
                    permission: pb::Permission::PortManagementCreate.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "RevokePermission of the victim",
        authz
            .revoke_permission(s.authed(
                intruder,
                pb::RevokePermissionRequest {
                    principal_id: victim.owner.into(),
                    business_unit_id: bu.into(),
                    permission: pb::Permission::PortManagementCreate.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "ListPermissions of the victim",
        authz
            .list_permissions(s.authed(
                intruder,
                pb::ListPermissionsRequest {
                    principal_id: victim.owner.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let grants = authz
        .list_permissions(s.authed(
            intruder,
            pb::ListPermissionsRequest {
                business_unit_id: bu.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(grants.grants.is_empty(), "{intruder} lists grants on {bu}: {grants:?}");
}

async fn tenants_see_nothing_of_each_other(s: &TestSystem) {
    register_nemo(s).await;
    // Each tenant holds a closed case (automatic approval) and a request under review.
    let nemo_auto = own(s, NEMO, NAUTILUS, "nemo-auto", 110, "").await;
    let percy_review = own(s, PERCY, MUSKETEERS, "percy-review", 900, "the season opens").await;
    let nemo_review = own(s, NEMO, NAUTILUS, "nemo-review", 900, "the submarine needs ports").await;
    let percy_auto = own(s, PERCY, LEAGUE, "percy-auto", 110, "").await;
    let victims = [
        (NEMO, percy_auto.clone()),
        (NEMO, percy_review.clone()),
        (PERCY, nemo_auto.clone()),
        (PERCY, nemo_review.clone()),
        // A customer user and its partner's other customer.
        (MARGUERITE, percy_review.clone()),
    ];
    let mut before = Vec::new();
    for (_, v) in &victims {
        before.push(seen(s, v).await);
    }
    for (intruder, victim) in &victims {
        probe(s, intruder, victim).await;
    }
    for ((_, v), was) in victims.iter().zip(before) {
        assert_eq!(seen(s, v).await, was, "{}'s things changed after the probes", v.owner);
    }
}
scenario!(
    tenants_see_nothing_of_each_other,
    tenant_isolation_on_sqlite,
    tenant_isolation_on_postgres
);
