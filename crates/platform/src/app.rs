//! What every service binary does: load config, init telemetry, connect and migrate its
//! database, bind, serve until SIGTERM/SIGINT. Services supply only their migrations and
//! gRPC handlers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tokio::net::TcpListener;

use crate::auth::{RateLimits, TokenVerifier};
use crate::config::{ServiceKind, SspmConfig};
use crate::db::Found;
use crate::metrics::Metrics;
use crate::server::{ServiceServer, bind, shutdown_signal};

/// A service that is connected, migrated and bound, ready to serve.
#[derive(Debug)]
pub struct ServiceApp {
    /// Which service.
    pub kind: ServiceKind,
    /// Its database.
    pub db: DatabaseConnection,
    /// The same database for plain reads outside transactions: a pool of its own on SQLite
    /// (see [`crate::db::connect_reader`]), else the same pool as `db`.
    pub read_db: DatabaseConnection,
    /// The database's URL when it is a SQLite file (no credentials in it), and its statement
    /// count, for [`ServiceApp::lite_reader`].
    sqlite_url: Option<String>,
    statements: std::sync::Arc<crate::db::StatementCount>,
    metrics: Metrics,
    admin: TcpListener,
    /// Its settings (the token is redacted in Debug).
    admin_config: crate::config::AdminConfig,
    /// `audit.retention_days`.
    audit_retention_days: u32,
    server: ServiceServer,
    background: Vec<tokio::task::JoinHandle<()>>,
    draining: tokio::sync::watch::Sender<bool>,
}

/// Tells long-lived calls (server streams) that the service is shutting down, so they end
/// and the drain completes instead of waiting for subscribers that never hang up.
#[derive(Debug, Clone)]
pub struct Draining(tokio::sync::watch::Receiver<bool>);

impl Draining {
    /// Completes once the service starts shutting down (at once if it has).
    pub async fn started(&mut self) {
        // An error means the service is gone: shutting down too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }

    /// The status a stream ends with when the service shuts down: UNAVAILABLE, so the
    /// caller resubscribes (to another replica, or to this one once it is back).
    pub fn status() -> tonic::Status {
        tonic::Status::unavailable("the server is shutting down: subscribe again")
    }
}

/// How often each service prunes its audit trail (`audit.retention_days`), after once at start.
const AUDIT_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

impl ServiceApp {
    /// Connects the service's database (running migrations `M`), binds `listener` or the
    /// configured address, and prepares a server that lists `api` in reflection.
    pub async fn prepare<M: MigratorTrait>(
        kind: ServiceKind,
        api: &'static str,
        config: &SspmConfig,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        let svc = config.services.get(kind);
        if config.profile == crate::config::Profile::Production && !svc.tls() {
            anyhow::bail!(
                "{} service: the production profile requires TLS: set services.{}.tls_cert_path and tls_key_path",
                kind.name(),
                kind.name()
            );
        }
        // Keys before the database: a deployment missing them fails at once, naming them.
        let verifier = TokenVerifier::new(config).map_err(|e| anyhow::anyhow!("{} service: {e:#}", kind.name()))?;
        let url = config.database_url(kind);
        let database = |e: sea_orm::DbErr| anyhow::anyhow!("{} service: database: {e}", kind.name());
        let (mut db, found) = crate::db::connect_and_inspect(&url).await.map_err(database)?;
        check_found(kind, config, &url, found)?;
        crate::db::migrate::<M>(&db).await.map_err(database)?;
        // Counted from here: the service's own work, not its migrations.
        let statements = std::sync::Arc::new(crate::db::StatementCount::default());
        statements.attach(&mut db);
        let read_db = match crate::db::connect_reader(&url)
            .await
            .map_err(|e| anyhow::anyhow!("{} service: database readers: {e}", kind.name()))?
        {
            Some(mut readers) => {
                statements.attach(&mut readers);
                readers
            }
            None => db.clone(),
        };
        let listener = match listener {
            Some(l) => l,
            None => {
                let addr = config.services.get(kind).listen;
                bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} service: cannot listen on {addr}: {e}", kind.name()))?
            }
        };
        let admin_addr = svc.admin_listen;
        let admin = bind(admin_addr).await.map_err(|e| {
            anyhow::anyhow!(
                "{} service: cannot listen on {admin_addr} (admin_listen): {e}",
                kind.name()
            )
        })?;
        let metrics = Metrics::new(&format!("sspm-{}", kind.name()))?;
        metrics.observed_counter(
            "sspm.db.statements",
            "SQL statements run by the service's database connections since it started",
            {
                let statements = std::sync::Arc::clone(&statements);
                move || statements.get()
            },
        );
        let mut server = ServiceServer::new(kind.name(), listener, verifier)
            .advertise(api)
            .with_metrics(metrics.rpc())
            .with_max_in_flight(config.admission.max_in_flight)
            .with_per_principal_in_flight(config.admission.per_principal_max_in_flight)
            .with_limits(config.server.clone())
            .with_rate_limits(RateLimits::new(
                config.admission.per_principal_per_second,
                config.admission.per_principal_burst,
            ));
        if let (Some(cert), Some(key)) = (&svc.tls_cert_path, &svc.tls_key_path) {
            let tls = crate::tls::server_config(cert, key)
                .map_err(|e| anyhow::anyhow!("{} service: TLS: {e:#}", kind.name()))?;
            server = server.with_tls(tls);
        }
        Ok(Self {
            kind,
            db,
            read_db,
            sqlite_url: crate::db::sqlite_path(&url).is_some().then(|| url.clone()),
            statements,
            metrics,
            admin,
            admin_config: config.admin.clone(),
            audit_retention_days: config.audit.retention_days,
            server,
            background: Vec::new(),
            draining: tokio::sync::watch::Sender::new(false),
        })
    }

    /// On SQLite, read-only connections for the hot path's one-statement reads without a
    /// thread hop ([`crate::lite`]), their statements counted with the service's; `None` on
    /// PostgreSQL. Opened by the services that use them.
    pub fn lite_reader(&self) -> anyhow::Result<Option<std::sync::Arc<crate::lite::LiteReader>>> {
        let Some(url) = &self.sqlite_url else {
            return Ok(None);
        };
        crate::lite::LiteReader::open(
            url,
            crate::db::SQLITE_READERS as usize,
            std::sync::Arc::clone(&self.statements),
        )
        .map_err(|e| anyhow::anyhow!("{} service: database readers: {e}", self.kind.name()))
    }

    /// The signal its streams end on at shutdown.
    pub fn draining(&self) -> Draining {
        Draining(self.draining.subscribe())
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The address of the admin HTTP server (`GET /metrics`).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The service's metrics, to register its business figures in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Adds handlers to the server (see [`ServiceServer::add_service`]).
    pub fn map_server(mut self, f: impl FnOnce(ServiceServer) -> ServiceServer) -> Self {
        self.server = f(self.server);
        self
    }

    /// Serves the service's audit trail (`sspm.v1.AuditService`) to services and to the
    /// users `readers` allows.
    pub fn with_audit(self, readers: crate::audit::StaffCheck) -> Self {
        let api = crate::audit::AuditApi::new(self.db.clone(), self.kind.name(), readers);
        self.map_server(|s| s.add_service(sspm_proto::v1::audit_service_server::AuditServiceServer::new(api)))
    }

    /// Background tasks of the service (workers, subscriptions), stopped after the server
    /// has drained. They must tolerate being stopped at any await point (their writes are
    /// transactions, rolled back when dropped).
    pub fn with_background(mut self, tasks: Vec<tokio::task::JoinHandle<()>>) -> Self {
        self.background.extend(tasks);
        self
    }

    /// Serves until `shutdown` completes, then drains in-flight calls, stops the background
    /// tasks and closes the database.
    pub async fn run_until_stopped(mut self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_addr = self.admin.local_addr()?;
        let admin = tokio::spawn(crate::metrics::serve_admin(
            self.admin,
            self.metrics.clone(),
            Some(self.admin_config.bearer_token.clone()),
            async move {
                let _ = admin_stopped.await;
            },
        ));
        tracing::info!(service = self.kind.name(), addr = %admin_addr, "admin (GET /metrics) serving");
        if crate::metrics::otlp_metrics_configured() {
            // OTLP export reads the business figures on its own schedule: keep them fresh.
            let metrics = self.metrics.clone();
            self.background.push(tokio::spawn(async move {
                loop {
                    metrics.refresh().await;
                    tokio::time::sleep(std::time::Duration::from_secs(15)).await;
                }
            }));
        }
        self.background.push(crate::audit::spawn_pruner(
            self.db.clone(),
            self.kind.name(),
            self.audit_retention_days,
            AUDIT_PRUNE_EVERY,
        ));
        let draining = self.draining.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = draining.send(true);
        };
        let result = self.server.serve(shutdown).await;
        let _ = admin_stop.send(());
        match admin.await {
            Ok(Err(e)) => tracing::warn!(service = self.kind.name(), error = %e, "admin server failed"),
            Err(e) => tracing::warn!(service = self.kind.name(), error = %e, "admin server panicked"),
            Ok(Ok(())) => {}
        }
        // The final export blocks until the collector answers: off the runtime's workers,
        // which the exporter itself (and the other services of `sspm up`) still need.
        let metrics = self.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
        for task in &self.background {
            task.abort();
        }
        for task in self.background {
            let _ = task.await;
        }
        if let Err(e) = self.db.close().await {
            tracing::warn!(service = self.kind.name(), error = %e, "database did not close cleanly");
        }
        result
    }
}

/// Whether `kind` may start on a database in the state `found`: a database with SSPM's
/// schema always; one without only in the dev profile (a loud warning when a SQLite file
/// was there but held nothing). Otherwise the start is refused (`sspm init` creates the
/// schema of a new deployment's databases), so
/// that a lost database is never silently replaced by an empty one (a ticketing service
/// starting empty would hand out case numbers again).
pub fn check_found(kind: ServiceKind, config: &SspmConfig, url: &str, found: Found) -> anyhow::Result<()> {
    let name = kind.name();
    let shown = crate::db::sqlite_path(url).map_or_else(|| "its PostgreSQL database".to_owned(), |p| p.to_owned());
    match (found, config.profile) {
        (Found::Initialised, _) => Ok(()),
        (Found::Nothing, crate::config::Profile::Dev) => {
            tracing::info!(service = name, database = %shown, "creating the database");
            Ok(())
        }
        (Found::Empty, crate::config::Profile::Dev) => {
            if crate::db::sqlite_path(url).is_some() {
                tracing::error!(
                    service = name,
                    database = %shown,
                    "THE DATABASE FILE EXISTS BUT HOLDS NOTHING: its data is gone (the file was cut, or its WAL lost). \
                     Starting EMPTY because this is the dev profile; in production this start would be refused. \
                     Stop now and restore a backup (README, Backups) if the data mattered"
                );
            }
            Ok(())
        }
        (_, crate::config::Profile::Production) => Err(anyhow::anyhow!(
            "{name} service: {shown} holds no SSPM data. If this is a new deployment, initialise it once with \
             `sspm init` (README, \"Initialising a deployment\"); if it held data, the data is gone: restore it \
             from a backup (README, Backups) rather than start empty"
        )),
    }
}

/// Command-line arguments every service binary takes.
#[derive(Debug, Default)]
pub struct Args {
    /// `--config <path>` (or `SSPM_CONFIG`): the TOML file.
    pub config: Option<PathBuf>,
}

/// The usage line of a service binary.
pub fn usage(binary: &str) -> String {
    format!(
        "usage: {binary} [--config <sspm.toml>]\n\nConfiguration: defaults < the file (or $SSPM_CONFIG) < SSPM__* environment variables.\nSee the README for every key."
    )
}

/// Parses `--config <path>` / `--config=<path>`; `SSPM_CONFIG` when absent.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => out.config = Some(it.next().ok_or("--config needs a path")?.into()),
            s if s.starts_with("--config=") => out.config = Some(s["--config=".len()..].into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if out.config.is_none() {
        out.config = std::env::var_os("SSPM_CONFIG").map(PathBuf::from);
    }
    Ok(out)
}

/// The whole `main` of a service binary.
pub async fn run_service<F, Fut>(kind: ServiceKind, build: F) -> anyhow::Result<()>
where
    F: FnOnce(SspmConfig, Option<TcpListener>) -> Fut,
    Fut: Future<Output = anyhow::Result<ServiceApp>>,
{
    let binary = format!("sspm-{}", kind.name());
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        #[allow(clippy::print_stdout)]
        {
            println!("{}", usage(&binary));
        }
        return Ok(());
    }
    let args = parse_args(raw).map_err(|e| anyhow::anyhow!("{e}\n{}", usage(&binary)))?;
    let config = SspmConfig::load(args.config.as_deref())?;
    let _telemetry = crate::telemetry::init(&binary)?;
    let app = build(config, None).await?;
    app.run_until_stopped(shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait as _;

    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn production_never_starts_on_a_database_without_sspm_data() {
        let dev = SspmConfig::default();
        let prod = SspmConfig {
            profile: crate::config::Profile::Production,
            ..SspmConfig::default()
        };
        let url = "sqlite://data/ticketing.db?mode=rwc";
        for found in [Found::Nothing, Found::Empty] {
            let e = check_found(ServiceKind::Ticketing, &prod, url, found)
                .unwrap_err()
                .to_string();
            assert!(e.contains("ticketing service") && e.contains("sspm init"), "{e}");
            assert!(e.contains("restore it"), "{e}");
            assert!(check_found(ServiceKind::Ticketing, &dev, url, found).is_ok());
        }
        assert!(check_found(ServiceKind::Ticketing, &prod, url, Found::Initialised).is_ok());
        let e = check_found(ServiceKind::Request, &prod, "postgres://db/request", Found::Empty)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its PostgreSQL database"), "{e}");
    }

    #[tokio::test]
    async fn a_sqlite_file_that_was_cut_is_found_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let found = || async {
            let (db, found) = crate::db::connect_and_inspect(&url).await.unwrap();
            db.close().await.unwrap();
            found
        };
        assert_eq!(found().await, Found::Nothing);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(found().await, Found::Empty);
        std::fs::remove_file(&path).unwrap();
        let db = crate::db::connect(&url).await.unwrap();
        db.execute_unprepared("CREATE TABLE seaql_migrations (version TEXT)")
            .await
            .unwrap();
        db.close().await.unwrap();
        assert_eq!(found().await, Found::Initialised);
    }

    #[test]
    fn config_path_is_taken_from_the_flag() {
        assert_eq!(args(&["--config", "x.toml"]).unwrap().config, Some("x.toml".into()));
        assert_eq!(args(&["--config=y.toml"]).unwrap().config, Some("y.toml".into()));
        assert!(args(&["--config"]).is_err());
        assert!(args(&["serve"]).is_err());
    }
}
