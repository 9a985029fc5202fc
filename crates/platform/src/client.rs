//! Channels for internal calls: a deadline on every call, trace context injected, and the
//! original caller's principal forwarded.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::global;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{ClientConfig, LoadBalancing};
use crate::identity::Principal;
use crate::telemetry::MetadataInjector;

/// A channel whose calls carry trace context and the caller's principal.
pub type InternalChannel = InterceptedService<Deadline, OutgoingInterceptor>;

/// Injects `traceparent` from the current span and, when the request carries a
/// [`Principal`] in its extensions (see [`on_behalf_of`]), its bearer token.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutgoingInterceptor;

impl Interceptor for OutgoingInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut())));
        // Without OpenTelemetry spans (export off) the call still continues the caller's
        // trace, so the next service's audit events name the same trace id.
        if !req.metadata().contains_key("traceparent")
            && let Some(call) = crate::identity::CallContext::current().filter(|c| !c.trace_id.is_empty())
        {
            let span = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                .max(1);
            if let Ok(v) = format!("00-{}-{span:016x}-01", call.trace_id).parse() {
                req.metadata_mut().insert("traceparent", v);
            }
        }
        if let Some(token) = req.extensions().get::<Principal>().map(|p| p.token().to_owned())
            && !req.metadata().contains_key("authorization")
        {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("principal token is not a valid header value"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// A request to another service made on behalf of `principal` (its token is forwarded).
pub fn on_behalf_of<T>(message: T, principal: &Principal) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.extensions_mut().insert(principal.clone());
    req
}

/// A lazily connecting channel to `endpoint` (`http://host:port`, or `https://` trusting
/// `clients.ca_path`) with the configured deadlines, spread over the endpoint's replicas
/// when `clients.load_balancing` is `dns`; connection failures surface as UNAVAILABLE on
/// the calls, and no call outlives `clients.timeout_ms`, even when no replica is known.
pub fn connect_lazy(endpoint: &str, cfg: &ClientConfig) -> anyhow::Result<InternalChannel> {
    let channel = match cfg.load_balancing {
        LoadBalancing::Single => configure(
            Endpoint::from_shared(endpoint.to_owned())?,
            client_tls(endpoint, cfg)?,
            cfg,
        )?
        .connect_lazy(),
        LoadBalancing::Dns => {
            let target = DnsTarget::parse(endpoint)?;
            let refresh = Duration::from_millis(cfg.dns_refresh_ms);
            let host = target.host.clone();
            let port = target.port;
            balanced(target, cfg, refresh, move || {
                let host = host.clone();
                async move {
                    tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .map(|a| a.collect())
                }
            })?
        }
    };
    Ok(InterceptedService::new(
        Deadline {
            inner: channel,
            timeout: Duration::from_millis(cfg.timeout_ms),
        },
        OutgoingInterceptor,
    ))
}

/// The TLS settings for `endpoint`: none for `http://`, else trusting `clients.ca_path`
/// (read here, once per endpoint).
fn client_tls(endpoint: &str, cfg: &ClientConfig) -> anyhow::Result<Option<ClientTlsConfig>> {
    if !endpoint.starts_with("https://") {
        return Ok(None);
    }
    let ca = cfg
        .ca_path
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("{endpoint} is https: clients.ca_path must name the CA to trust"))?;
    Ok(Some(crate::tls::client_config(ca)?))
}

/// The settings every connection of ours has: `tls` if given, deadlines, keep-alive.
fn configure(mut builder: Endpoint, tls: Option<ClientTlsConfig>, cfg: &ClientConfig) -> anyhow::Result<Endpoint> {
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// An endpoint balanced over the addresses of its host name.
#[derive(Debug, Clone)]
struct DnsTarget {
    /// `http` or `https`.
    scheme: String,
    host: String,
    port: u16,
    endpoint: String,
}

impl DnsTarget {
    fn parse(endpoint: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("{endpoint} is not a URI: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("{endpoint} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self {
            scheme,
            host,
            port,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The endpoint of one replica: its address, with `tls` (verified for the host name).
    fn replica(&self, addr: SocketAddr, tls: Option<ClientTlsConfig>, cfg: &ClientConfig) -> anyhow::Result<Endpoint> {
        let uri = format!("{}://{addr}", self.scheme);
        configure(Endpoint::from_shared(uri)?, tls, cfg)
    }
}

/// A channel balancing over the addresses `resolve` yields, asked again every `refresh`: new
/// replicas are added, gone ones removed; a failed or empty answer keeps those known so far.
/// tonic balances by power of two choices, but its connections all report the same load, so
/// each call goes to a ready replica at random. The task ends with the channel.
fn balanced<R, F>(target: DnsTarget, cfg: &ClientConfig, refresh: Duration, mut resolve: R) -> anyhow::Result<Channel>
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    // Fails now, not on every call, when the endpoint cannot be configured (e.g. no CA).
    let tls = client_tls(&target.endpoint, cfg)?.map(|t| t.domain_name(target.host.clone()));
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        let mut ticks = tokio::time::interval(refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let found: HashSet<SocketAddr> = match resolve().await {
                Ok(addrs) if !addrs.is_empty() => addrs.into_iter().collect(),
                Ok(_) => {
                    tracing::warn!(endpoint = %target.endpoint, "no address found; keeping the replicas known");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %target.endpoint, error = %e, "resolving failed; keeping the replicas known");
                    continue;
                }
            };
            let mut changed: Vec<_> = known.difference(&found).map(|gone| Change::Remove(*gone)).collect();
            let mut now = found.clone();
            for new in found.difference(&known) {
                match target.replica(*new, tls.clone(), &cfg) {
                    Ok(endpoint) => changed.push(Change::Insert(*new, endpoint)),
                    Err(e) => {
                        // Left out of the known set: tried again at the next refresh.
                        tracing::warn!(endpoint = %target.endpoint, %new, error = %e, "replica skipped");
                        now.remove(new);
                    }
                }
            }
            if !changed.is_empty() {
                tracing::info!(endpoint = %target.endpoint, replicas = ?now, "replicas changed");
            }
            for change in changed {
                if changes.send(change).await.is_err() {
                    return; // the channel is gone
                }
            }
            known = now;
            if changes.is_closed() {
                return;
            }
        }
    });
    Ok(channel)
}

/// A [`Channel`] whose calls end after `timeout` whatever happens, including waiting for a
/// replica to be known, with DEADLINE_EXCEEDED.
#[derive(Debug, Clone)]
pub struct Deadline {
    inner: Channel,
    timeout: Duration,
}

impl Service<http::Request<tonic::body::Body>> for Deadline {
    type Response = http::Response<tonic::body::Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let call = self.inner.call(req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))) as Self::Error),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// A gRPC server on a free loopback port whose health service reports `status` for "x".
    async fn replica(status: tonic_health::ServingStatus) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("x", status).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn internal(channel: Channel, cfg: &ClientConfig) -> InternalChannel {
        InterceptedService::new(
            Deadline {
                inner: channel,
                timeout: Duration::from_millis(cfg.timeout_ms),
            },
            OutgoingInterceptor,
        )
    }

    async fn check(client: &mut HealthClient<InternalChannel>) -> Result<ServingStatus, tonic::Status> {
        client
            .check(HealthCheckRequest { service: "x".into() })
            .await
            .map(|r| r.into_inner().status())
    }

    #[tokio::test]
    async fn dns_balancing_spreads_calls_and_follows_the_replica_set() {
        let serving = replica(tonic_health::ServingStatus::Serving).await;
        let not_serving = replica(tonic_health::ServingStatus::NotServing).await;
        let addrs = Arc::new(Mutex::new(vec![serving, not_serving]));
        let cfg = ClientConfig::default();
        let target = DnsTarget::parse("http://replicas.test:1").unwrap();
        let resolver = addrs.clone();
        let channel = balanced(target, &cfg, Duration::from_millis(20), move || {
            let found = resolver.lock().unwrap().clone();
            async move { Ok(found) }
        })
        .unwrap();
        let mut client = HealthClient::new(internal(channel, &cfg));

        // Both replicas answer (each reports its own status).
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.insert(check(&mut client).await.unwrap());
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(seen.len(), 2, "calls reach both replicas: {seen:?}");

        // A replica that leaves the set stops receiving calls once resolved again.
        addrs.lock().unwrap().retain(|a| *a == serving);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..50 {
            assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
        }

        // A failed or empty answer keeps the replicas known.
        addrs.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    }

    #[tokio::test]
    async fn with_no_replica_known_a_call_ends_at_its_deadline() {
        let cfg = ClientConfig {
            timeout_ms: 300,
            ..ClientConfig::default()
        };
        let target = DnsTarget::parse("http://nowhere.test:1").unwrap();
        let channel = balanced(target, &cfg, Duration::from_millis(20), || async { Ok(Vec::new()) }).unwrap();
        let started = std::time::Instant::now();
        let err = check(&mut HealthClient::new(internal(channel, &cfg)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn dns_balancing_resolves_real_host_names() {
        let serving = replica(tonic_health::ServingStatus::Serving).await;
        let cfg = ClientConfig {
            load_balancing: LoadBalancing::Dns,
            dns_refresh_ms: 50,
            ..ClientConfig::default()
        };
        let channel = connect_lazy(&format!("http://localhost:{}", serving.port()), &cfg).unwrap();
        assert_eq!(
            check(&mut HealthClient::new(channel)).await.unwrap(),
            ServingStatus::Serving
        );
    }

    #[test]
    fn dns_targets_are_parsed_with_default_ports() {
        let t = DnsTarget::parse("https://sspm-approval.sspm.svc.cluster.local").unwrap();
        assert_eq!(
            (t.scheme.as_str(), t.host.as_str(), t.port),
            ("https", "sspm-approval.sspm.svc.cluster.local", 443)
        );
        let t = DnsTarget::parse("http://[::1]:50053").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 50053));
        assert!(DnsTarget::parse("not a uri").is_err());
    }
}
