//! Typed configuration: defaults < file (`sspm.toml`) < environment (`SSPM__...`).
//!
//! Environment variables use `__` between the prefix and every level, e.g.
//! `SSPM__SERVICES__REQUEST__LISTEN=0.0.0.0:50051` or `SSPM__AUTH__SIGNING_KEY=...`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod ticketing;
pub use ticketing::{SalesforceAuthFlow, SalesforceConfig, SalesforceStatuses, TicketingBackend, TicketingConfig};

/// Signing key used when none is configured. Fine on a laptop, refused in production.
pub const DEV_SIGNING_KEY: &str = "sspm-development-signing-key-do-not-use-in-production";

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or has the wrong shape.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {key}: {message}")]
    Invalid {
        /// The offending key, e.g. `pricing.price_per_concurrent_port`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// How strict the configuration checks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Development: the built-in signing key is accepted.
    #[default]
    Dev,
    /// Production: secrets must be configured.
    Production,
}

/// The whole system's configuration; each service reads its own section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SspmConfig {
    /// `dev` or `production`.
    pub profile: Profile,
    /// Where the default SQLite databases live.
    pub data_dir: PathBuf,
    /// Bearer tokens.
    pub auth: AuthConfig,
    /// Listen addresses, endpoints and databases of the four services.
    pub services: Services,
    /// Outgoing calls between services.
    pub clients: ClientConfig,
    /// Price of a concurrent port (R10).
    pub pricing: PricingConfig,
    /// Daily limits (R8).
    pub daily_limits: DailyLimitsConfig,
    /// The request service's reconciler.
    pub workflow: WorkflowConfig,
    /// What each service admits before a call reaches its handler.
    pub admission: AdmissionConfig,
    /// The ticketing service's case backend.
    pub ticketing: TicketingConfig,
    /// The admin HTTP port of every service (`GET /metrics`).
    pub admin: AdminConfig,
    /// Connection, HTTP/2 and request bounds of every service's gRPC port.
    pub server: ServerLimits,
    /// The request service's event log, its feed and its publisher (docs/EVENTS.md).
    pub events: EventsConfig,
    /// Every service's audit trail.
    pub audit: AuditConfig,
}

/// The longest retention (`events.retention_days`, `audit.retention_days`): a hundred years.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// Every service's audit trail (README, "Audit trail").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit events are kept this many days, then pruned (each service at start and every
    /// 10 minutes; the pruning is itself an audit event). 0: kept forever.
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        // A year: what compliance reviews usually look back over; longer than the events'.
        Self { retention_days: 365 }
    }
}

/// The event log (docs/EVENTS.md): its feed, its retention and the NATS JetStream publisher.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// How often each replica looks for events written by other replicas (to place them
    /// in the feed on PostgreSQL, and for its WatchEvents streams). Its own are seen at once.
    pub poll_ms: u64,
    /// Events are kept this many days, then pruned (once published, when a broker is
    /// configured), but for the requests' histories; a cursor from before is answered
    /// OUT_OF_RANGE. 0: kept forever.
    pub retention_days: u32,
    /// The NATS server the events are published to (`nats://host:4222`, several separated
    /// by commas); empty: no publisher (the gRPC feed alone).
    pub nats_url: String,
    /// The JetStream stream, created or updated at start from the settings below.
    pub stream: String,
    /// Events go to `<subject_prefix>.<type>.<business unit>`, e.g.
    /// `sspm.events.port_limits.changed.bu-classics`.
    pub subject_prefix: String,
    /// The stream keeps messages this many seconds (JetStream's `max_age`). 0: no limit.
    pub stream_max_age_seconds: u64,
    /// The stream's replicas (1 on a single server; 3 on a three-node cluster).
    pub stream_replicas: usize,
    /// JetStream drops a message whose `Nats-Msg-Id` it has seen within this many seconds
    /// (a republished event after a crash); longer than the longest retry.
    pub duplicate_window_seconds: u64,
    /// Events read and published per batch: all in flight before the first acknowledgement
    /// is awaited (at most 1,000).
    pub publish_batch: u64,
    /// First retry of a failed publish, in milliseconds (doubled up to `retry_max_ms`).
    pub retry_initial_ms: u64,
    /// Longest wait between two publish attempts, in milliseconds.
    pub retry_max_ms: u64,
    /// Waiting for JetStream's acknowledgement of one event at most this long.
    pub ack_timeout_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            poll_ms: 200,
            retention_days: 30,
            nats_url: String::new(),
            stream: "SSPM_EVENTS".to_owned(),
            subject_prefix: "sspm.events".to_owned(),
            stream_max_age_seconds: 7 * 24 * 3600,
            stream_replicas: 1,
            duplicate_window_seconds: 600,
            publish_batch: 256,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            ack_timeout_ms: 5_000,
        }
    }
}

/// Bounds of each gRPC listener, after Envoy's edge-proxy recommendations (README,
/// "Bounds on callers"): what one connection, one stream and one request may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Connections open at once per listener; one more is accepted and closed at once (the
    /// caller can try another replica), so the process never runs out of file descriptors.
    pub max_connections: usize,
    /// Streams (calls) open at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of a stream, in bytes: what a caller may send ahead.
    pub initial_stream_window_bytes: u32,
    /// HTTP/2 flow-control window of a connection, in bytes.
    pub initial_connection_window_bytes: u32,
    /// Largest header block of a request, in bytes (path, token and metadata).
    pub max_header_list_bytes: u32,
    /// Largest request message, in bytes; a larger one is refused with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// How long a call may take to send its request message after its headers, in
    /// milliseconds; a slower one is ended with DEADLINE_EXCEEDED and frees what it held.
    pub request_message_timeout_ms: u64,
    /// Interval of HTTP/2 PINGs on a connection, in milliseconds (0: none).
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed, in milliseconds.
    pub keepalive_timeout_ms: u64,
    /// A connection with no call open for this long is closed, in milliseconds (0: never).
    pub idle_timeout_ms: u64,
    /// Age at which a connection is asked to go away (HTTP/2 GOAWAY: the caller opens a new
    /// one, perhaps to another replica), in milliseconds (0: never).
    pub max_connection_age_ms: u64,
    /// How long calls may finish after that before the connection is closed, in milliseconds.
    pub max_connection_age_grace_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 100,
            initial_stream_window_bytes: 64 * 1024,
            initial_connection_window_bytes: 1024 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_request_bytes: 1024 * 1024,
            request_message_timeout_ms: 10_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            idle_timeout_ms: 300_000,
            max_connection_age_ms: 1_800_000,
            max_connection_age_grace_ms: 60_000,
        }
    }
}

/// A duration in milliseconds where 0 means "none" (timeouts and intervals that can be off).
pub fn optional_ms(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

impl ServerLimits {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be positive"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(invalid("server.max_concurrent_streams", "must be positive"));
        }
        // HTTP/2 (RFC 9113 §6.5.2): windows of at least the default 65,535 bytes keep
        // ordinary messages flowing, and at most 2^31-1.
        for (key, v) in [
            ("server.initial_stream_window_bytes", self.initial_stream_window_bytes),
            (
                "server.initial_connection_window_bytes",
                self.initial_connection_window_bytes,
            ),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&v) {
                return Err(invalid(key, "must be between 65535 and 2147483647"));
            }
        }
        if self.max_header_list_bytes < 4_096 {
            return Err(invalid("server.max_header_list_bytes", "must be at least 4096"));
        }
        if self.max_request_bytes < 4_096 {
            return Err(invalid("server.max_request_bytes", "must be at least 4096"));
        }
        if self.request_message_timeout_ms == 0 {
            return Err(invalid("server.request_message_timeout_ms", "must be positive"));
        }
        if self.keepalive_interval_ms > 0 && self.keepalive_timeout_ms == 0 {
            return Err(invalid(
                "server.keepalive_timeout_ms",
                "must be positive when keepalive_interval_ms is set",
            ));
        }
        Ok(())
    }
}

/// The admin HTTP port (`GET /metrics`): it shows per-cluster budgets and counts, so it is
/// bound to loopback by default (`services.<name>.admin_listen`) and can require a token.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// When set, `GET /metrics` answers 401 unless the request carries
    /// `Authorization: Bearer <bearer_token>` (Prometheus: `authorization.credentials`).
    /// At least 32 bytes. Empty: no token (bind the port to loopback or restrict it with a
    /// network policy).
    pub bearer_token: String,
}

impl std::fmt::Debug for AdminConfig {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field(
                "bearer_token",
                &if self.bearer_token.is_empty() {
                    "<none>"
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// Admission of calls, per service process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Calls being served at once (from the arrival of their request message until their
    /// response starts; health and reflection are not counted); more are refused at once
    /// with UNAVAILABLE. 0: no bound.
    pub max_in_flight: usize,
    /// Calls per second each user principal may make to this service, sustained; more are
    /// refused with RESOURCE_EXHAUSTED and the time to retry. SSPM's own services (service
    /// tokens) are not limited: the user they act for was counted where the call came in.
    /// 0: no limit.
    pub per_principal_per_second: u32,
    /// Calls a user principal may make at once beyond its sustained rate (the bucket size).
    pub per_principal_burst: u32,
    /// Calls one user principal may have under way at once, from its headers until its
    /// response starts (including the wait for its request message); more are refused at
    /// once with RESOURCE_EXHAUSTED, so one caller cannot hold the others' share of
    /// `max_in_flight`. SSPM's own services are not bound. 0: no bound.
    pub per_principal_max_in_flight: usize,
    /// Watch streams (`WatchPortChangeRequest`) open at once in the process; more are
    /// refused with RESOURCE_EXHAUSTED. 0: no bound.
    pub max_watch_streams: usize,
    /// Watch streams one principal may have open at once. 0: no bound.
    pub per_principal_max_watch_streams: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1_000,
            per_principal_per_second: 100,
            per_principal_burst: 200,
            per_principal_max_in_flight: 64,
            max_watch_streams: 1_000,
            per_principal_max_watch_streams: 16,
        }
    }
}

/// Bearer tokens: who a caller is (README, "Identity").
///
/// Users' tokens come from the organisation's identity provider ([`UsersConfig`]); each
/// SSPM service signs its own service tokens with its own Ed25519 key
/// (`service_keys_dir`). The development profile adds an HS256 key (`signing_key`) for
/// development user tokens (`sspm token`), which the production profile refuses.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Development only: the HS256 key of development user tokens, at least 32 bytes;
    /// empty means the built-in development key in the dev profile. The production profile
    /// refuses it.
    pub signing_key: String,
    /// Development only: former HS256 keys still accepted during a rotation.
    pub previous_keys: Vec<String>,
    /// `iss` of service tokens and development tokens, required on them.
    pub issuer: String,
    /// `aud` of service tokens and development tokens, required on them.
    pub audience: String,
    /// The directory of the services' key pairs (`sspm keys`): `<service>.pub.pem` of all
    /// four, and `<service>.key.pem` of each service this process runs. Empty: the dev
    /// profile derives development key pairs from the signing key; production requires it.
    pub service_keys_dir: Option<PathBuf>,
    /// Lifetime of tokens minted by `sspm token`, in seconds.
    pub token_ttl_seconds: u64,
    /// Longest lifetime (`exp` − `iat`) of a token SSPM accepts, in seconds: a token minted
    /// to last longer is refused, whoever signed it.
    pub max_token_lifetime_seconds: u64,
    /// Clock difference tolerated when checking `exp`, `nbf` and `iat`, in seconds.
    pub clock_leeway_seconds: u64,
    /// Principals the authorization service registers as account representatives at
    /// start-up (the bootstrap of administration; further grants go through the API).
    pub account_representatives: Vec<String>,
    /// User tokens issued by the organisation's identity provider.
    pub users: UsersConfig,
}

impl AuthConfig {
    /// The HS256 development key in effect: the configured one, else the built-in one in
    /// the dev profile; `None` in production (which refuses a configured one).
    pub fn dev_key(&self, profile: Profile) -> Option<&str> {
        match profile {
            Profile::Production => None,
            Profile::Dev if self.signing_key.is_empty() => Some(DEV_SIGNING_KEY),
            Profile::Dev => Some(&self.signing_key),
        }
    }
}

/// How user tokens from an identity provider are verified: their signature against the
/// provider's published keys (a JWKS), their issuer and audience, and which claim names
/// the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// The OIDC issuer: its keys are found through `<issuer_url>/.well-known/openid-configuration`
    /// (`jwks_uri`), and tokens must name it as `iss` unless `issuer` says otherwise.
    pub issuer_url: String,
    /// A JWKS file instead of an issuer URL (re-read at every refresh, so replacing the
    /// file rotates the keys).
    pub jwks_file: Option<PathBuf>,
    /// The `iss` user tokens must carry; defaults to `issuer_url`. Required with `jwks_file`.
    pub issuer: String,
    /// The `aud` user tokens must carry (one of, when the token lists several).
    pub audience: String,
    /// The claim whose value is the SSPM principal id, e.g. `sub` or `email`.
    pub subject_claim: String,
    /// The signature algorithms accepted (asymmetric only): RS256, RS384, RS512, PS256,
    /// PS384, PS512, ES256, ES384, EdDSA.
    pub algorithms: Vec<String>,
    /// How often the keys are fetched again, in seconds.
    pub refresh_seconds: u64,
    /// A token naming a key not in the set fetches the keys again, at most this often, in
    /// seconds (a caller inventing key ids cannot make SSPM hammer the provider).
    pub min_refresh_interval_seconds: u64,
    /// How long a fetch of the discovery document or the keys may take, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Largest discovery document or key set accepted, in bytes.
    pub max_document_bytes: usize,
    /// PEM certificates trusted for the issuer's HTTPS besides the public roots (a private
    /// identity provider).
    pub ca_path: Option<PathBuf>,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            issuer_url: String::new(),
            jwks_file: None,
            issuer: String::new(),
            audience: String::new(),
            subject_claim: "sub".to_owned(),
            algorithms: vec!["RS256".to_owned(), "ES256".to_owned(), "EdDSA".to_owned()],
            refresh_seconds: 300,
            min_refresh_interval_seconds: 10,
            fetch_timeout_ms: 5_000,
            max_document_bytes: 1024 * 1024,
            ca_path: None,
        }
    }
}

impl UsersConfig {
    /// Whether an identity provider is configured.
    pub fn configured(&self) -> bool {
        !self.issuer_url.is_empty() || self.jwks_file.is_some()
    }

    /// The `iss` required on user tokens.
    pub fn expected_issuer(&self) -> &str {
        if self.issuer.is_empty() {
            &self.issuer_url
        } else {
            &self.issuer
        }
    }

    fn validate(&self, profile: Profile) -> Result<(), ConfigError> {
        if !self.configured() {
            if profile == Profile::Production {
                return Err(invalid(
                    "auth.users",
                    "the production profile requires an identity provider: set auth.users.issuer_url (OIDC) or auth.users.jwks_file, and auth.users.audience",
                ));
            }
            return Ok(());
        }
        if !self.issuer_url.is_empty() && self.jwks_file.is_some() {
            return Err(invalid("auth.users", "set issuer_url or jwks_file, not both"));
        }
        if !self.issuer_url.is_empty() {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| self.issuer_url.starts_with(p));
            let allowed = self.issuer_url.starts_with("https://") || (loopback && profile == Profile::Dev);
            if !allowed {
                return Err(invalid(
                    "auth.users.issuer_url",
                    "must be an https:// URL (plain http only to a loopback address in the dev profile): keys fetched in the clear could be anyone's",
                ));
            }
        }
        if self.expected_issuer().is_empty() {
            return Err(invalid(
                "auth.users.issuer",
                "is required with jwks_file: the iss user tokens must carry",
            ));
        }
        if self.audience.is_empty() {
            return Err(invalid(
                "auth.users.audience",
                "is required: the aud user tokens must carry",
            ));
        }
        if self.subject_claim.is_empty() {
            return Err(invalid(
                "auth.users.subject_claim",
                "must name a claim, e.g. sub or email",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(invalid("auth.users.algorithms", "must list at least one algorithm"));
        }
        for a in &self.algorithms {
            if !USER_ALGORITHMS.contains(&a.as_str()) {
                return Err(invalid(
                    "auth.users.algorithms",
                    format!("{a} is not accepted: use {}", USER_ALGORITHMS.join(", ")),
                ));
            }
        }
        if self.refresh_seconds < 10 || self.min_refresh_interval_seconds == 0 {
            return Err(invalid(
                "auth.users.refresh_seconds",
                "must be at least 10, and min_refresh_interval_seconds at least 1",
            ));
        }
        if self.fetch_timeout_ms == 0 || self.max_document_bytes < 1024 {
            return Err(invalid(
                "auth.users.fetch_timeout_ms",
                "must be positive, and max_document_bytes at least 1024",
            ));
        }
        Ok(())
    }
}

/// The asymmetric algorithms user tokens may be signed with (never HS*: a symmetric key
/// would let whoever verifies also sign).
pub const USER_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl std::fmt::Debug for AuthConfig {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("signing_key", &"<redacted>")
            .field(
                "previous_keys",
                &format_args!("<{} redacted>", self.previous_keys.len()),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("service_keys_dir", &self.service_keys_dir)
            .field("token_ttl_seconds", &self.token_ttl_seconds)
            .field("max_token_lifetime_seconds", &self.max_token_lifetime_seconds)
            .field("clock_leeway_seconds", &self.clock_leeway_seconds)
            .field("account_representatives", &self.account_representatives)
            .field("users", &self.users)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            signing_key: String::new(),
            previous_keys: Vec::new(),
            issuer: "sspm".to_owned(),
            audience: "sspm".to_owned(),
            service_keys_dir: None,
            token_ttl_seconds: 3_600,
            max_token_lifetime_seconds: 86_400,
            clock_leeway_seconds: 5,
            account_representatives: Vec::new(),
            users: UsersConfig::default(),
        }
    }
}

/// One service's network and storage settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (`GET /metrics`, Prometheus text).
    pub admin_listen: SocketAddr,
    /// URL other services use to reach this one; default `http://<listen>` (with
    /// 127.0.0.1 for an unspecified listen address).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Database URL (`sqlite://...` or `postgres://...`); default a SQLite file
    /// `<data_dir>/<service>.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Certificate chain (PEM) to serve TLS with; with `tls_key_path`, the service speaks
    /// TLS only and its default endpoint is `https://`.
    #[serde(default)]
    pub tls_cert_path: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_path`.
    #[serde(default)]
    pub tls_key_path: Option<PathBuf>,
}

impl ServiceConfig {
    fn on_ports(port: u16, admin_port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            endpoint: None,
            database_url: None,
            tls_cert_path: None,
            tls_key_path: None,
        }
    }

    /// Whether the service serves TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert_path.is_some() && self.tls_key_path.is_some()
    }

    /// The URL other services reach this one at.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => {
                let mut addr = self.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip([127, 0, 0, 1].into());
                }
                let scheme = if self.tls() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            }
        }
    }
}

/// The four services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Services {
    /// The request service (port 50051 by default, admin 9461).
    pub request: ServiceConfig,
    /// The authorization service (50052, admin 9462).
    pub authorization: ServiceConfig,
    /// The approval service (50053, admin 9463).
    pub approval: ServiceConfig,
    /// The ticketing service (50054, admin 9464).
    pub ticketing: ServiceConfig,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            request: ServiceConfig::on_ports(50051, 9461),
            authorization: ServiceConfig::on_ports(50052, 9462),
            approval: ServiceConfig::on_ports(50053, 9463),
            ticketing: ServiceConfig::on_ports(50054, 9464),
        }
    }
}

/// Which service a section is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// The request service.
    Request,
    /// The authorization service.
    Authorization,
    /// The approval service.
    Approval,
    /// The ticketing service.
    Ticketing,
}

impl ServiceKind {
    /// All four.
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Request,
        ServiceKind::Authorization,
        ServiceKind::Approval,
        ServiceKind::Ticketing,
    ];

    /// Short name, e.g. `request`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Request => "request",
            ServiceKind::Authorization => "authorization",
            ServiceKind::Approval => "approval",
            ServiceKind::Ticketing => "ticketing",
        }
    }
}

impl Services {
    /// The section of one service.
    pub fn get(&self, kind: ServiceKind) -> &ServiceConfig {
        match kind {
            ServiceKind::Request => &self.request,
            ServiceKind::Authorization => &self.authorization,
            ServiceKind::Approval => &self.approval,
            ServiceKind::Ticketing => &self.ticketing,
        }
    }

    /// The section of one service, mutably (tests point services at ephemeral ports).
    pub fn get_mut(&mut self, kind: ServiceKind) -> &mut ServiceConfig {
        match kind {
            ServiceKind::Request => &mut self.request,
            ServiceKind::Authorization => &mut self.authorization,
            ServiceKind::Approval => &mut self.approval,
            ServiceKind::Ticketing => &mut self.ticketing,
        }
    }
}

/// Outgoing calls between services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Deadline of every internal call, in milliseconds.
    pub timeout_ms: u64,
    /// Deadline of establishing a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// CA certificate (PEM) that internal calls to `https://` endpoints trust.
    pub ca_path: Option<PathBuf>,
    /// How calls spread over a service's replicas: `single` (one HTTP/2 connection to the
    /// endpoint's address) or `dns` (every address the endpoint's host name resolves to,
    /// re-resolved every `dns_refresh_ms`, e.g. a Kubernetes headless service).
    pub load_balancing: LoadBalancing,
    /// How often `dns` load balancing resolves the host names again, in milliseconds.
    pub dns_refresh_ms: u64,
    /// How long a service may reuse an authorization answer (a Check), in milliseconds; 0:
    /// never. Answers are reused only while the service is subscribed to the authorization
    /// service's changes and are all dropped at each change it reports (its own at once,
    /// other replicas' within `workflow.authz_change_poll_ms`), so this is a backstop only.
    pub authz_cache_ttl_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            ca_path: None,
            load_balancing: LoadBalancing::Single,
            dns_refresh_ms: 5_000,
            authz_cache_ttl_ms: 30_000,
        }
    }
}

/// See [`ClientConfig::load_balancing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancing {
    /// One connection to the endpoint (the address its name resolves to when connecting).
    Single,
    /// Client-side balancing over every address of the endpoint's host name.
    Dns,
}

/// Price of a concurrent port (R10).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// ISO 4217 currency code.
    pub currency: String,
    /// Monthly price of one concurrent port, a decimal string such as "12.50".
    pub price_per_concurrent_port: String,
}

impl Default for PricingConfig {
    fn default() -> Self {
        Self {
            currency: "USD".to_owned(),
            price_per_concurrent_port: "12.50".to_owned(),
        }
    }
}

/// Daily limits (R8).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DailyLimitsConfig {
    /// The default daily limit for clusters without their own, until Network Operations
    /// sets one through the API.
    pub default_max_daily_increase: u32,
    /// Offset of the ledger day from UTC, in minutes (0: UTC days).
    pub day_utc_offset_minutes: i32,
}

impl Default for DailyLimitsConfig {
    fn default() -> Self {
        Self {
            default_max_daily_increase: 100,
            day_utc_offset_minutes: 0,
        }
    }
}

/// The request service's reconciler: retries of failed steps and the safety-net polls.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowConfig {
    /// How often the worker looks for due work (retries, reverts), in milliseconds.
    pub poll_interval_ms: u64,
    /// First retry delay of a failed step, in milliseconds; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How often requests under review are checked against the approval service, besides
    /// the decision feed, in seconds.
    pub review_poll_seconds: u64,
    /// How often the watched requests are looked up for changes made by other replicas
    /// (one query for all the process's watch streams), in milliseconds.
    pub watch_poll_ms: u64,
    /// How often the approval service looks for decisions made by other replicas for the
    /// decision feed (`WatchDecisions`) while it has nothing new, in milliseconds; its own
    /// decisions wake the feed at once.
    pub decision_feed_poll_ms: u64,
    /// How often the authorization service reads the count of changes to authorization
    /// facts, to tell its change-stream subscribers of changes made on other replicas, in
    /// milliseconds; its own changes are told at once. This bounds how long another
    /// replica's change (a revoked grant) can go unnoticed by the services' answer caches.
    pub authz_change_poll_ms: u64,
    /// SQLite: the request path's writes of concurrent callers share one durable commit
    /// (group commit); at most this many callers wait for the writer at once, the others
    /// wait to be admitted. 0 commits each caller's transaction on its own.
    pub group_commit_queue: usize,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 250,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            review_poll_seconds: 30,
            watch_poll_ms: 1_000,
            decision_feed_poll_ms: 1_000,
            authz_change_poll_ms: 250,
            group_commit_queue: 256,
        }
    }
}

impl Default for SspmConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Dev,
            data_dir: PathBuf::from("data"),
            auth: AuthConfig::default(),
            services: Services::default(),
            clients: ClientConfig::default(),
            pricing: PricingConfig::default(),
            daily_limits: DailyLimitsConfig::default(),
            workflow: WorkflowConfig::default(),
            admission: AdmissionConfig::default(),
            ticketing: TicketingConfig::default(),
            admin: AdminConfig::default(),
            server: ServerLimits::default(),
            events: EventsConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

impl SspmConfig {
    /// Loads defaults < `file` (if given; it must exist) < the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, None)
    }

    /// Like [`SspmConfig::load`], with the environment given as a map (for tests) instead of
    /// read from the process.
    pub fn load_from(file: Option<&Path>, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        // Each service's default listen address differs, so a section that sets only some
        // keys (say `database_url`) needs its default seeded here rather than by serde.
        let defaults = Services::default();
        for kind in ServiceKind::ALL {
            builder = builder.set_default(
                format!("services.{}.listen", kind.name()),
                defaults.get(kind).listen.to_string(),
            )?;
            builder = builder.set_default(
                format!("services.{}.admin_listen", kind.name()),
                defaults.get(kind).admin_listen.to_string(),
            )?;
        }
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let environment = config::Environment::with_prefix("SSPM")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("auth.previous_keys")
            .with_list_parse_key("auth.account_representatives")
            .with_list_parse_key("auth.users.algorithms")
            .try_parsing(true)
            .source(env);
        let cfg: SspmConfig = builder.add_source(environment).build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the `[events]` section and the retention of the audit trail.
    fn validate_events(&self) -> Result<(), ConfigError> {
        let e = &self.events;
        if e.poll_ms == 0 || e.retry_initial_ms == 0 || e.retry_max_ms < e.retry_initial_ms || e.ack_timeout_ms == 0 {
            return Err(invalid(
                "events",
                "intervals must be positive and retry_max_ms at least retry_initial_ms",
            ));
        }
        for (key, days) in [
            ("events.retention_days", e.retention_days),
            ("audit.retention_days", self.audit.retention_days),
        ] {
            if days > MAX_RETENTION_DAYS {
                return Err(invalid(key, "must be 0 (kept forever) to 36500 (a hundred years)"));
            }
        }
        // A batch is one window in flight; the NATS client holds at most 5,000 unacknowledged.
        if !(1..=1_000).contains(&e.publish_batch) {
            return Err(invalid("events.publish_batch", "must be 1 to 1000"));
        }
        if !e.nats_url.is_empty() {
            let valid_token =
                |t: &str| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'));
            if e.stream.is_empty() || !valid_token(&e.stream) {
                return Err(invalid(
                    "events.stream",
                    "must be a JetStream stream name (no spaces, '.', '*' or '>')",
                ));
            }
            if !e.subject_prefix.split('.').all(valid_token) {
                return Err(invalid(
                    "events.subject_prefix",
                    "must be NATS subject tokens separated by '.' (no spaces, '*' or '>')",
                ));
            }
            if !(1..=5).contains(&e.stream_replicas) {
                return Err(invalid("events.stream_replicas", "must be 1 to 5"));
            }
            if e.duplicate_window_seconds * 1_000 < e.retry_max_ms {
                return Err(invalid(
                    "events.duplicate_window_seconds",
                    "must cover events.retry_max_ms: a republished event must still be recognised",
                ));
            }
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.auth.signing_key.is_empty() && self.auth.signing_key.len() < 32 {
            return Err(invalid("auth.signing_key", "must be at least 32 bytes"));
        }
        if let Some(i) = self.auth.previous_keys.iter().position(|k| k.len() < 32) {
            return Err(invalid(
                &format!("auth.previous_keys[{i}]"),
                "must be at least 32 bytes",
            ));
        }
        if self.profile == Profile::Production {
            if !self.auth.signing_key.is_empty() || !self.auth.previous_keys.is_empty() {
                return Err(invalid(
                    "auth.signing_key",
                    "the production profile refuses HS256 development tokens: unset auth.signing_key and auth.previous_keys, and configure auth.users (README, \"Identity\")",
                ));
            }
            if self.auth.service_keys_dir.is_none() {
                return Err(invalid(
                    "auth.service_keys_dir",
                    "the production profile requires each service's own key pair: run `sspm keys --out DIR` and set auth.service_keys_dir",
                ));
            }
        }
        self.auth.users.validate(self.profile)?;
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            return Err(invalid("auth", "issuer and audience must not be empty"));
        }
        if self.auth.token_ttl_seconds == 0 {
            return Err(invalid("auth.token_ttl_seconds", "must be positive"));
        }
        if self.auth.max_token_lifetime_seconds < 300 {
            return Err(invalid("auth.max_token_lifetime_seconds", "must be at least 300"));
        }
        if self.auth.token_ttl_seconds > self.auth.max_token_lifetime_seconds {
            return Err(invalid(
                "auth.token_ttl_seconds",
                "must not exceed auth.max_token_lifetime_seconds (such tokens would be refused)",
            ));
        }
        if self.auth.clock_leeway_seconds > 300 {
            return Err(invalid("auth.clock_leeway_seconds", "must be at most 300"));
        }
        self.price()?;
        self.ticketing.validate()?;
        self.server.validate()?;
        if !self.admin.bearer_token.is_empty() && self.admin.bearer_token.len() < 32 {
            return Err(invalid(
                "admin.bearer_token",
                "must be at least 32 bytes (or empty: no token)",
            ));
        }
        if self.daily_limits.default_max_daily_increase > u32::from(sspm_rules::PortLimit::MAX) {
            return Err(invalid("daily_limits.default_max_daily_increase", "must be 0 to 9999"));
        }
        if self.daily_limits.day_utc_offset_minutes.abs() > 14 * 60 {
            return Err(invalid(
                "daily_limits.day_utc_offset_minutes",
                "must be within -840..=840",
            ));
        }
        if let Some(bad) = self
            .auth
            .account_representatives
            .iter()
            .find(|p| sspm_rules::PrincipalId::parse(p).is_err())
        {
            return Err(invalid(
                "auth.account_representatives",
                format!("{bad:?} is not a valid principal id"),
            ));
        }
        self.validate_events()?;
        if self.workflow.poll_interval_ms == 0
            || self.workflow.retry_initial_ms == 0
            || self.workflow.retry_max_ms < self.workflow.retry_initial_ms
            || self.workflow.review_poll_seconds == 0
            || self.workflow.watch_poll_ms == 0
            || self.workflow.decision_feed_poll_ms == 0
            || self.workflow.authz_change_poll_ms == 0
        {
            return Err(invalid(
                "workflow",
                "intervals must be positive and retry_max_ms at least retry_initial_ms",
            ));
        }
        if self.clients.timeout_ms == 0 || self.clients.connect_timeout_ms == 0 {
            return Err(invalid("clients", "timeouts must be positive"));
        }
        if self.clients.dns_refresh_ms == 0 {
            return Err(invalid("clients.dns_refresh_ms", "must be positive"));
        }
        if self.clients.authz_cache_ttl_ms > 60_000 {
            return Err(invalid(
                "clients.authz_cache_ttl_ms",
                "must be at most 60000 (a revoked permission must not live on for long)",
            ));
        }
        if self.admission.per_principal_per_second > 0 && self.admission.per_principal_burst == 0 {
            return Err(invalid(
                "admission.per_principal_burst",
                "must be positive when admission.per_principal_per_second is set",
            ));
        }
        for kind in ServiceKind::ALL {
            let svc = self.services.get(kind);
            let key = format!("services.{}", kind.name());
            if let Some(url) = &svc.database_url
                && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
            {
                return Err(invalid(
                    &format!("{key}.database_url"),
                    "must be a sqlite: or postgres:// URL",
                ));
            }
            if let Some(e) = &svc.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(invalid(
                    &format!("{key}.endpoint"),
                    "must start with http:// or https://",
                ));
            }
            if svc.tls_cert_path.is_some() != svc.tls_key_path.is_some() {
                return Err(invalid(
                    &format!("{key}.tls_cert_path"),
                    "tls_cert_path and tls_key_path go together",
                ));
            }
            let https = svc.endpoint().starts_with("https://");
            if https && self.clients.ca_path.is_none() {
                return Err(invalid(
                    "clients.ca_path",
                    format!("{key} is reached over https: set the CA certificate the other services trust"),
                ));
            }
            // Every call between services is encrypted in production; each service also
            // refuses to start there without its own certificate (ServiceApp::prepare).
            if self.profile == Profile::Production && !https {
                return Err(invalid(
                    &format!("{key}.endpoint"),
                    "the production profile requires TLS: set tls_cert_path and tls_key_path, or an https:// endpoint",
                ));
            }
        }
        // No two of the eight addresses may be the same (port 0 picks a free port each time).
        let addresses: Vec<(String, SocketAddr)> = ServiceKind::ALL
            .iter()
            .flat_map(|&kind| {
                let svc = self.services.get(kind);
                [
                    (format!("services.{}.listen", kind.name()), svc.listen),
                    (format!("services.{}.admin_listen", kind.name()), svc.admin_listen),
                ]
            })
            .collect();
        for (i, (key, addr)) in addresses.iter().enumerate() {
            if let Some((other, _)) = addresses[..i].iter().find(|(_, a)| a.port() != 0 && a == addr) {
                return Err(invalid(key, format!("same address as {other}")));
            }
        }
        Ok(())
    }

    /// The price of a concurrent port.
    pub fn price(&self) -> Result<sspm_rules::Price, ConfigError> {
        sspm_rules::Price::parse(&self.pricing.currency, &self.pricing.price_per_concurrent_port)
            .map_err(|e| invalid("pricing", e.0))
    }

    /// The database URL of a service: its own setting, or a SQLite file in `data_dir`.
    pub fn database_url(&self, kind: ServiceKind) -> String {
        match &self.services.get(kind).database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{}.db", kind.name())).display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_run_everything_locally() {
        let cfg = SspmConfig::load_from(None, env(&[])).unwrap();
        assert_eq!(cfg.services.request.listen.port(), 50051);
        assert_eq!(cfg.services.ticketing.endpoint(), "http://127.0.0.1:50054");
        assert_eq!(
            cfg.database_url(ServiceKind::Approval),
            "sqlite://data/approval.db?mode=rwc"
        );
        assert_eq!(cfg.price().unwrap().micros_per_port(), 12_500_000);
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sspm.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/var/lib/sspm"
[services.request]
listen = "0.0.0.0:7000"
[pricing]
price_per_concurrent_port = "3"
[daily_limits]
default_max_daily_increase = 40
"#,
        )
        .unwrap();
        let cfg = SspmConfig::load_from(
            Some(&path),
            env(&[
                ("SSPM__DAILY_LIMITS__DEFAULT_MAX_DAILY_INCREASE", "55"),
                ("SSPM__SERVICES__APPROVAL__DATABASE_URL", "postgres://db/approval"),
                (
                    "SSPM__AUTH__PREVIOUS_KEYS",
                    "0123456789abcdef0123456789abcdef,fedcba9876543210fedcba9876543210",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/sspm"));
        assert_eq!(cfg.services.request.listen.port(), 7000);
        assert_eq!(cfg.services.request.endpoint(), "http://127.0.0.1:7000");
        assert_eq!(
            cfg.services.authorization.listen.port(),
            50052,
            "untouched sections keep defaults"
        );
        assert_eq!(cfg.pricing.currency, "USD");
        assert_eq!(cfg.daily_limits.default_max_daily_increase, 55);
        assert_eq!(cfg.database_url(ServiceKind::Approval), "postgres://db/approval");
        assert_eq!(cfg.auth.previous_keys.len(), 2);
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let err = SspmConfig::load_from(None, env(&[("SSPM__PRICING__PRICE_PER_CONCURRENT_PORT", "-1")])).unwrap_err();
        assert!(err.to_string().contains("pricing"), "{err}");
        let err = SspmConfig::load_from(None, env(&[("SSPM__AUTH__SIGNING_KEY", "short")])).unwrap_err();
        assert!(err.to_string().contains("auth.signing_key"), "{err}");
        let err =
            SspmConfig::load_from(None, env(&[("SSPM__SERVICES__TICKETING__LISTEN", "127.0.0.1:50051")])).unwrap_err();
        assert!(err.to_string().contains("same address"), "{err}");
        let err = SspmConfig::load_from(
            None,
            env(&[("SSPM__SERVICES__APPROVAL__ADMIN_LISTEN", "127.0.0.1:9461")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: services.approval.admin_listen: same address as services.request.admin_listen"
        );
        let err =
            SspmConfig::load_from(None, env(&[("SSPM__SERVICES__REQUEST__LISTEN", "not-an-address")])).unwrap_err();
        assert!(matches!(err, ConfigError::Load(_)), "{err}");
        let err =
            SspmConfig::load_from(None, env(&[("SSPM__SERVICES__REQUEST__DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("database_url"), "{err}");
        let err = SspmConfig::load_from(None, env(&[("SSPM__ADMISSION__PER_PRINCIPAL_BURST", "0")])).unwrap_err();
        assert!(err.to_string().contains("admission.per_principal_burst"), "{err}");
        // Retention: days, at most a hundred years (a longer one would overflow a time).
        for key in ["SSPM__AUDIT__RETENTION_DAYS", "SSPM__EVENTS__RETENTION_DAYS"] {
            let err = SspmConfig::load_from(None, env(&[(key, "4000000000")])).unwrap_err();
            assert!(err.to_string().contains("36500"), "{key}: {err}");
        }
        let cfg = SspmConfig::load_from(None, env(&[("SSPM__AUDIT__RETENTION_DAYS", "0")])).unwrap();
        assert_eq!(cfg.audit.retention_days, 0, "0: kept forever");
        assert_eq!(SspmConfig::default().audit.retention_days, 365);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sspm.toml");
        std::fs::write(&path, "[pricing]\nprice = \"3\"\n").unwrap();
        let err = SspmConfig::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("price"), "{err}");
    }

    #[test]
    fn production_refuses_development_identity_and_requires_a_provider_and_service_keys() {
        let production = ("SSPM__PROFILE", "production");
        // HS256 development tokens: refused, whatever the key.
        let key = ("SSPM__AUTH__SIGNING_KEY", "a-real-secret-of-at-least-32-bytes!!");
        let err = SspmConfig::load_from(None, env(&[production, key])).unwrap_err();
        assert!(err.to_string().contains("refuses HS256"), "{err}");
        // Each service's own key pair is required.
        let err = SspmConfig::load_from(None, env(&[production])).unwrap_err();
        assert!(err.to_string().contains("auth.service_keys_dir"), "{err}");
        let keys = ("SSPM__AUTH__SERVICE_KEYS_DIR", "/keys");
        // An identity provider is required; its issuer is https.
        let err = SspmConfig::load_from(None, env(&[production, keys])).unwrap_err();
        assert!(err.to_string().contains("identity provider"), "{err}");
        let audience = ("SSPM__AUTH__USERS__AUDIENCE", "sspm");
        let plain = ("SSPM__AUTH__USERS__ISSUER_URL", "http://127.0.0.1:8080/realms/x");
        let err = SspmConfig::load_from(None, env(&[production, keys, plain, audience])).unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let issuer = ("SSPM__AUTH__USERS__ISSUER_URL", "https://login.example/realms/x");
        let err = SspmConfig::load_from(None, env(&[production, keys, issuer])).unwrap_err();
        assert!(err.to_string().contains("auth.users.audience"), "{err}");
        let err = SspmConfig::load_from(None, env(&[production, keys, issuer, audience])).unwrap_err();
        assert!(err.to_string().contains("requires TLS"), "{err}");
        let hs = ("SSPM__AUTH__USERS__ALGORITHMS", "RS256,HS256");
        let err = SspmConfig::load_from(None, env(&[production, keys, issuer, audience, hs])).unwrap_err();
        assert!(err.to_string().contains("HS256 is not accepted"), "{err}");
        let mut vars: Vec<(String, String)> = [production, keys, issuer, audience]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.push(("SSPM__CLIENTS__CA_PATH".to_owned(), "/certs/ca.pem".to_owned()));
        for kind in ServiceKind::ALL {
            let name = kind.name().to_uppercase();
            vars.push((
                format!("SSPM__SERVICES__{name}__TLS_CERT_PATH"),
                format!("/certs/{}.pem", kind.name()),
            ));
            vars.push((
                format!("SSPM__SERVICES__{name}__TLS_KEY_PATH"),
                format!("/certs/{}-key.pem", kind.name()),
            ));
        }
        let ok = SspmConfig::load_from(None, Some(vars.into_iter().collect())).unwrap();
        assert_eq!(ok.services.approval.endpoint(), "https://127.0.0.1:50053");
        assert_eq!(ok.auth.dev_key(ok.profile), None, "no development key in production");
    }

    #[test]
    fn tls_settings_are_checked() {
        let err =
            SspmConfig::load_from(None, env(&[("SSPM__SERVICES__REQUEST__TLS_CERT_PATH", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err = SspmConfig::load_from(
            None,
            env(&[
                ("SSPM__SERVICES__REQUEST__TLS_CERT_PATH", "/c.pem"),
                ("SSPM__SERVICES__REQUEST__TLS_KEY_PATH", "/k.pem"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("clients.ca_path"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let cfg = SspmConfig::default();
        assert!(!format!("{cfg:?}").contains(DEV_SIGNING_KEY));
    }
}
