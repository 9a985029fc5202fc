//! The authorization service: principals, business units (cluster, partner, feature flags)
//! and permission grants; answers "may principal P do action A on business unit B".
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.AuthorizationService`.

pub mod api;
pub mod entities;
pub mod migration;
pub mod model;
pub mod seed;
pub mod store;

use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use sspm_proto::v1::authorization_service_server::AuthorizationServiceServer;
use tokio::net::TcpListener;

/// Connects and migrates the authorization service's database, registers the configured
/// account representatives (`auth.account_representatives`) and binds its listener.
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    let app = ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Authorization,
        sspm_proto::service_names::AUTHORIZATION,
        &config,
        listener,
    )
    .await?;
    let store = store::Store::new(app.db.clone()).with_reader(app.read_db.clone());
    seed::bootstrap_account_representatives(store.db(), &config.auth.account_representatives).await?;
    let poll = std::time::Duration::from_millis(config.workflow.authz_change_poll_ms);
    let api = api::AuthorizationApi::start(store, app.draining(), poll).await?;
    let readers = api.audit_readers();
    Ok(app
        .map_server(|s| s.add_service(AuthorizationServiceServer::new(api)))
        .with_audit(readers))
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::ConnectionTrait;
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    /// Grants are unique per (principal, business unit, permission) and refer to real
    /// principals; partners are real business units.
    async fn grants_are_unique_and_refer_to_principals(url: &str) {
        let db = connect_and_migrate::<Migrator>(url).await.unwrap();
        db.execute_unprepared(
            "INSERT INTO business_units VALUES ('bu-classics', 'Classics, Inc.', 'C14', NULL, true, true, 1, 1)",
        )
        .await
        .unwrap();
        db.execute_unprepared(
            "INSERT INTO business_units VALUES ('bu-league', 'The League of the Scarlet Pimpernel', 'C14', 'bu-classics', true, false, 1, 1)",
        )
        .await
        .unwrap();
        let err = db
            .execute_unprepared(
                "INSERT INTO business_units VALUES ('bu-x', 'X', 'C14', 'bu-missing', true, false, 1, 1)",
            )
            .await
            .unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::ForeignKeyViolation, "{err}");
        db.execute_unprepared("INSERT INTO principals VALUES ('alice', 'Alice', 'bu-classics', 'USER', 1)")
            .await
            .unwrap();
        let grant = "INSERT INTO permission_grants VALUES ('alice', 'bu-classics', 'PORT_MANAGEMENT_CREATE', 'rep', 1)";
        db.execute_unprepared(grant).await.unwrap();
        let err = db.execute_unprepared(grant).await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation, "{err}");
        let err = db
            .execute_unprepared(
                "INSERT INTO permission_grants VALUES ('nobody', '', 'ACCOUNT_REPRESENTATIVE', 'rep', 1)",
            )
            .await
            .unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::ForeignKeyViolation, "{err}");
    }

    #[tokio::test]
    async fn grant_constraints_on_sqlite() {
        grants_are_unique_and_refer_to_principals(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn grant_constraints_on_postgres() {
        grants_are_unique_and_refer_to_principals(&testing::fresh_postgres("authorization").await.url).await;
    }
}
