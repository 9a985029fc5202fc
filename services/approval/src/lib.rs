//! The approval service: daily limits set by Network Operations, the exact ledger of
//! automatic approvals, approval tasks for human review and the durable decision log.
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.ApprovalService`.

pub mod api;
pub mod entities;
pub mod migration;
pub mod store;

use sea_orm::{ActiveEnum, DatabaseConnection, DbErr, Iterable};
use sspm_platform::rpc::{Authz, ServiceIdentity, now_micros};
use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use sspm_proto::internal::v1::approval_service_server::ApprovalServiceServer as InternalApprovalServiceServer;
use sspm_proto::v1::approval_service_server::ApprovalServiceServer;
use tokio::net::TcpListener;

/// Connects and migrates the approval service's database and binds its listener.
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    let app = ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Approval,
        sspm_proto::service_names::APPROVAL,
        &config,
        listener,
    )
    .await?;
    let authz = Authz::new(&config, ServiceIdentity::new(ServiceKind::Approval, &config)?)?;
    let store = store::Store::new(app.db.clone(), config.daily_limits.default_max_daily_increase)
        .with_reader(app.read_db.clone())
        .with_group_commit(config.workflow.group_commit_queue);
    register_figures(&app, store.clone(), config.daily_limits.day_utc_offset_minutes * 60);
    let readers = authz.audit_readers();
    let api = api::ApprovalApi::new(store, authz, config.daily_limits.day_utc_offset_minutes, app.draining())
        .with_feed_poll(std::time::Duration::from_millis(config.workflow.decision_feed_poll_ms));
    Ok(app
        .map_server(|s| {
            s.add_service(ApprovalServiceServer::new(api.clone()))
                .add_service(InternalApprovalServiceServer::new(api))
        })
        .with_audit(readers))
}

/// Today's daily budget per cluster (`sspm_daily_budget_limit`, `_used`, `_left`) and the
/// approval tasks by state (`sspm_approval_tasks`).
fn register_figures(app: &ServiceApp, store: store::Store, day_offset_seconds: i32) {
    let m = app.metrics();
    let limit = m.gauge(
        "sspm.daily_budget.limit",
        "Today's daily limit of port increases, per cluster",
    );
    let used = m.gauge(
        "sspm.daily_budget.used",
        "Ports approved automatically today, per cluster",
    );
    let left = m.gauge(
        "sspm.daily_budget.left",
        "Ports that can still be approved automatically today, per cluster",
    );
    let tasks = m.gauge("sspm.approval_tasks", "Approval tasks (human reviews) by state");
    m.on_refresh(move || {
        let (store, limit, used, left, tasks) =
            (store.clone(), limit.clone(), used.clone(), left.clone(), tasks.clone());
        async move {
            let day = sspm_rules::daily::ledger_day(now_micros() / 1_000_000, day_offset_seconds);
            let (clusters, by_state) = store.figures(day).await?;
            let label = |c: &str| vec![("cluster", c.to_owned())];
            limit.set_all(clusters.iter().map(|(c, l, _)| (label(c), i64::from(*l))));
            used.set_all(clusters.iter().map(|(c, _, u)| (label(c), i64::from(*u))));
            left.set_all(clusters.iter().map(|(c, l, u)| (label(c), i64::from((l - u).max(0)))));
            // Every state appears, at zero if no task is in it, so alerts see it.
            tasks.set_all(entities::task::State::iter().map(|state| {
                let state = state.to_value();
                let n = by_state.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
                (vec![("state", state)], n)
            }));
            Ok(())
        }
    });
}

/// Demo data of `sspm up`: records the default daily limit as set by Network Operations,
/// unless one is set already.
pub async fn seed_demo(db: &DatabaseConnection, by: &str, default_max: u32) -> Result<bool, DbErr> {
    use sea_orm::{EntityTrait, PaginatorTrait};
    if entities::daily_limit::Entity::find().count(db).await? > 0 {
        return Ok(false);
    }
    store::Store::new(db.clone(), default_max)
        .set_limit(entities::daily_limit::Model {
            scope: entities::daily_limit::Scope::Default,
            target: String::new(),
            max_daily_increase: i32::try_from(default_max).unwrap_or(i32::MAX),
            updated_by: by.to_owned(),
            update_time: now_micros(),
        })
        .await?;
    Ok(true)
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::ConnectionTrait;
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    /// One reservation per request, one task per request, one decision per task, and a
    /// ledger total that cannot go negative.
    async fn ledger_and_decisions_are_unique(url: &str) {
        let db = connect_and_migrate::<Migrator>(url).await.unwrap();
        let reserve = "INSERT INTO ledger_reservations VALUES ('r1', 20514, 'C14', 'bu-1', 20, 1, NULL)";
        db.execute_unprepared(reserve).await.unwrap();
        let err = db.execute_unprepared(reserve).await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation, "{err}");
        let err = db
            .execute_unprepared("INSERT INTO ledger_totals VALUES (20514, 'CLUSTER', 'C14', -1)")
            .await
            .unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::Other, "check constraint: {err}");
        let task = |id: &str| {
            format!(
                "INSERT INTO approval_tasks (task_id, request_id, business_unit_id, cluster, requester, case_number, \
                 before_concurrent, before_outbound, before_agentless, target_concurrent, justification, \
                 cost_change_micros, currency, state, create_time) \
                 VALUES ('{id}', 'r1', 'bu-1', 'C14', 'alice', '00001001', 100, 0, 0, 900, 'peak', 1, 'USD', 'PENDING', 1)"
            )
        };
        db.execute_unprepared(&task("t1")).await.unwrap();
        let err = db.execute_unprepared(&task("t2")).await.unwrap_err();
        assert_eq!(
            classify(&err),
            DbErrorKind::UniqueViolation,
            "one task per request: {err}"
        );
        let decide = "INSERT INTO decision_events (task_id, request_id, approved, decided_by, reason, decide_time) \
                      VALUES ('t1', 'r1', true, 'netops', 'ok', 2)";
        db.execute_unprepared(decide).await.unwrap();
        let err = db.execute_unprepared(decide).await.unwrap_err();
        assert_eq!(
            classify(&err),
            DbErrorKind::UniqueViolation,
            "one decision per task: {err}"
        );
    }

    /// The migration that lets a release come first keeps every stored reservation, allows
    /// the 0-port tombstone and still refuses a negative increase; it also rolls back.
    async fn release_tombstones_migrate(url: &str) {
        use sea_orm_migration::MigratorTrait;
        let db = sea_orm::Database::connect(url).await.unwrap();
        let all = Migrator::migrations();
        let tombstones = all
            .iter()
            .position(|m| m.name() == "m20261123_000002_release_before_evaluation")
            .expect("the tombstone migration is listed");
        let before_tombstones = tombstones as u32;
        Migrator::up(&db, Some(before_tombstones)).await.unwrap();
        let zero = "INSERT INTO ledger_reservations VALUES ('r0', 20514, '', '', 0, 1, 1)";
        assert!(db.execute_unprepared(zero).await.is_err(), "0 refused before");
        db.execute_unprepared("INSERT INTO ledger_reservations VALUES ('r1', 20514, 'C14', 'bu-1', 20, 1, NULL)")
            .await
            .unwrap();
        Migrator::up(&db, None).await.unwrap();
        db.execute_unprepared(zero).await.unwrap();
        let negative = "INSERT INTO ledger_reservations VALUES ('r2', 20514, 'C14', 'bu-1', -1, 1, NULL)";
        assert!(db.execute_unprepared(negative).await.is_err(), "negative refused");
        let count = |sql: &'static str| {
            let db = db.clone();
            async move {
                let row = db
                    .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
                    .await
                    .unwrap()
                    .unwrap();
                row.try_get_by_index::<i64>(0).unwrap()
            }
        };
        let kept = "SELECT COUNT(*) FROM ledger_reservations WHERE request_id = 'r1' AND increase = 20 AND release_time IS NULL";
        assert_eq!(count(kept).await, 1, "the stored reservation survives");
        // Down to before the tombstone migration (and the ones listed after it).
        Migrator::down(&db, Some((all.len() - tombstones) as u32))
            .await
            .unwrap();
        assert_eq!(count(kept).await, 1, "and survives the rollback");
        assert_eq!(
            count("SELECT COUNT(*) FROM ledger_reservations").await,
            1,
            "tombstones dropped"
        );
        Migrator::up(&db, None).await.unwrap();
    }

    #[tokio::test]
    async fn release_tombstones_migrate_on_sqlite() {
        release_tombstones_migrate(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn release_tombstones_migrate_on_postgres() {
        release_tombstones_migrate(&testing::fresh_postgres("approval").await.url).await;
    }

    #[tokio::test]
    async fn ledger_constraints_on_sqlite() {
        ledger_and_decisions_are_unique(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn ledger_constraints_on_postgres() {
        ledger_and_decisions_are_unique(&testing::fresh_postgres("approval").await.url).await;
    }
}
