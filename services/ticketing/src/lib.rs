//! The ticketing service: support cases with Salesforce-style case numbers, comments,
//! status and resolution.
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.TicketingService`.

pub mod api;
pub mod entities;
#[cfg(any(test, feature = "testing"))]
pub mod fake_salesforce;
pub mod migration;
pub mod salesforce;
pub mod store;

use sspm_platform::rpc::{Authz, ServiceIdentity};
use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use sspm_proto::v1::ticketing_service_server::TicketingServiceServer;
use tokio::net::TcpListener;

/// Connects and migrates the ticketing service's database and binds its listener.
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    // The Salesforce client (salesforce.rs) exists; the service does not use it yet. Refuse
    // rather than keep cases locally when an org was asked for.
    anyhow::ensure!(
        config.ticketing.backend == sspm_platform::config::TicketingBackend::Local,
        "ticketing.backend = \"salesforce\" is not available yet: the ticketing service keeps cases in its own database only (ticketing.backend = \"local\")"
    );
    let app = ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Ticketing,
        sspm_proto::service_names::TICKETING,
        &config,
        listener,
    )
    .await?;
    let authz = Authz::new(&config, ServiceIdentity::new(ServiceKind::Ticketing, &config))?;
    let readers = authz.audit_readers();
    let api = api::TicketingApi::new(
        store::Store::new(app.db.clone()).with_reader(app.read_db.clone()),
        authz,
    );
    Ok(app
        .map_server(|s| s.add_service(TicketingServiceServer::new(api)))
        .with_audit(readers))
}

#[cfg(test)]
mod backend_tests {
    use sspm_platform::config::TicketingBackend;

    /// Asked for an org it cannot use yet, the service does not start (rather than keep the
    /// cases where nobody looks for them).
    #[tokio::test]
    async fn the_salesforce_backend_is_refused_until_it_is_used() {
        let mut config = sspm_platform::SspmConfig::default();
        config.ticketing.backend = TicketingBackend::Salesforce;
        let Err(err) = super::build(config, None).await else {
            panic!("the service started with backend = salesforce");
        };
        assert!(err.to_string().contains("not available yet"), "{err}");
    }
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::ConnectionTrait;
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    /// Case numbers and external references are unique: opening a case twice for one
    /// request cannot create two cases.
    async fn case_numbers_and_references_are_unique(url: &str) {
        let db = connect_and_migrate::<Migrator>(url).await.unwrap();
        let open = |number: &str, reference: &str| {
            format!(
                "INSERT INTO cases (case_number, external_reference, subject, description, business_unit_id, \
                 requester, status, create_time, update_time) \
                 VALUES ('{number}', '{reference}', 's', 'd', 'bu-1', 'alice', 'NEW', 1, 1)"
            )
        };
        db.execute_unprepared(&open("00001000", "r1")).await.unwrap();
        let err = db.execute_unprepared(&open("00001001", "r1")).await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation, "{err}");
        let err = db.execute_unprepared(&open("00001000", "r2")).await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation, "{err}");
        let err = db
            .execute_unprepared(
                "INSERT INTO case_comments (case_id, author, body, create_time) VALUES (999, 'a', 'b', 1)",
            )
            .await
            .unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::ForeignKeyViolation, "{err}");
    }

    #[tokio::test]
    async fn case_constraints_on_sqlite() {
        case_numbers_and_references_are_unique(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn case_constraints_on_postgres() {
        case_numbers_and_references_are_unique(&testing::fresh_postgres("ticketing").await.url).await;
    }
}
