//! Who may call what, against the running system: every RPC of the caller table × a user
//! and each of the four services' own tokens (README, "Who may call what"); a service
//! token never changes staff-owned data or reads across tenants.

use sspm_authorization::seed::demo::{NETOPS, PARTNER_ADMIN};
use sspm_e2e::{Backend, TestSystem, served_by};
use sspm_platform::ServiceKind;
use sspm_platform::identity::callers::{TABLE, allowed_for};
use sspm_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

fn refused_as_caller_not_allowed(status: &tonic::Status) -> bool {
    status.code() == Code::PermissionDenied
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|i| i.reason == "CALLER_NOT_ALLOWED")
}

async fn every_rpc_admits_exactly_the_callers_of_the_table(s: &TestSystem) {
    let user = s.token(PARTNER_ADMIN);
    let services: Vec<(ServiceKind, String)> = ServiceKind::ALL.into_iter().map(|k| (k, s.service_token(k))).collect();
    let mut checked = 0;
    for (path, _) in TABLE {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        for target in served_by(service) {
            let mut callers = vec![(None, user.clone())];
            callers.extend(services.iter().map(|(k, t)| (Some(*k), t.clone())));
            for (service, token) in callers {
                let status = s.call_raw(target, path, (), &token).await;
                let refused = refused_as_caller_not_allowed(&status);
                let expected = allowed_for(path, service);
                assert_eq!(
                    refused,
                    !expected,
                    "{path} on {target:?} called by {}: {status:?}",
                    service.map_or("a user".to_owned(), |k| format!("the {} service", k.name()))
                );
                if refused {
                    assert!(status.message().contains("may not"), "{}", status.message());
                } else {
                    assert_ne!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
                }
                checked += 1;
            }
        }
    }
    // 38 RPCs on their own service, the audit trail on four, × five callers.
    assert!(checked >= TABLE.len() * 5, "{checked}");
}

async fn no_service_token_changes_a_daily_limit_or_reads_across_tenants(s: &TestSystem) {
    let limits = |s: &TestSystem| {
        let mut approval = s.approval();
        let req = s.authed(NETOPS, pb::ListDailyLimitsRequest::default());
        async move { approval.list_daily_limits(req).await.expect("list").into_inner().limits }
    };
    let before = limits(s).await;
    for kind in ServiceKind::ALL {
        let raise = pb::SetDailyLimitRequest {
            limit: Some(pb::DailyLimit {
                scope: pb::LimitScope::Default.into(),
                max_daily_increase: 5_000,
                ..Default::default()
            }),
        };
        let err = s
            .approval()
            .set_daily_limit(s.as_service(kind, raise))
            .await
            .expect_err("a service token raised the daily limit");
        assert!(refused_as_caller_not_allowed(&err), "{kind:?}: {err:?}");

        let err = s
            .ticketing()
            .list_cases(s.as_service(
                kind,
                pb::ListCasesRequest {
                    business_unit_id: "bu-league".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a service token listed a tenant's cases");
        assert!(refused_as_caller_not_allowed(&err), "{kind:?}: {err:?}");
        let err = s
            .approval()
            .list_approval_tasks(s.as_service(kind, pb::ListApprovalTasksRequest::default()))
            .await
            .expect_err("a service token listed approval tasks");
        assert!(refused_as_caller_not_allowed(&err), "{kind:?}: {err:?}");
        let err = s
            .authorization()
            .list_permissions(s.as_service(kind, pb::ListPermissionsRequest::default()))
            .await
            .expect_err("a service token listed permissions");
        assert!(refused_as_caller_not_allowed(&err), "{kind:?}: {err:?}");
    }
    assert_eq!(limits(s).await, before, "the daily limits changed");
}

// Admission does not touch the database: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_callers_of_the_table_sqlite() {
    let system = TestSystem::start(Backend::Sqlite).await;
    every_rpc_admits_exactly_the_callers_of_the_table(&system).await;
    system.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_token_changes_a_daily_limit_or_reads_across_tenants_sqlite() {
    let system = TestSystem::start(Backend::Sqlite).await;
    no_service_token_changes_a_daily_limit_or_reads_across_tenants(&system).await;
    system.shutdown().await.expect("clean shutdown");
}
