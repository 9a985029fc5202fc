//! Channels for internal calls: a deadline on every call, trace context injected, and the
//! original caller's principal forwarded.

use std::time::Duration;

use opentelemetry::global;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::Principal;
use crate::config::ClientConfig;
use crate::telemetry::MetadataInjector;

/// A channel whose calls carry trace context and the caller's principal.
pub type InternalChannel = InterceptedService<Channel, OutgoingInterceptor>;

/// Injects `traceparent` from the current span and, when the request carries a
/// [`Principal`] in its extensions (see [`on_behalf_of`]), its bearer token.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutgoingInterceptor;

impl Interceptor for OutgoingInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut())));
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
/// `clients.ca_path`) with the configured deadlines; connection failures surface as UNAVAILABLE on the calls.
pub fn connect_lazy(endpoint: &str, cfg: &ClientConfig) -> anyhow::Result<InternalChannel> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned())?;
    if endpoint.starts_with("https://") {
        let ca = cfg
            .ca_path
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{endpoint} is https: clients.ca_path must name the CA to trust"))?;
        builder = builder.tls_config(crate::tls::client_config(ca)?)?;
    }
    let channel = builder
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(InterceptedService::new(channel, OutgoingInterceptor))
}
