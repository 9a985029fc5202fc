//! The end-to-end test harness: the four real services, in-process, on ephemeral ports, each
//! with a fresh database (SQLite files, or PostgreSQL databases for the PostgreSQL variants).
//!
//! Listeners are bound first and handed to the services (no port races); the harness waits
//! until every service reports SERVING and shuts the system down explicitly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sspm_authorization::seed::demo;
use sspm_platform::client::{InternalChannel, connect_lazy};
use sspm_platform::testing::{self, TestDatabase};
use sspm_platform::{ServiceIdentity, ServiceKind, SspmConfig, TokenMinter};
use sspm_proto::internal::v1::approval_service_client::ApprovalServiceClient as InternalApprovalClient;
use sspm_proto::internal::v1::authorization_service_client::AuthorizationServiceClient as InternalAuthorizationClient;
use sspm_proto::internal::v1::ticketing_service_client::TicketingServiceClient as InternalTicketingClient;
use sspm_proto::v1 as pb;
use sspm_proto::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::v1::authorization_service_client::AuthorizationServiceClient;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use sspm_proto::v1::ticketing_service_client::TicketingServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Defines two tests running the async scenario `$body(&TestSystem)`: `$sqlite` on SQLite,
/// and `$postgres` on PostgreSQL (ignored unless run with `--ignored` and
/// `SSPM_TEST_POSTGRES_URL`). Each starts its own system, checks its event log when the
/// scenario is over ([`TestSystem::check_event_log`]) and shuts it down cleanly.
#[macro_export]
macro_rules! scenario {
    ($body:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let system = $crate::TestSystem::start($crate::Backend::Sqlite).await;
            $body(&system).await;
            system.check_event_log().await;
            system.shutdown().await.expect("clean shutdown");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
        async fn $postgres() {
            let system = $crate::TestSystem::start($crate::Backend::Postgres).await;
            $body(&system).await;
            system.check_event_log().await;
            system.shutdown().await.expect("clean shutdown");
        }
    };
}

/// The sum of the samples of `name` whose labels include all of `labels` in a Prometheus
/// text page (0 when none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let rest = rest.trim_end_matches('}');
            let have: Vec<(&str, &str)> = rest
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|want| have.contains(want))
                .then(|| v.parse::<f64>().expect("a metric value"))
        })
        .sum()
}

/// Which database the services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file per service in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database per service on `SSPM_TEST_POSTGRES_URL`.
    Postgres,
}

/// The services whose port serves the gRPC service `name` (fully qualified): its own, or
/// every one for the audit trail.
pub fn served_by(name: &str) -> Vec<ServiceKind> {
    match name {
        "sspm.v1.PortRequestService" => vec![ServiceKind::Request],
        "sspm.v1.AuthorizationService" | "sspm.internal.v1.AuthorizationService" => vec![ServiceKind::Authorization],
        "sspm.v1.ApprovalService" | "sspm.internal.v1.ApprovalService" => vec![ServiceKind::Approval],
        "sspm.v1.TicketingService" | "sspm.internal.v1.TicketingService" => vec![ServiceKind::Ticketing],
        "sspm.v1.AuditService" => ServiceKind::ALL.to_vec(),
        other => panic!("{other} is not an SSPM service"),
    }
}

/// The running system.
#[derive(Debug)]
pub struct TestSystem {
    /// The configuration the services run with.
    pub config: SspmConfig,
    addrs: HashMap<ServiceKind, SocketAddr>,
    admin_addrs: HashMap<ServiceKind, SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<anyhow::Result<()>>>,
    late: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    _databases: Vec<TestDatabase>,
}

/// Initialises test logging once; silent unless `TEST_LOG` is set (then `RUST_LOG` filters).
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        sspm_platform::telemetry::install_propagator();
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A name part no other test system of this machine uses at the same time.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

impl TestSystem {
    /// Starts the four services and waits until each reports SERVING.
    pub async fn start(backend: Backend) -> Self {
        Self::start_without(backend, &[]).await
    }

    /// Starts every service but `held` (their addresses refuse connections, as during an
    /// outage); [`TestSystem::start_held`] starts one later.
    pub async fn start_without(backend: Backend, held: &[ServiceKind]) -> Self {
        Self::start_configured(backend, held, |_| {}).await
    }

    /// [`TestSystem::start_without`], with `configure` changing the configuration first.
    pub async fn start_configured(
        backend: Backend,
        held: &[ServiceKind],
        configure: impl FnOnce(&mut SspmConfig),
    ) -> Self {
        init_test_logging();
        let mut config = SspmConfig::default();
        // Authorization answers are not reused in tests unless a test asks for it: a change
        // reaches the other services' caches within milliseconds, not before the RPC that
        // made it has answered, and tests check its effect at once. tests/tests/authz_cache.rs
        // tests the cache itself.
        config.clients.authz_cache_ttl_ms = 0;
        // Tests drive the system as fast as it answers, as a few users; the per-user rate
        // limit is tested on its own (tests/tests/admission.rs configures it).
        config.admission.per_principal_per_second = 0;
        // Fast background loops, so retries and polls show within a test's patience.
        config.workflow.poll_interval_ms = 50;
        config.workflow.retry_initial_ms = 100;
        config.workflow.retry_max_ms = 1_000;
        config.workflow.review_poll_seconds = 1;
        // With SSPM_TEST_NATS_URL (as `.ci/run` sets it), every system publishes its events
        // to a stream of its own on that server, and `check_event_log` compares the stream
        // with the feed.
        if let Some(url) = std::env::var("SSPM_TEST_NATS_URL").ok().filter(|u| !u.is_empty()) {
            let unique = unique_suffix();
            config.events.nats_url = url;
            config.events.stream = format!("SSPM_TEST_{unique}");
            config.events.subject_prefix = format!("sspmtest.{unique}");
            config.events.retry_initial_ms = 50;
            config.events.retry_max_ms = 1_000;
            config.events.stream_max_age_seconds = 3_600;
        }
        configure(&mut config);
        let mut listeners = HashMap::new();
        let mut addrs = HashMap::new();
        let mut databases = Vec::new();
        for kind in ServiceKind::ALL {
            let listener = sspm_platform::server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind an ephemeral port");
            let addr = listener.local_addr().expect("local address");
            let db = match backend {
                Backend::Sqlite => testing::fresh_sqlite(),
                Backend::Postgres => testing::fresh_postgres(kind.name()).await,
            };
            let svc = config.services.get_mut(kind);
            svc.listen = addr;
            svc.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
            svc.endpoint = Some(format!("http://{addr}"));
            svc.database_url = Some(db.url.clone());
            databases.push(db);
            if held.contains(&kind) {
                drop(listener);
            } else {
                listeners.insert(kind, listener);
            }
            addrs.insert(kind, addr);
        }
        config.validate().expect("test configuration is valid");
        let running: Vec<ServiceKind> = ServiceKind::ALL.into_iter().filter(|k| !held.contains(k)).collect();
        let apps = sspm_cli::build_some(&config, listeners, &running)
            .await
            .expect("services start");
        sspm_cli::seed_demo(&apps, &config).await.expect("demo tenancy seeded");
        let admin_addrs = apps
            .iter()
            .map(|a| (a.kind, a.admin_addr().expect("admin address")))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(sspm_cli::run_all(apps, async {
            let _ = stopped.await;
        }));
        let system = Self {
            config,
            addrs,
            admin_addrs,
            stop: Some(stop),
            running: Some(running),
            late: Vec::new(),
            _databases: databases,
        };
        for kind in ServiceKind::ALL.into_iter().filter(|k| !held.contains(k)) {
            system.wait_until_serving(kind).await;
        }
        system
    }

    /// Starts a service held back by [`TestSystem::start_without`], on its address.
    pub async fn start_held(&mut self, kind: ServiceKind) {
        let listener = sspm_platform::server::bind(self.addr(kind))
            .await
            .expect("rebind the held service's address");
        let mut apps = sspm_cli::build_some(&self.config, HashMap::from([(kind, listener)]), &[kind])
            .await
            .expect("held service starts");
        sspm_cli::seed_demo(&apps, &self.config).await.expect("demo data");
        let app = apps.pop().expect("one service");
        self.admin_addrs.insert(kind, app.admin_addr().expect("admin address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        self.late.push((stop, running));
        self.wait_until_serving(kind).await;
    }

    /// Starts another replica of `kind` on the same database, on a port of its own; its
    /// address. The other services keep calling the first one.
    pub async fn start_replica(&mut self, kind: ServiceKind) -> SocketAddr {
        let listener = sspm_platform::server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let mut apps = sspm_cli::build_some(&self.config, HashMap::from([(kind, listener)]), &[kind])
            .await
            .expect("replica starts");
        let app = apps.pop().expect("one service");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        self.late.push((stop, running));
        addr
    }

    /// The admin (metrics) address of one running service.
    pub fn admin_addr(&self, kind: ServiceKind) -> SocketAddr {
        self.admin_addrs[&kind]
    }

    /// `GET /metrics` of one service: the Prometheus text.
    pub async fn scrape(&self, kind: ServiceKind) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // HTTP/1.0: the server closes the connection after the one response.
        let mut stream = tokio::net::TcpStream::connect(self.admin_addr(kind))
            .await
            .expect("connect to the admin port");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: sspm\r\n\r\n")
            .await
            .expect("send the scrape");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read the scrape");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        body.to_owned()
    }

    /// The address of one service.
    pub fn addr(&self, kind: ServiceKind) -> SocketAddr {
        self.addrs[&kind]
    }

    /// A channel to one service, as another service would open it.
    pub fn channel(&self, kind: ServiceKind) -> InternalChannel {
        connect_lazy(&format!("http://{}", self.addr(kind)), &self.config.clients).expect("channel")
    }

    /// A development bearer token for the user `principal`.
    pub fn token(&self, principal: &str) -> String {
        let id = sspm_platform::auth::parse_principal(principal).expect("valid principal id");
        TokenMinter::new(&self.config).mint(&id, 600)
    }

    /// The service token of `kind`, signed with its own key, as it calls the others.
    pub fn service_token(&self, kind: ServiceKind) -> String {
        ServiceIdentity::new(kind, &self.config)
            .expect("the service's key")
            .token()
    }

    /// A request carrying the service token of `kind` (for internal RPCs such as OpenCase).
    pub fn as_service<T>(&self, kind: ServiceKind, message: T) -> tonic::Request<T> {
        ServiceIdentity::new(kind, &self.config)
            .expect("the service's key")
            .request(message, None)
    }

    /// A client of the request service.
    pub fn requests(&self) -> PortRequestServiceClient<InternalChannel> {
        PortRequestServiceClient::new(self.channel(ServiceKind::Request))
    }

    /// A client of the authorization service.
    pub fn authorization(&self) -> AuthorizationServiceClient<InternalChannel> {
        AuthorizationServiceClient::new(self.channel(ServiceKind::Authorization))
    }

    /// A client of the approval service.
    pub fn approval(&self) -> ApprovalServiceClient<InternalChannel> {
        ApprovalServiceClient::new(self.channel(ServiceKind::Approval))
    }

    /// A client of the ticketing service.
    pub fn ticketing(&self) -> TicketingServiceClient<InternalChannel> {
        TicketingServiceClient::new(self.channel(ServiceKind::Ticketing))
    }

    /// A client of the ticketing service's internal calls (`sspm.internal.v1`).
    pub fn internal_ticketing(&self) -> InternalTicketingClient<InternalChannel> {
        InternalTicketingClient::new(self.channel(ServiceKind::Ticketing))
    }

    /// A client of the approval service's internal calls (`sspm.internal.v1`).
    pub fn internal_approval(&self) -> InternalApprovalClient<InternalChannel> {
        InternalApprovalClient::new(self.channel(ServiceKind::Approval))
    }

    /// A client of the authorization service's internal calls (`sspm.internal.v1`).
    pub fn internal_authorization(&self) -> InternalAuthorizationClient<InternalChannel> {
        InternalAuthorizationClient::new(self.channel(ServiceKind::Authorization))
    }

    /// Calls the RPC at `path` on `target` with `message`, whatever the method's types (the
    /// answer is not decoded), as whoever `token` names; the status it ends with (OK when it
    /// was answered, or a stream opened).
    pub async fn call_raw<M>(&self, target: ServiceKind, path: &str, message: M, token: &str) -> tonic::Status
    where
        M: prost::Message + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel(target));
        grpc.ready().await.expect("channel ready");
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let codec = tonic_prost::ProstCodec::<M, ()>::default();
        let path = http::uri::PathAndQuery::try_from(path.to_owned()).expect("path");
        // Server-streaming framing serves unary methods too: one message, then the trailers.
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            grpc.server_streaming(request, path.clone(), codec),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} on {target:?} did not answer"));
        match answer {
            Ok(_) => tonic::Status::ok(""),
            Err(status) => status,
        }
    }

    /// A request carrying `principal`'s bearer token.
    pub fn authed<T>(&self, principal: &str, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token(principal))
            .parse()
            .expect("header value");
        req.metadata_mut().insert("authorization", value);
        req
    }

    /// Every event of the feed, oldest first, as the demo's platform consumer (Events ›
    /// Read all) pages through it from the start.
    pub async fn all_events(&self) -> Vec<pb::Event> {
        let mut out: Vec<pb::Event> = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let page = self
                .requests()
                .list_events(self.authed(
                    demo::EVENTS_CONSUMER,
                    pb::ListEventsRequest {
                        after_cursor: cursor.clone(),
                        page_size: 1_000,
                        ..Default::default()
                    },
                ))
                .await
                .expect("ListEvents")
                .into_inner();
            if page.events.is_empty() {
                return out;
            }
            cursor = page.next_cursor;
            out.extend(page.events);
        }
    }

    /// The event log holds what happened, once and in order (docs/EVENTS.md): positions
    /// strictly increase; each business unit's events are numbered 1, 2, 3, ... in feed
    /// order; ids are unique; and each business unit's `port_limits.changed` events chain
    /// (each starts from the limits the previous one left) up to the limits it has now,
    /// so no change of its limits is missing or told twice. Answers the events.
    pub async fn check_event_log(&self) -> Vec<pb::Event> {
        let events = self.all_events().await;
        let mut last_position = 0_i64;
        let mut sequences: HashMap<String, i64> = HashMap::new();
        let mut limits: HashMap<String, pb::PortLimits> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for e in &events {
            let position: i64 = e.cursor.parse().expect("a cursor is a position");
            assert!(position > last_position, "positions increase: {e:?}");
            last_position = position;
            assert!(ids.insert(e.id.clone()), "event {} told twice", e.id);
            assert_eq!(e.source, "sspm://request");
            let seq = sequences.entry(e.subject.clone()).or_default();
            assert_eq!(
                e.sequence,
                *seq + 1,
                "{}'s events are numbered without gaps: {e:?}",
                e.subject
            );
            *seq = e.sequence;
            assert_eq!(e.id, format!("{}/{}", e.subject, e.sequence));
            if let Some(pb::event::Data::PortLimitsChanged(c)) = &e.data {
                assert_eq!(e.r#type, "sspm.v1.port_limits.changed");
                assert_eq!(c.business_unit_id, e.subject);
                let zero = pb::PortLimits::default();
                let before = limits.get(&e.subject).unwrap_or(&zero);
                assert_eq!(c.before.as_ref(), Some(before), "{}'s changes chain: {e:?}", e.subject);
                assert_ne!(c.before, c.after, "a change changes something: {e:?}");
                limits.insert(e.subject.clone(), c.after.expect("after"));
            }
        }
        for (bu, after) in &limits {
            let now = self
                .requests()
                .get_port_limits(self.authed(
                    demo::ACCOUNT_REP,
                    pb::GetPortLimitsRequest {
                        business_unit_id: bu.clone(),
                    },
                ))
                .await;
            if let Ok(now) = now {
                let now = now.into_inner().limits.expect("limits");
                assert_eq!(&now, after, "the last port_limits.changed of {bu} is its limits now");
            }
        }
        if !self.config.events.nats_url.is_empty() {
            self.check_stream(&events).await;
        }
        events
    }

    /// The NATS stream holds the feed's `events`, each once, in the same order, on the
    /// subjects docs/EVENTS.md gives them (waits up to 20 s for the publisher).
    pub async fn check_stream(&self, events: &[pb::Event]) {
        let cfg = &self.config.events;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let streamed = loop {
            let streamed = sspm_request::publish::read_stream(&cfg.nats_url, &cfg.stream)
                .await
                .unwrap_or_default();
            if streamed.len() >= events.len() {
                break streamed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream holds {} of the feed's {} events after 20 s",
                streamed.len(),
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ids: Vec<&str> = streamed.iter().map(|m| m.id.as_str()).collect();
        let feed: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, feed, "the stream holds every event once, in the feed's order");
        for (m, e) in streamed.iter().zip(events) {
            assert_eq!(m.message_id, e.id, "Nats-Msg-Id is the event id");
            assert_eq!((m.event_type.as_str(), m.sequence), (e.r#type.as_str(), e.sequence));
            assert_eq!(m.subject, sspm_request::publish::subject_of(&cfg.subject_prefix, e));
        }
    }

    /// The limits of `business_unit`, as `principal` reads them.
    pub async fn port_limits(&self, principal: &str, business_unit: &str) -> pb::PortLimits {
        self.requests()
            .get_port_limits(self.authed(
                principal,
                pb::GetPortLimitsRequest {
                    business_unit_id: business_unit.into(),
                },
            ))
            .await
            .expect("limits")
            .into_inner()
            .limits
            .expect("limits set")
    }

    /// The port change request `id`, as `principal` reads it.
    pub async fn port_change_request(&self, principal: &str, id: &str) -> pb::PortChangeRequest {
        self.requests()
            .get_port_change_request(self.authed(principal, pb::GetPortChangeRequestRequest { request_id: id.into() }))
            .await
            .expect("get request")
            .into_inner()
            .request
            .expect("request")
    }

    /// Polls, as `principal`, until the request `id` reaches `state` (background steps), or
    /// panics after 15 s.
    pub async fn wait_for_state(
        &self,
        principal: &str,
        id: &str,
        state: pb::PortChangeRequestState,
    ) -> pb::PortChangeRequest {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.port_change_request(principal, id).await;
            if r.state() == state {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} still {:?}, expected {state:?}: {r:#?}",
                r.state()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The case numbered `number`, read by the demo partner administrator (who may view
    /// the demo tenancy's cases).
    pub async fn case(&self, number: &str) -> pb::Case {
        self.ticketing()
            .get_case(self.authed(
                demo::PARTNER_ADMIN,
                pb::GetCaseRequest {
                    key: Some(pb::get_case_request::Key::CaseNumber(number.into())),
                },
            ))
            .await
            .expect("case")
            .into_inner()
            .case
            .expect("case set")
    }

    /// The approval task of `request_id`, read by Network Operations once it exists (it is created in
    /// the background); panics after 15 s.
    pub async fn approval_task(&self, request_id: &str) -> pb::ApprovalTask {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self
                .approval()
                .get_approval_task(self.authed(
                    demo::NETOPS,
                    pb::GetApprovalTaskRequest {
                        key: Some(pb::get_approval_task_request::Key::RequestId(request_id.into())),
                    },
                ))
                .await;
            match got {
                Ok(t) => return t.into_inner().task.expect("task"),
                Err(e) if e.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no approval task for {request_id}: {e:?}"),
            }
        }
    }

    /// `approver` decides the approval task of `request_id` once it exists.
    pub async fn decide(&self, approver: &str, request_id: &str, approve: bool, reason: &str) -> pb::ApprovalTask {
        let task = self.approval_task(request_id).await;
        self.approval()
            .decide_approval_task(self.authed(
                approver,
                pb::DecideApprovalTaskRequest {
                    task_id: task.task_id,
                    approve,
                    reason: reason.into(),
                },
            ))
            .await
            .expect("decide")
            .into_inner()
            .task
            .expect("task")
    }

    /// `principal` asks for `concurrent` ports on `business_unit` (request id `request_id`).
    pub async fn create_concurrent(
        &self,
        principal: &str,
        request_id: &str,
        business_unit: &str,
        concurrent: i32,
    ) -> Result<sspm_proto::v1::CreatePortChangeRequestResponse, tonic::Status> {
        self.requests()
            .create_port_change_request(self.authed(
                principal,
                sspm_proto::v1::CreatePortChangeRequestRequest {
                    request_id: request_id.into(),
                    business_unit_id: business_unit.into(),
                    targets: Some(sspm_proto::v1::PortTargets {
                        concurrent: Some(concurrent),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn wait_until_serving(&self, kind: ServiceKind) {
        let mut health = HealthClient::new(self.channel(kind));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = health.check(HealthCheckRequest { service: String::new() }).await;
            match answer {
                Ok(r) if r.get_ref().status() == ServingStatus::Serving => return,
                other if tokio::time::Instant::now() > deadline => {
                    panic!("{} service not serving after 10 s: {other:?}", kind.name())
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Stops every service (graceful: in-flight calls finish) and returns how they ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for (stop, running) in std::mem::take(&mut self.late) {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(10), running)
                .await
                .map_err(|_| anyhow::anyhow!("a late service did not stop within 10 s"))???;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = match self.running.take() {
            Some(running) => tokio::time::timeout(Duration::from_secs(10), running)
                .await
                .map_err(|_| anyhow::anyhow!("services did not stop within 10 s"))??,
            None => Ok(()),
        };
        if !self.config.events.nats_url.is_empty() {
            // The test's own stream: gone with it.
            let _ =
                sspm_request::publish::delete_stream(&self.config.events.nats_url, &self.config.events.stream).await;
        }
        stopped
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        // A test that panicked before shutdown: stop the services anyway.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
