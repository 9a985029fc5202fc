//! The ticketing service: support cases with Salesforce-style case numbers, comments,
//! status and resolution.
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.TicketingService`.

pub mod api;
pub mod entities;
#[cfg(any(test, feature = "testing"))]
pub mod fake_salesforce;
pub mod migration;
pub mod org;
pub mod salesforce;
pub mod store;

use std::sync::Arc;

use sspm_platform::config::TicketingBackend;
use sspm_platform::rpc::{Authz, ServiceIdentity};
use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use sspm_proto::internal::v1::ticketing_service_server::TicketingServiceServer as InternalTicketingServiceServer;
use sspm_proto::v1::ticketing_service_server::TicketingServiceServer;
use tokio::net::TcpListener;

/// Connects and migrates the ticketing service's database and binds its listener; with
/// `ticketing.backend = "salesforce"`, also starts the worker that sends the cases' writes
/// to the org.
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    // Checked before anything is bound: a key file that cannot be read stops the start.
    let org = match config.ticketing.backend {
        TicketingBackend::Local => None,
        TicketingBackend::Salesforce => {
            Some(salesforce::Salesforce::new(config.ticketing.salesforce.clone()).map_err(anyhow::Error::msg)?)
        }
    };
    let app = ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Ticketing,
        sspm_proto::service_names::TICKETING,
        &config,
        listener,
    )
    .await?;
    let authz = Authz::new(&config, ServiceIdentity::new(ServiceKind::Ticketing, &config)?)?;
    let readers = authz.audit_readers();
    let store = store::Store::new(app.db.clone())
        .with_reader(app.read_db.clone())
        .with_group_commit(config.workflow.group_commit_queue);
    let (api, background) = match org {
        None => (api::TicketingApi::new(store, authz), vec![]),
        Some(client) => {
            let sync = Arc::new(org::OrgSync::new(store, client));
            register_figures(&app, sync.store().clone());
            let worker = tokio::spawn(Arc::clone(&sync).run());
            tracing::info!(
                login_url = config.ticketing.salesforce.login_url,
                "cases are kept in Salesforce"
            );
            (api::TicketingApi::with_org(sync, authz), vec![worker])
        }
    };
    Ok(app
        .map_server(|s| {
            s.add_service(TicketingServiceServer::new(api.clone()))
                .add_service(InternalTicketingServiceServer::new(api))
        })
        .with_audit(readers)
        .with_background(background))
}

/// `sspm_ticketing_org_writes{state}`: writes waiting for the Salesforce org (`pending`)
/// and writes it refused for good (`failed`).
fn register_figures(app: &ServiceApp, store: store::Store) {
    let writes = app.metrics().gauge(
        "sspm.ticketing.org_writes",
        "Case writes waiting for the Salesforce org (pending) or refused by it for good (failed)",
    );
    app.metrics().on_refresh(move || {
        let (store, writes) = (store.clone(), writes.clone());
        async move {
            let backlog = store.org_backlog().await?;
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            writes.set_all([
                (vec![("state", "pending".to_owned())], count(backlog.pending)),
                (vec![("state", "failed".to_owned())], count(backlog.failed)),
            ]);
            Ok(())
        }
    });
}

#[cfg(test)]
mod backend_tests {
    use sspm_platform::config::{SalesforceAuthFlow, TicketingBackend};

    /// A JWT bearer key that cannot be read stops the start, before anything is bound.
    #[tokio::test]
    async fn an_unreadable_key_stops_the_start() {
        let mut config = sspm_platform::SspmConfig::default();
        config.ticketing.backend = TicketingBackend::Salesforce;
        config.ticketing.salesforce.client_id = "key".to_owned();
        config.ticketing.salesforce.auth_flow = SalesforceAuthFlow::JwtBearer;
        config.ticketing.salesforce.username = "integration@acme.example".to_owned();
        config.ticketing.salesforce.private_key_path = Some("/nonexistent/sspm.pem".into());
        config.validate().unwrap();
        let Err(err) = super::build(config, None).await else {
            panic!("the service started without its key");
        };
        let text = err.to_string();
        assert!(
            text.starts_with("ticketing.salesforce.private_key_path /nonexistent/sspm.pem: "),
            "{text}"
        );
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
