//! The four services as separate processes (`sspm serve <service>`), so a test can kill one
//! with SIGKILL, restart it and watch the others carry on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sspm_platform::ServiceKind;
use sspm_platform::client::{InternalChannel, connect_lazy};
use sspm_platform::config::ClientConfig;
use sspm_proto::v1 as pb;
use sspm_proto::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use sspm_proto::v1::ticketing_service_client::TicketingServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::free_port;

/// Where the services keep their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file per service in the cluster's directory.
    Sqlite,
    /// One fresh database per service on the `SSPM_TEST_POSTGRES_URL` server.
    Postgres,
    /// One database per service on another PostgreSQL server, given by its base URL
    /// (`postgres://user@host:port`); the databases must exist (named `sspm_<service>`).
    PostgresAt(String),
}

/// Four service processes on fixed ports, each started, killed and restarted on its own;
/// and further replicas of a service, on the same database.
///
/// Replica `n` of a service calls replica `n` of the services it depends on where there is
/// one, else replica 0, so that two request replicas talk to two approval replicas.
pub struct Cluster {
    dir: tempfile::TempDir,
    ports: HashMap<(ServiceKind, usize), u16>,
    databases: HashMap<ServiceKind, String>,
    running: HashMap<(ServiceKind, usize), Child>,
    starts: usize,
    extra_env: Vec<(String, String)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

impl Cluster {
    /// A cluster on `backend` (nothing started yet); `env` is added to every process's
    /// environment (`SSPM__…` settings).
    pub async fn new(backend: Backend, env: &[(&str, &str)]) -> Self {
        let mut databases = HashMap::new();
        for kind in ServiceKind::ALL {
            match &backend {
                Backend::Sqlite => {}
                Backend::Postgres => {
                    let db = sspm_platform::testing::fresh_postgres(&format!("faults_{}", kind.name())).await;
                    databases.insert(kind, db.url);
                }
                Backend::PostgresAt(base) => {
                    databases.insert(kind, format!("{base}/sspm_{}", kind.name()));
                }
            }
        }
        Self {
            dir: tempfile::tempdir().unwrap(),
            ports: ServiceKind::ALL.iter().map(|k| ((*k, 0), free_port())).collect(),
            databases,
            running: HashMap::new(),
            starts: 0,
            extra_env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// Starts every service (dependencies first) and waits until each serves.
    pub async fn start_all(&mut self) {
        for kind in [
            ServiceKind::Authorization,
            ServiceKind::Ticketing,
            ServiceKind::Approval,
            ServiceKind::Request,
        ] {
            self.start(kind).await;
        }
    }

    /// Starts `kind` (seeding its part of the demo tenancy into an empty database) and waits
    /// until it serves.
    pub async fn start(&mut self, kind: ServiceKind) {
        self.start_replica(kind, 0).await;
    }

    /// Starts replica `n` of `kind` (0 is the one [`Cluster::start`] starts) on its own port
    /// and the service's one database, and waits until it serves. Start replica 0 first: it
    /// migrates and seeds the database.
    pub async fn start_replica(&mut self, kind: ServiceKind, n: usize) {
        let key = (kind, n);
        assert!(
            !self.running.contains_key(&key),
            "{} #{n} is running already",
            kind.name()
        );
        self.ports.entry(key).or_insert_with(free_port);
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(kind, self.starts)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sspm"));
        cmd.args(["serve", kind.name(), "--demo", "--data-dir"])
            .arg(self.dir.path())
            .env_remove("SSPM_CONFIG")
            .env("RUST_LOG", "info")
            // The tests drive the system as fast as it answers, as one or two users; the
            // per-user rate limit is tested on its own (tests/tests/admission.rs).
            .env("SSPM__ADMISSION__PER_PRINCIPAL_PER_SECOND", "0");
        for k in ServiceKind::ALL {
            let port = if k == kind {
                self.ports[&key]
            } else {
                self.ports.get(&(k, n)).copied().unwrap_or(self.ports[&(k, 0)])
            };
            let name = k.name().to_uppercase();
            cmd.env(format!("SSPM__SERVICES__{name}__LISTEN"), format!("127.0.0.1:{port}"));
            cmd.env(format!("SSPM__SERVICES__{name}__ADMIN_LISTEN"), "127.0.0.1:0");
            if let Some(url) = self.databases.get(&k) {
                cmd.env(format!("SSPM__SERVICES__{name}__DATABASE_URL"), url);
            }
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().unwrap();
        self.running.insert(key, child);
        self.wait_serving(key).await;
    }

    /// The process id of `kind` (replica 0).
    pub fn pid(&self, kind: ServiceKind) -> u32 {
        self.running[&(kind, 0)].id()
    }

    /// Kills `kind` with SIGKILL: no shutdown, in-flight calls and transactions cut short.
    pub fn kill(&mut self, kind: ServiceKind) {
        let mut child = self.running.remove(&(kind, 0)).expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops every service with SIGTERM and checks that each exits cleanly (within 20 s).
    /// Approval goes first: its decision feed has the request service subscribed, and a
    /// server must not wait for subscribers that never hang up.
    pub async fn terminate_all(&mut self) {
        let order = [
            ServiceKind::Approval,
            ServiceKind::Ticketing,
            ServiceKind::Authorization,
            ServiceKind::Request,
        ];
        let mut keys: Vec<(ServiceKind, usize)> = self.running.keys().copied().collect();
        keys.sort_by_key(|(kind, n)| (order.iter().position(|k| k == kind), *n));
        for (kind, n) in keys {
            let Some(mut child) = self.running.remove(&(kind, n)) else {
                continue;
            };
            let pid = child.id().to_string();
            assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} #{n} ignored SIGTERM",
                    kind.name()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(status.success(), "{} #{n} exited with {status:?}", kind.name());
        }
    }

    async fn wait_serving(&mut self, key: (ServiceKind, usize)) {
        let (kind, n) = key;
        let mut health = HealthClient::new(self.replica_channel(kind, n));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let serving = health
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                return;
            }
            if let Some(status) = self.running.get_mut(&key).and_then(|c| c.try_wait().unwrap()) {
                panic!("{} #{n} exited at start-up with {status:?}", kind.name());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not serving within 60 s",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self, kind: ServiceKind, start: usize) -> PathBuf {
        self.dir.path().join(format!("{start:02}-{}.log", kind.name()))
    }

    /// The directory of the SQLite databases.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Everything `kind` wrote to its logs, over all its starts.
    pub fn logs_of(&self, kind: ServiceKind) -> String {
        (1..=self.starts)
            .filter_map(|start| std::fs::read_to_string(self.log_path(kind, start)).ok())
            .collect()
    }

    /// Prints every process's log (on failure, to see what the services said).
    pub fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Without the frames of a backtrace (RUST_BACKTRACE is inherited): the error
            // itself must show.
            let tail: Vec<_> = text
                .lines()
                .rev()
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
                })
                .take(40)
                .collect();
            eprintln!("---- {} (last lines)", log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// A channel to `kind` (short deadlines: a dead service answers UNAVAILABLE quickly).
    pub fn channel(&self, kind: ServiceKind) -> InternalChannel {
        self.replica_channel(kind, 0)
    }

    /// A channel to replica `n` of `kind`.
    pub fn replica_channel(&self, kind: ServiceKind, n: usize) -> InternalChannel {
        let cfg = ClientConfig {
            timeout_ms: 3_000,
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        };
        connect_lazy(&format!("http://127.0.0.1:{}", self.ports[&(kind, n)]), &cfg).unwrap()
    }

    /// Clients of the services, which outlive restarts (the ports stay).
    pub fn clients(&self) -> Clients {
        self.replica_clients(0)
    }

    /// Clients of replica `n` of each service (replica 0 where it has no replica `n`).
    pub fn replica_clients(&self, n: usize) -> Clients {
        let of = |kind| {
            let n = if self.ports.contains_key(&(kind, n)) { n } else { 0 };
            self.replica_channel(kind, n)
        };
        Clients {
            request: of(ServiceKind::Request),
            approval: of(ServiceKind::Approval),
            ticketing: of(ServiceKind::Ticketing),
        }
    }
}

/// Clients of a [`Cluster`]'s services; their channels reconnect after a restart.
#[derive(Clone)]
pub struct Clients {
    request: InternalChannel,
    approval: InternalChannel,
    ticketing: InternalChannel,
}

impl Clients {
    /// A client of the request service.
    pub fn requests(&self) -> PortRequestServiceClient<InternalChannel> {
        PortRequestServiceClient::new(self.request.clone())
    }

    /// A client of the approval service.
    pub fn approval(&self) -> ApprovalServiceClient<InternalChannel> {
        ApprovalServiceClient::new(self.approval.clone())
    }

    /// A client of the ticketing service.
    pub fn ticketing(&self) -> TicketingServiceClient<InternalChannel> {
        TicketingServiceClient::new(self.ticketing.clone())
    }
}

/// Every case of `business_unit_id`.
pub async fn cases_of(cluster: &Clients, business_unit_id: &str) -> Vec<pb::Case> {
    let mut cases = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = cluster
            .ticketing()
            .list_cases(super::authed(
                "percy@classics.example",
                pb::ListCasesRequest {
                    business_unit_id: business_unit_id.into(),
                    page_size: 500,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .expect("list cases")
            .into_inner();
        cases.extend(page.cases);
        if page.next_page_token.is_empty() {
            return cases;
        }
        page_token = page.next_page_token;
    }
}
