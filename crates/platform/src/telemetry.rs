//! One init function for logs and traces: `tracing` with an `EnvFilter` (`RUST_LOG`), the
//! W3C trace-context propagator, and OTLP export when the standard `OTEL_*` variables ask
//! for it. The returned guard flushes and shuts the exporter down.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes pending spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// True when the standard OTLP variables ask for trace export.
pub fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none")
}

/// Installs the W3C propagator so trace context crosses gRPC hops.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Initialises logging and tracing for a process named `service_name` (the OTLP
/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise). Logs go to stderr, filtered
/// by `RUST_LOG` (default `info`, migrations at `warn`).
pub fn init(service_name: &str) -> anyhow::Result<TelemetryGuard> {
    install_propagator();
    // Without RUST_LOG: info, but not a line per applied migration at every start.
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sea_orm_migration=warn".to_owned());
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(directives);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);

    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sspm"))
            .with_filter(otel_filter())
    });
    tracing_subscriber::registry().with(fmt).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// What reaches OpenTelemetry: our spans at INFO and above, none of the transport's
/// internals (h2/hyper/tower would otherwise export dozens of one-span traces), and database
/// spans only inside another span (an RPC): the background loops' polling queries would
/// otherwise be a trace each, several times a second.
pub fn otel_filter<S>() -> impl tracing_subscriber::layer::Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::{DynFilterFn, FilterExt};
    let targets = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("sqlx", LevelFilter::WARN);
    let db_in_context = DynFilterFn::new(
        |meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>| {
            !(meta.is_span() && meta.target().starts_with("sea_orm")) || cx.lookup_current().is_some()
        },
    );
    targets.and(db_in_context)
}

/// Reads trace context from HTTP headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace context into gRPC metadata.
#[derive(Debug)]
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}
