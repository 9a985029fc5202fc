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
use sspm_proto::internal::v1::authorization_service_server::AuthorizationServiceServer as InternalAuthorizationServiceServer;
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
    let store = store::Store::new(app.db.clone())
        .with_reader(app.read_db.clone())
        .with_lite(app.lite_reader()?);
    seed::bootstrap_account_representatives(store.db(), &config.auth.account_representatives).await?;
    let poll = std::time::Duration::from_millis(config.workflow.authz_change_poll_ms);
    let api = api::AuthorizationApi::start(store, app.draining(), poll).await?;
    let readers = api.audit_readers();
    Ok(app
        .map_server(|s| {
            s.add_service(AuthorizationServiceServer::new(api.clone()))
                .add_service(InternalAuthorizationServiceServer::new(api))
        })
        .with_audit(readers))
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::ConnectionTrait;
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    /// Every Check's reads answer the same through SQLite's hop-free reader as through
    /// sea-orm (which PostgreSQL uses): unknown principal and business unit, a principal
    /// without grants, one with several.
    #[tokio::test]
    async fn check_reads_without_a_hop_answer_as_sea_orm_does() {
        let test_db = testing::fresh_sqlite();
        let db = connect_and_migrate::<Migrator>(&test_db.url).await.unwrap();
        let count = std::sync::Arc::new(sspm_platform::db::StatementCount::default());
        let lite = sspm_platform::lite::LiteReader::open(&test_db.url, 2, std::sync::Arc::clone(&count)).unwrap();
        let orm = crate::store::Store::new(db.clone());
        let hop_free = crate::store::Store::new(db.clone()).with_lite(lite);
        let same = async |principal: &str, bu: &str| {
            let (a, b) = (
                orm.principal_with_grants(principal).await.unwrap(),
                hop_free.principal_with_grants(principal).await.unwrap(),
            );
            assert_eq!(a, b, "{principal}");
            let (c, d) = (
                orm.business_unit(bu).await.unwrap(),
                hop_free.business_unit(bu).await.unwrap(),
            );
            assert_eq!(c, d, "{bu}");
            (a, c)
        };
        assert_eq!(same("alice", "bu-classics").await, (None, None));
        for sql in [
            "INSERT INTO business_units VALUES ('bu-classics', 'Classics, Inc.', 'C14', NULL, true, false, 1, 2)",
            "INSERT INTO business_units VALUES ('bu-league', 'The League', 'C14', 'bu-classics', false, true, 3, 4)",
            "INSERT INTO principals VALUES ('alice', 'Alice', 'bu-classics', 'USER', 5)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        let (alice, classics) = same("alice", "bu-classics").await;
        assert!(alice.is_some_and(|(_, grants)| grants.is_empty()));
        assert!(classics.is_some_and(|b| b.monitoring_gateway_enabled && !b.personal_connection_enabled));
        for g in [
            "('alice', 'bu-classics', 'PORT_MANAGEMENT_VIEW', 'rep', 6)",
            "('alice', '', 'ACCOUNT_REPRESENTATIVE', 'rep', 7)",
        ] {
            db.execute_unprepared(&format!("INSERT INTO permission_grants VALUES {g}"))
                .await
                .unwrap();
        }
        let (alice, league) = same("alice", "bu-league").await;
        assert_eq!(alice.map(|(_, grants)| grants.len()), Some(2));
        assert_eq!(league.and_then(|b| b.partner_id).as_deref(), Some("bu-classics"));
        assert_eq!(count.get(), 6, "each read counted");
    }

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
