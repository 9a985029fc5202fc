//! The request service: port limits per business unit, port change requests and their
//! history, and the workflow that drives each request to a terminal state
//! (docs/ARCHITECTURE.md, "The reconciler and the outbox").
//!
//! It owns its database (schema in [`migration`]) and serves `sspm.v1.PortRequestService`.
//!
//! How it is laid out: [`model`] is the request as the steps see it, [`plan`] the
//! transition table (pure: request, event, time → next step), [`store`] writes a step in
//! one transaction, [`outbox`] carries out the calls a step queued, [`workflow`] runs the
//! steps (create's first steps inline, decisions, reverts, commands), [`worker`] its
//! background loops, [`api`] the handlers (parse, authorise, command), [`watch`] the watch
//! streams, and [`bulk`] what only the load harness writes.

pub mod admit;
pub mod api;
pub mod capacity;
pub mod convert;
pub mod entities;
pub mod events;
pub mod feed;
pub mod migration;
pub mod model;
pub mod outbox;
pub mod plan;
pub mod publish;
pub mod store;
pub mod watch;
pub mod worker;
pub mod workflow;

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbErr};
use sspm_platform::client::connect_lazy;
use sspm_platform::rpc::{Authz, ServiceIdentity, now_micros};
use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use sspm_proto::internal::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::internal::v1::ticketing_service_client::TicketingServiceClient;
use sspm_proto::v1::approval_service_client::ApprovalServiceClient as PublicApprovalServiceClient;
use sspm_proto::v1::port_request_service_server::PortRequestServiceServer;
use tokio::net::TcpListener;

/// Connects and migrates the request service's database, binds its listener (`listener`,
/// or the configured address) and starts the reconciler's background loops.
pub async fn build(config: SspmConfig, listener: Option<TcpListener>) -> anyhow::Result<ServiceApp> {
    let app = ServiceApp::prepare::<migration::Migrator>(
        ServiceKind::Request,
        sspm_proto::service_names::PORT_REQUEST,
        &config,
        listener,
    )
    .await?;
    let identity = ServiceIdentity::new(ServiceKind::Request, &config)?;
    let endpoint = |k| config.services.get(k).endpoint();
    let authz = Authz::new(&config, identity.clone())?;
    let readers = authz.audit_readers();
    let store = store::Store::new(app.db.clone())
        .with_reader(app.read_db.clone())
        .with_lite(app.lite_reader()?)
        .with_group_commit(config.workflow.group_commit_queue);
    let approval = connect_lazy(&endpoint(ServiceKind::Approval), &config.clients)?;
    let outbox = outbox::Outbox {
        ticketing: TicketingServiceClient::new(connect_lazy(&endpoint(ServiceKind::Ticketing), &config.clients)?),
        approval: ApprovalServiceClient::new(approval.clone()),
        approval_reads: PublicApprovalServiceClient::new(approval),
        identity,
    };
    let workflow = Arc::new(workflow::Workflow::new(store, authz, outbox, config.workflow.clone()));
    let watchers = watch::Watchers::new(
        config.admission.max_watch_streams,
        config.admission.per_principal_max_watch_streams,
    );
    let feed = feed::Feed::new();
    let api = api::RequestApi::new(
        Arc::clone(&workflow),
        config.price()?,
        app.draining(),
        watchers.clone(),
        feed.clone(),
    );
    let mut background = workflow.spawn_background();
    let store = workflow.store().clone();
    background.push(feed.spawn(
        store.clone(),
        Arc::clone(&workflow),
        std::time::Duration::from_millis(config.events.poll_ms),
    ));
    let publishing = !config.events.nats_url.is_empty();
    if publishing {
        background.push(publish::Publisher::new(config.events.clone(), &store, feed.clone()).spawn());
    }
    background.push(feed::spawn_pruner(
        store.clone(),
        config.events.retention_days,
        publishing,
        std::time::Duration::from_secs(600),
    ));
    let writes = store.clone();
    app.metrics().observed_counter(
        "sspm.db.write_transactions",
        "Write transactions of the request service (explicit ones and single writing statements), each one commit",
        move || writes.write_transactions(),
    );
    background.push(watchers.spawn_poller(
        store.clone(),
        Arc::clone(&workflow),
        std::time::Duration::from_millis(config.workflow.watch_poll_ms),
    ));
    register_figures(&app, store, watchers, publishing);
    Ok(app
        .map_server(|s| s.add_service(PortRequestServiceServer::new(api)))
        .with_audit(readers)
        .with_background(background))
}

/// `sspm_requests{state, approval_path}`: requests by state, and approved ones by path
/// (automatic or reviewed); `sspm_outbox_pending`: calls to other services not yet made;
/// `sspm_watch_streams` and `sspm_watch_polls`: watch streams open, and the queries made
/// for all of them (watch.rs); with a NATS publisher, `sspm_events_pending`: events not
/// yet acknowledged by JetStream (publish.rs).
fn register_figures(app: &ServiceApp, store: store::Store, watchers: Arc<watch::Watchers>, publishing: bool) {
    let requests = app
        .metrics()
        .gauge("sspm.requests", "Port change requests by state and approval path");
    let pending = app.metrics().gauge(
        "sspm.outbox.pending",
        "Calls to other services decided but not yet carried out (retried with backoff)",
    );
    let streams = app.metrics().gauge(
        "sspm.watch.streams",
        "WatchPortChangeRequest streams open in this process",
    );
    let polls = app.metrics().gauge(
        "sspm.watch.polls",
        "Queries made since start to find changes of watched requests (one per poll for all streams)",
    );
    let events_pending = publishing.then(|| {
        app.metrics().gauge(
            "sspm.events.pending",
            "Events not yet acknowledged by NATS JetStream (the publisher's backlog; retried with backoff)",
        )
    });
    app.metrics().on_refresh(move || {
        let (store, requests, pending) = (store.clone(), requests.clone(), pending.clone());
        let events_pending = events_pending.clone();
        streams.set_all([(vec![], i64::try_from(watchers.streams()).unwrap_or(i64::MAX))]);
        polls.set_all([(vec![], i64::try_from(watchers.polls()).unwrap_or(i64::MAX))]);
        async move {
            let (rows, waiting) = store.figures().await?;
            // Every state appears, at zero if no request is in it, so alerts see it.
            use sea_orm::{ActiveEnum, Iterable};
            let mut values: Vec<_> = entities::request::State::iter()
                .filter(|s| !rows.iter().any(|(state, _, _)| state == s))
                .map(|s| (vec![("state", s.to_value()), ("approval_path", "NONE".to_owned())], 0))
                .collect();
            values.extend(rows.into_iter().map(|(state, path, n)| {
                (
                    vec![
                        ("state", state.to_value()),
                        (
                            "approval_path",
                            path.map_or_else(|| "NONE".to_owned(), |p| p.to_value()),
                        ),
                    ],
                    n,
                )
            }));
            requests.set_all(values);
            pending.set_all([(vec![], i64::try_from(waiting).unwrap_or(i64::MAX))]);
            if let Some(gauge) = events_pending {
                let backlog = publish::pending(store.db()).await?;
                gauge.set_all([(vec![], i64::try_from(backlog).unwrap_or(i64::MAX))]);
            }
            Ok(())
        }
    });
}

/// One demo business unit's limits: the business unit, its cluster, its pool (its partner,
/// or itself), and its concurrent, outbound and agentless ports.
pub type DemoLimits = (&'static str, &'static str, &'static str, i32, i32, i32);

/// One demo pool or cluster capacity: its level, its name (the partner's business unit, or
/// the cluster), and its concurrent, outbound and agentless ports.
pub type DemoSize = (entities::capacity::Level, &'static str, (u32, u32, u32));

/// Demo data of `sspm up`: the port limits of the demo business units and the sizes of the
/// demo pools and clusters, unless SSPM has limits on record already.
pub async fn seed_demo(db: &DatabaseConnection, limits: &[DemoLimits], sizes: &[DemoSize]) -> Result<bool, DbErr> {
    use sea_orm::{EntityTrait, PaginatorTrait};
    if entities::limits::Entity::find().count(db).await? > 0 {
        return Ok(false);
    }
    let store = store::Store::new(db.clone());
    for (bu, cluster, pool, c, o, a) in limits {
        let membership = capacity::Membership {
            cluster: (*cluster).to_owned(),
            pool: (*pool).to_owned(),
        };
        // The account representative's onboarding path (SetProvisionedLimits), as the
        // demo's account representative would take it.
        let provisioned = store
            .provision(bu, &membership, "demo", "demo tenancy", now_micros(), |_| {
                sspm_rules::PortLimits::parse((*c).into(), (*o).into(), (*a).into(), "limits")
            })
            .await?;
        if let store::Provisioned::OpenRequest(_) | store::Provisioned::Invalid(_) = provisioned {
            return Err(DbErr::Custom(format!("demo limits of {bu} refused: {provisioned:?}")));
        }
    }
    for (level, name, (concurrent, outbound, agentless)) in sizes {
        let size = sspm_rules::capacity::Ports {
            concurrent: *concurrent,
            outbound: *outbound,
            agentless: *agentless,
        };
        let set = store
            .set_size(*level, name, Some(size), "demo", "demo tenancy", now_micros())
            .await?;
        if let Err(v) = set {
            return Err(DbErr::Custom(format!("demo size of {name} refused: {v}")));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod schema_tests {
    use sea_orm::{ConnectionTrait, DatabaseConnection};
    use sspm_platform::db::{DbErrorKind, classify, connect_and_migrate};
    use sspm_platform::testing;

    use crate::migration::Migrator;

    async fn insert(db: &DatabaseConnection, id: &str, bu: &str, state: &str) -> Result<(), sea_orm::DbErr> {
        db.execute_unprepared(&format!(
            "INSERT INTO port_change_requests (request_id, business_unit_id, cluster, requester, state, \
             before_concurrent, before_outbound, before_agentless, target_concurrent, cost_change_micros, currency, \
             attempts, create_time, update_time) \
             VALUES ('{id}', '{bu}', 'C14', 'alice', '{state}', 100, 0, 0, 120, 250000000, 'USD', 0, 1, 1)"
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

    /// GetPortLimits's read answers the same through SQLite's hop-free reader as through
    /// sea-orm (which PostgreSQL uses): no limits yet, limits, an open request.
    #[tokio::test]
    async fn limits_read_without_a_hop_answers_as_sea_orm_does() {
        let test_db = testing::fresh_sqlite();
        let db = connect_and_migrate::<Migrator>(&test_db.url).await.unwrap();
        let count = std::sync::Arc::new(sspm_platform::db::StatementCount::default());
        let lite = sspm_platform::lite::LiteReader::open(&test_db.url, 1, std::sync::Arc::clone(&count)).unwrap();
        let orm = crate::store::Store::new(db.clone());
        let hop_free = crate::store::Store::new(db.clone()).with_lite(lite);
        let both = async |bu: &str| {
            let a = orm.limits_and_open_request(bu).await.unwrap();
            let b = hop_free.limits_and_open_request(bu).await.unwrap();
            assert_eq!(a, b, "{bu}");
            a
        };
        assert_eq!(both("bu-1").await, (None, None));
        db.execute_unprepared("INSERT INTO port_limits VALUES ('bu-1', 120, 10, 5, 3, 77, 'C14', 'bu-p')")
            .await
            .unwrap();
        insert(&db, "r1", "bu-1", "APPROVED").await.unwrap();
        let (limits, open) = both("bu-1").await;
        assert_eq!(
            limits.map(|l| (
                l.concurrent,
                l.outbound,
                l.agentless,
                l.version,
                l.update_time,
                l.pool_id
            )),
            Some((120, 10, 5, 3, 77, Some("bu-p".to_owned())))
        );
        assert_eq!(open, None);
        insert(&db, "r2", "bu-1", "UNDER_REVIEW").await.unwrap();
        assert_eq!(both("bu-1").await.1.as_deref(), Some("r2"));
        assert_eq!(both("bu-2").await, (None, None));
        assert_eq!(count.get(), 4, "each read counted");
    }

    /// The open-request lookup (every create, every GetPortLimits) reads the R5 partial index,
    /// not every request of the business unit: its cost must not grow with the history.
    #[tokio::test]
    async fn open_request_lookup_uses_the_r5_index_on_sqlite() {
        let db = connect_and_migrate::<Migrator>(&testing::fresh_sqlite().url)
            .await
            .unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT request_id FROM port_change_requests \
             WHERE business_unit_id = 'bu-1' AND {} LIMIT 1",
            crate::store::open_state_sql()
        );
        let plan: Vec<String> = db
            .query_all_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index::<String>(3).unwrap())
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("ux_requests_one_open_per_business_unit")),
            "{plan:?}"
        );
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

    /// Replicas that start together migrate one at a time: none fails on the others' tables.
    async fn replicas_starting_together_all_migrate(url: &str) {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.to_owned();
                tokio::spawn(async move { connect_and_migrate::<Migrator>(&url).await.map(|_| ()) })
            })
            .collect();
        for start in starts {
            start.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_all_migrate_on_sqlite() {
        // The file exists already, as after a first start. (Several processes switching one
        // brand-new file to WAL at once is SQLite's own race: replicas belong on PostgreSQL.)
        let db = testing::fresh_sqlite();
        sspm_platform::db::connect(&db.url).await.unwrap();
        replicas_starting_together_all_migrate(&db.url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn replicas_starting_together_all_migrate_on_postgres() {
        replicas_starting_together_all_migrate(&testing::fresh_postgres("request").await.url).await;
    }
}
