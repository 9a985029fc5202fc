//! `sspm up`: the four services in one process. Also used by the end-to-end test harness,
//! so tests run the system exactly as operators do.

pub mod certs;
pub mod keys;

use std::collections::HashMap;
use std::future::Future;

use sspm_authorization::seed::demo;
use sspm_platform::db::{Found, connect_and_inspect};
use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Builds the four services: each connects and migrates its database and binds the given
/// listener, or its configured address when none is given.
pub async fn build_all(
    config: &SspmConfig,
    listeners: HashMap<ServiceKind, TcpListener>,
) -> anyhow::Result<Vec<ServiceApp>> {
    build_some(config, listeners, &ServiceKind::ALL).await
}

/// Builds the services of `kinds` (dependencies first: authorization, ticketing, approval,
/// request), like [`build_all`].
pub async fn build_some(
    config: &SspmConfig,
    mut listeners: HashMap<ServiceKind, TcpListener>,
    kinds: &[ServiceKind],
) -> anyhow::Result<Vec<ServiceApp>> {
    let mut apps = Vec::new();
    for kind in [
        ServiceKind::Authorization,
        ServiceKind::Ticketing,
        ServiceKind::Approval,
        ServiceKind::Request,
    ] {
        if !kinds.contains(&kind) {
            continue;
        }
        let listener = listeners.remove(&kind);
        apps.push(match kind {
            ServiceKind::Authorization => sspm_authorization::build(config.clone(), listener).await?,
            ServiceKind::Ticketing => sspm_ticketing::build(config.clone(), listener).await?,
            ServiceKind::Approval => sspm_approval::build(config.clone(), listener).await?,
            ServiceKind::Request => sspm_request::build(config.clone(), listener).await?,
        });
    }
    Ok(apps)
}

/// `sspm init`: creates SSPM's schema in the databases of `kinds` that have none, and
/// leaves the others alone; what each held before. The one way to start a production
/// deployment on empty databases (RELIABILITY.md, "Lost data").
pub async fn init(config: &SspmConfig, kinds: &[ServiceKind]) -> anyhow::Result<Vec<(ServiceKind, Found)>> {
    use sspm_platform::db::migrate;
    let mut out = Vec::new();
    for &kind in kinds {
        let database = |e: sspm_platform::db::DbErr| anyhow::anyhow!("{} service: database: {e}", kind.name());
        let (db, found) = connect_and_inspect(&config.database_url(kind))
            .await
            .map_err(database)?;
        if found != Found::Initialised {
            match kind {
                ServiceKind::Request => migrate::<sspm_request::migration::Migrator>(&db).await,
                ServiceKind::Authorization => migrate::<sspm_authorization::migration::Migrator>(&db).await,
                ServiceKind::Approval => migrate::<sspm_approval::migration::Migrator>(&db).await,
                ServiceKind::Ticketing => migrate::<sspm_ticketing::migration::Migrator>(&db).await,
            }
            .map_err(database)?;
        }
        db.close().await?;
        out.push((kind, found));
    }
    Ok(out)
}

/// Serves `apps` until `shutdown` completes, then stops them all and waits for in-flight
/// calls. If one service stops or fails, the others are stopped too: a partial system is
/// no system.
pub async fn run_all(apps: Vec<ServiceApp>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for app in apps {
        let mut rx = stop_rx.clone();
        let name = app.kind.name();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            (name, app.run_until_stopped(stopped).await)
        });
    }
    let stop_all = stop_tx.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_all.send(true);
    });
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined?;
        let _ = stop_tx.send(true);
        if let Err(e) = result {
            tracing::error!(service = name, error = %e, "service failed");
            first_error.get_or_insert(e.context(format!("{name} service failed")));
        }
    }
    signal.abort();
    first_error.map_or(Ok(()), Err)
}

/// Port limits of the demo business units: (id, concurrent, outbound, agentless).
pub const DEMO_LIMITS: [sspm_request::DemoLimits; 5] = [
    (demo::PARTNER, demo::CLUSTER, demo::PARTNER, 200, 50, 50),
    (demo::CUSTOMER, demo::CLUSTER, demo::PARTNER, 100, 40, 20),
    (demo::SIBLING, demo::CLUSTER, demo::PARTNER, 50, 0, 0),
    (demo::NO_GATEWAY, demo::CLUSTER, demo::PARTNER, 80, 10, 10),
    (demo::OTHER_PARTNER, "E39", demo::OTHER_PARTNER, 300, 100, 100),
];

/// The demo's partner pool and cluster capacity (R12, R13): Classics, Inc. bought 12,000
/// concurrent ports for its customers and itself, cluster C14 carries 20,000.
pub const DEMO_SIZES: [sspm_request::DemoSize; 2] = [
    (
        sspm_request::entities::capacity::Level::Pool,
        demo::PARTNER,
        (12_000, 6_000, 6_000),
    ),
    (
        sspm_request::entities::capacity::Level::Cluster,
        demo::CLUSTER,
        (20_000, 10_000, 10_000),
    ),
];

/// Seeds the demo tenancy (see the README) into the services' databases where they are
/// empty; whether anything was seeded.
pub async fn seed_demo(apps: &[ServiceApp], config: &SspmConfig) -> anyhow::Result<bool> {
    let mut seeded = false;
    for app in apps {
        seeded |= match app.kind {
            ServiceKind::Authorization => sspm_authorization::seed::seed_demo(&app.db).await?,
            ServiceKind::Request => sspm_request::seed_demo(&app.db, &DEMO_LIMITS, &DEMO_SIZES).await?,
            ServiceKind::Approval => {
                sspm_approval::seed_demo(&app.db, demo::NETOPS, config.daily_limits.default_max_daily_increase).await?
            }
            ServiceKind::Ticketing => false,
        };
    }
    Ok(seeded)
}

/// `sspm up`: builds the four services on their configured addresses, seeds the demo
/// tenancy when asked, prints how to call them and runs them until `shutdown`.
pub async fn up(
    config: SspmConfig,
    demo: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let apps = build_all(&config, HashMap::new()).await?;
    if demo && seed_demo(&apps, &config).await? {
        tracing::info!(data_dir = %config.data_dir.display(), "demo tenancy seeded");
    }
    let mut banner = String::from("SSPM is up (gRPC, and metrics at http://<admin>/metrics):\n");
    for app in &apps {
        let show = |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        banner.push_str(&format!(
            "  {:<14} {:<18} admin {}\n",
            app.kind.name(),
            show(app.local_addr()),
            show(app.admin_addr())
        ));
    }
    if demo {
        banner.push_str(&demo_help(&config, &apps));
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{banner}");
    }
    run_all(apps, shutdown).await
}

/// How grpcurl reaches the request service: `-plaintext`, or `-cacert <CA>` over TLS.
pub fn grpcurl_transport(config: &SspmConfig) -> String {
    match (&config.clients.ca_path, config.services.request.tls()) {
        (Some(ca), true) => format!("-cacert {}", ca.display()),
        _ => "-plaintext".to_owned(),
    }
}

/// Ready-to-paste grpcurl commands for the demo tenancy, with development tokens.
fn demo_help(config: &SspmConfig, apps: &[ServiceApp]) -> String {
    let addr = |kind: ServiceKind| {
        apps.iter()
            .find(|a| a.kind == kind)
            .and_then(|a| a.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let minter = sspm_platform::TokenMinter::new(config);
    let token = |p: &str| match sspm_platform::auth::parse_principal(p) {
        Ok(id) => minter.mint(&id, config.auth.token_ttl_seconds),
        Err(_) => String::new(),
    };
    let request = addr(ServiceKind::Request);
    let approval = addr(ServiceKind::Approval);
    format!(
        "\nDemo tenancy: partner \"Classics, Inc.\" ({partner}) on cluster {cluster}, its customer \
\"The League of the Scarlet Pimpernel\" ({customer}); tokens below are valid for {ttl} s.\n\n\
export PERCY=\"{percy}\"      # Percy Blakeney, partner administrator (View + Create)\n\
export NETOPS=\"{netops}\"     # Network Operations (daily limits, approvals)\n\n\
grpcurl {tls} -H \"authorization: Bearer $PERCY\" -d '{{\"business_unit_id\":\"{customer}\"}}' \\\n  \
{request} sspm.v1.PortRequestService/GetPortLimits\n\
grpcurl {tls} -H \"authorization: Bearer $PERCY\" -d '{{\"request_id\":\"demo-1\",\"business_unit_id\":\"{customer}\",\"targets\":{{\"concurrent\":150}}}}' \\\n  \
{request} sspm.v1.PortRequestService/CreatePortChangeRequest\n\
grpcurl {tls} -H \"authorization: Bearer $NETOPS\" -d '{{\"states\":[\"APPROVAL_TASK_STATE_PENDING\"]}}' \\\n  \
{approval} sspm.v1.ApprovalService/ListApprovalTasks\n\n\
More: the README's walkthrough; `sspm token <principal>` mints other tokens.\n",
        partner = demo::PARTNER,
        customer = demo::CUSTOMER,
        cluster = demo::CLUSTER,
        ttl = config.auth.token_ttl_seconds,
        tls = grpcurl_transport(config),
        percy = token(demo::PARTNER_ADMIN),
        netops = token(demo::NETOPS),
    )
}
