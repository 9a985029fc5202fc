//! The server every SSPM service runs: health, reflection (v1 and v1alpha), a span per RPC
//! whose parent comes from the caller's `traceparent`, bearer-token authentication, a
//! pre-bound listener, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::global;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{AuthLayer, RateLimits, TokenVerifier};
use crate::config::ServerLimits;
use crate::conn::ConnLimits;
use crate::metrics::{Methods, RpcMetrics, UNKNOWN_METHOD};
use crate::telemetry::HeaderExtractor;

/// Builds and runs one service's gRPC server.
pub struct ServiceServer {
    name: &'static str,
    listener: TcpListener,
    verifier: TokenVerifier,
    metrics: Option<RpcMetrics>,
    max_in_flight: usize,
    rate_limits: Option<RateLimits>,
    per_principal_in_flight: usize,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    listed: Vec<&'static str>,
}

impl std::fmt::Debug for ServiceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceServer")
            .field("name", &self.name)
            .field("services", &self.services)
            .finish()
    }
}

/// Binds a listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

impl ServiceServer {
    /// A server named `name` (for logs) on an already bound listener.
    pub fn new(name: &'static str, listener: TcpListener, verifier: TokenVerifier) -> Self {
        Self {
            name,
            listener,
            verifier,
            metrics: None,
            max_in_flight: 0,
            rate_limits: None,
            per_principal_in_flight: 0,
            limits: ServerLimits::default(),
            tls: None,
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            listed: Vec::new(),
        }
    }

    /// Records every RPC (count, errors by code, latency) in `metrics`.
    pub fn with_metrics(mut self, metrics: RpcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sheds calls beyond `max` in flight at once with UNAVAILABLE (0: no bound).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Refuses a user principal's calls beyond `limits` with RESOURCE_EXHAUSTED (none: no
    /// limit).
    pub fn with_rate_limits(mut self, limits: Option<RateLimits>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Refuses a user principal's calls beyond `max` under way at once with
    /// RESOURCE_EXHAUSTED (0: no bound).
    pub fn with_per_principal_in_flight(mut self, max: usize) -> Self {
        self.per_principal_in_flight = max;
        self
    }

    /// Bounds connections, HTTP/2 and request messages by `limits`.
    pub fn with_limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves TLS only, with `config` (see [`crate::tls::server_config`]).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Lists the API `name` in reflection (`grpcurl list`), so callers can discover and
    /// describe it. Services whose handlers are routed with [`ServiceServer::add_service`]
    /// are listed anyway.
    pub fn advertise(mut self, name: &'static str) -> Self {
        if !self.listed.contains(&name) {
            self.listed.push(name);
        }
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Adds a gRPC service; health reports it SERVING while the server runs.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(svc);
        self.services.push(S::NAME);
        self.advertise(S::NAME)
    }

    /// Serves until `shutdown` completes, then stops accepting, reports NOT_SERVING and
    /// lets in-flight calls finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.services {
            reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sspm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sspm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        // List only what this server serves, not every service in the descriptor set.
        for name in self.listed.iter().copied().chain(["grpc.health.v1.Health"]) {
            reflection = reflection.with_service_name(name);
            reflection_alpha = reflection_alpha.with_service_name(name);
        }
        let mut routes = self.routes;
        routes
            .add_service(health)
            .add_service(reflection.build_v1()?)
            .add_service(reflection_alpha.build_v1alpha()?);

        // The closed set of paths metric labels and span names come from.
        let mut served: Vec<&str> = self.services.clone();
        served.extend([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        let methods = Methods::of(
            &served,
            &[
                sspm_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
        )?;
        let metrics = self.metrics.map(|m| m.with_methods(methods.clone()));

        let addr = self.listener.local_addr()?;
        tracing::info!(service = self.name, %addr, tls = self.tls.is_some(), apis = ?self.listed, "serving");
        let name = self.name;
        let shutdown_reporter = reporter.clone();
        let services = self.services.clone();
        let shutdown = async move {
            shutdown.await;
            for s in services {
                shutdown_reporter.set_service_status(s, ServingStatus::NotServing).await;
            }
            tracing::info!(service = name, "shutting down: no new calls, finishing in-flight ones");
        };
        let limits = &self.limits;
        let ms = crate::config::optional_ms;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .initial_stream_window_size(limits.initial_stream_window_bytes)
            .initial_connection_window_size(limits.initial_connection_window_bytes)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_keepalive_interval(ms(limits.keepalive_interval_ms))
            .http2_keepalive_timeout(ms(limits.keepalive_timeout_ms));
        if let Some(age) = ms(limits.max_connection_age_ms) {
            // GOAWAY at this age; the connection itself closes after the grace (conn.rs).
            builder = builder.max_connection_age(age);
        }
        let router = builder
            .trace_fn(move |req| rpc_span(&methods, req))
            .layer(
                AuthLayer::new(self.verifier, metrics)
                    .with_max_in_flight(self.max_in_flight)
                    .with_per_principal_in_flight(self.per_principal_in_flight)
                    .with_rate_limits(self.rate_limits)
                    .with_request_limits(
                        limits.max_request_bytes,
                        Duration::from_millis(limits.request_message_timeout_ms),
                    ),
            )
            .add_routes(routes.routes());
        let conns = ConnLimits::new(limits);
        match self.tls {
            Some(config) => {
                router
                    .serve_with_incoming_shutdown(crate::tls::incoming(self.listener, config, conns), shutdown)
                    .await?
            }
            None => {
                router
                    .serve_with_incoming_shutdown(crate::conn::incoming(self.listener, conns), shutdown)
                    .await?
            }
        }
        tracing::info!(service = name, "stopped");
        Ok(())
    }
}

/// The server span of one RPC, named `package.Service/Method`, child of the caller's span.
/// A path the server does not serve is named `unknown`: span names, like metric labels,
/// come from a closed set whatever callers send.
fn rpc_span(methods: &Methods, req: &http::Request<()>) -> tracing::Span {
    // A served path is its own name, `package.Service/Method`: no allocation per call.
    let (path, service, method) = match methods.labels(req.uri().path()) {
        Some((s, m)) => (req.uri().path().trim_start_matches('/'), &**s, &**m),
        None => (UNKNOWN_METHOD, UNKNOWN_METHOD, UNKNOWN_METHOD),
    };
    let span = if crate::auth::is_public_path(req.uri().path()) {
        // Probes and reflection: not worth a trace each.
        tracing::debug_span!("grpc", otel.name = %path, otel.kind = "server", rpc.system = "grpc", rpc.service = %service, rpc.method = %method)
    } else {
        tracing::info_span!(
            "grpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            enduser.id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            sspm.request_id = tracing::field::Empty,
            sspm.business_unit_id = tracing::field::Empty,
            sspm.state = tracing::field::Empty,
        )
    };
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    // Fails only if the span was entered already; it was just created.
    let _ = span.set_parent(parent);
    span
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
