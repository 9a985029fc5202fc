//! The request service: port limits per business unit, port change requests and their
//! history, and the workflow that drives each request to a terminal state (DESIGN §2).
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.PortRequestService`.

pub mod migration;

use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use tokio::net::TcpListener;

/// Connects and migrates the request service's database and binds its listener (`listener`,
/// or the configured address).
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Request,
        sspm_proto::service_names::PORT_REQUEST,
        &config,
        listener,
    )
    .await
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::{ConnectionTrait, DatabaseConnection};
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    async fn insert(db: &DatabaseConnection, id: &str, bu: &str, state: &str) -> Result<(), sea_orm::DbErr> {
        db.execute_unprepared(&format!(
            "INSERT INTO port_change_requests (request_id, business_unit_id, cluster, requester, state, payload_hash, \
             before_concurrent, before_outbound, before_agentless, target_concurrent, cost_change_micros, currency, \
             attempts, create_time, update_time) \
             VALUES ('{id}', '{bu}', 'C14', 'alice', '{state}', 'h', 100, 0, 0, 120, 250000000, 'USD', 0, 1, 1)"
        ))
        .await
        .map(|_| ())
    }

    /// R5 lives in the database: a second open request for a business unit is refused by the
    /// partial unique index, whatever code path inserts it; closed requests do not count.
    async fn one_open_request_per_business_unit(url: &str) {
        let db = connect_and_migrate::<Migrator>(url).await.unwrap();
        insert(&db, "r1", "bu-1", "NEW").await.unwrap();
        let err = insert(&db, "r2", "bu-1", "PENDING_INFORMATION").await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation, "{err}");
        insert(&db, "r3", "bu-2", "UNDER_REVIEW").await.unwrap();
        db.execute_unprepared("UPDATE port_change_requests SET state = 'APPROVED' WHERE request_id = 'r1'")
            .await
            .unwrap();
        insert(&db, "r4", "bu-1", "NEW").await.unwrap();
        insert(&db, "r5", "bu-1", "REJECTED").await.unwrap();
        // the idempotency key
        let err = insert(&db, "r4", "bu-9", "APPROVED").await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation);
        // R1 as a constraint on stored limits
        let err = db
            .execute_unprepared("INSERT INTO port_limits VALUES ('bu-1', 10000, 0, 0, 0, 1)")
            .await
            .unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::Other, "check constraint: {err}");
        // migrations are idempotent at start-up
        drop(db);
        connect_and_migrate::<Migrator>(url).await.unwrap();
    }

    #[tokio::test]
    async fn r5_is_a_database_constraint_on_sqlite() {
        one_open_request_per_business_unit(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn r5_is_a_database_constraint_on_postgres() {
        one_open_request_per_business_unit(&testing::fresh_postgres("request").await.url).await;
    }
}
