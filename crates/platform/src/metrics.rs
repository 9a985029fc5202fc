//! Metrics of one service: per-RPC figures recorded by the server's layer, business figures
//! read from the service's database, exposed as Prometheus text on the service's admin
//! port (`GET /metrics`) and exported over OTLP when the standard `OTEL_*` variables ask.
//!
//! Names follow the OpenTelemetry conventions; Prometheus sees them translated
//! (`rpc.server.duration` in seconds becomes `rpc_server_duration_seconds`, a counter
//! `sspm.x` becomes `sspm_x_total`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tokio::net::TcpListener;

/// Buckets of the RPC latency histogram, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// How long a scrape waits for the business figures before answering with the last ones.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Refresh = Arc<dyn Fn() -> BoxFuture + Send + Sync>;
/// A gauge's values: one per set of attributes.
type Values = Arc<Mutex<Vec<(Vec<KeyValue>, i64)>>>;

/// The metrics of one service.
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    meter: Meter,
    rpc: RpcMetrics,
    refresh: Arc<Mutex<Vec<Refresh>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// True when the standard OTLP variables ask for metric export.
pub fn otlp_metrics_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
        && std::env::var("OTEL_METRICS_EXPORTER").map_or(true, |v| v != "none")
}

impl Metrics {
    /// Metrics of the service `service_name` (e.g. `sspm-request`), with OTLP export when
    /// configured by the environment.
    pub fn new(service_name: &str) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus);
        if otlp_metrics_configured() {
            let exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
            // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
            builder = builder.with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build());
        }
        let provider = builder.build();
        let meter = provider.meter("sspm");
        let rpc = RpcMetrics {
            duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Time from receiving an RPC to its response headers (for a stream: until it opens)")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            requests: meter
                .u64_counter("rpc.server.requests")
                .with_description("RPCs received")
                .build(),
            errors: meter
                .u64_counter("rpc.server.errors")
                .with_description("RPCs answered with a gRPC status other than OK, by status code")
                .build(),
            methods: Methods::default(),
        };
        Ok(Self {
            provider,
            registry,
            meter,
            rpc,
            refresh: Arc::default(),
        })
    }

    /// The instruments the server layer records every RPC in.
    pub fn rpc(&self) -> RpcMetrics {
        self.rpc.clone()
    }

    /// A gauge whose values the service sets (see [`Metrics::on_refresh`]): one value per
    /// set of attributes, as last set.
    pub fn gauge(&self, name: &'static str, description: &'static str) -> Gauge {
        let values: Values = Arc::default();
        let read = values.clone();
        // The instrument lives as long as the provider; the handle is not needed.
        let _ = self
            .meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                let values = read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (attributes, value) in values.iter() {
                    observer.observe(*value, attributes);
                }
            })
            .build();
        Gauge { values }
    }

    /// A counter read from `value` at each collection (e.g. an atomic the service bumps).
    pub fn observed_counter(
        &self,
        name: &'static str,
        description: &'static str,
        value: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let _ = self
            .meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(value(), &[]))
            .build();
    }

    /// Registers how the service reads its business figures (typically a few aggregate
    /// queries that set [`Gauge`]s). It runs before every scrape, and every 15 seconds when
    /// OTLP export is on; a failure is logged and the last figures stay.
    pub fn on_refresh<F, Fut>(&self, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::new(move || Box::pin(f())));
    }

    /// Reads the business figures now.
    pub async fn refresh(&self) {
        let hooks: Vec<Refresh> = self
            .refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for hook in hooks {
            match tokio::time::timeout(REFRESH_TIMEOUT, hook()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read business figures; the last ones are shown"),
                Err(_) => {
                    tracing::warn!("business figures took longer than {REFRESH_TIMEOUT:?}; the last ones are shown")
                }
            }
        }
    }

    /// Everything in the Prometheus text format, business figures read just before.
    pub async fn render(&self) -> String {
        self.refresh().await;
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Flushes the OTLP exporter, if any, and stops the readers.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "metric readers did not shut down cleanly");
        }
    }
}

/// One RPC's figures, recorded by the server's layer.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    duration: Histogram<f64>,
    requests: Counter<u64>,
    errors: Counter<u64>,
    methods: Methods,
}

/// The label value of every path that is not one of the server's methods.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The methods a server serves, as `/package.Service/Method` paths: the closed set that
/// metric labels and span names are taken from, so that whatever path a caller sends, the
/// number of series stays that of the methods served (README, "Metrics").
#[derive(Clone, Debug, Default)]
pub struct Methods(Arc<std::collections::HashMap<Box<str>, MethodLabels>>);

/// The (service, method) labels of one path.
type MethodLabels = (Arc<str>, Arc<str>);

impl Methods {
    /// The methods of the services `names` (fully qualified, e.g. `sspm.v1.TicketingService`)
    /// found in the encoded file descriptor sets `sets`.
    pub fn of(names: &[&str], sets: &[&[u8]]) -> anyhow::Result<Self> {
        use prost::Message as _;
        let mut out = std::collections::HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    if !names.contains(&full.as_str()) {
                        continue;
                    }
                    let service_label: Arc<str> = Arc::from(full.as_str());
                    for method in &service.method {
                        out.insert(
                            format!("/{full}/{}", method.name()).into_boxed_str(),
                            (service_label.clone(), Arc::from(method.name())),
                        );
                    }
                }
            }
        }
        Ok(Self(Arc::new(out)))
    }

    /// The (service, method) labels of `path`; `None` for a path that is not served.
    pub fn labels(&self, path: &str) -> Option<(&Arc<str>, &Arc<str>)> {
        self.0.get(path).map(|(s, m)| (s, m))
    }

    /// How many methods.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl RpcMetrics {
    /// The same instruments, labelling only `methods` by name (every other path is
    /// [`UNKNOWN_METHOD`]).
    pub fn with_methods(mut self, methods: Methods) -> Self {
        self.methods = methods;
        self
    }

    /// Records one RPC to `path` (`/package.Service/Method`) answered with `code` after
    /// `elapsed`. A path the server does not serve is recorded as [`UNKNOWN_METHOD`].
    pub fn record(&self, path: &str, code: i32, elapsed: Duration) {
        let (service, method) = match self.methods.labels(path) {
            Some((s, m)) => (
                opentelemetry::Value::from(s.clone()),
                opentelemetry::Value::from(m.clone()),
            ),
            None => (UNKNOWN_METHOD.into(), UNKNOWN_METHOD.into()),
        };
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
        ];
        self.requests.add(1, &attributes);
        attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        if code != 0 {
            self.errors.add(1, &attributes);
        }
        self.duration.record(elapsed.as_secs_f64(), &attributes);
    }
}

/// A gauge set by its service.
#[derive(Clone, Debug)]
pub struct Gauge {
    values: Values,
}

impl Gauge {
    /// Replaces every value: one per set of labels.
    pub fn set_all(&self, values: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>) {
        let values = values
            .into_iter()
            .map(|(labels, v)| (labels.into_iter().map(|(k, l)| KeyValue::new(k, l)).collect(), v))
            .collect();
        *self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = values;
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes())
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The admin HTTP server: `GET /metrics` answers the Prometheus text format; with a
/// `bearer_token` (config `admin.bearer_token`), only to requests that carry it (401
/// otherwise). One scrape renders at a time: concurrent scrapes wait for it rather than
/// each building the whole text.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    bearer_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::response::IntoResponse as _;
    use axum::routing::get;
    let token: Option<Arc<str>> = bearer_token.filter(|t| !t.is_empty()).map(Arc::from);
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: http::HeaderMap| {
            let metrics = metrics.clone();
            let token = token.clone();
            let one_at_a_time = one_at_a_time.clone();
            async move {
                if let Some(token) = token
                    && !bearer_matches(&headers, &token)
                {
                    return (
                        http::StatusCode::UNAUTHORIZED,
                        [(http::header::WWW_AUTHENTICATE, "Bearer")],
                        "a bearer token is required (admin.bearer_token)\n",
                    )
                        .into_response();
                }
                let _turn = one_at_a_time.lock().await;
                (
                    [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    metrics.render().await,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rpc_figures_and_gauges_reach_the_prometheus_text() {
        let m = Metrics::new("sspm-test").unwrap();
        let methods = Methods::of(&["sspm.v1.TicketingService"], &[sspm_proto::FILE_DESCRIPTOR_SET]).unwrap();
        let rpc = m.rpc().with_methods(methods);
        rpc.record("/sspm.v1.TicketingService/GetCase", 0, Duration::from_millis(3));
        rpc.record("/sspm.v1.TicketingService/GetCase", 5, Duration::from_millis(1));
        let g = m.gauge("sspm.things", "Things");
        let set = g.clone();
        m.on_refresh(move || {
            let set = set.clone();
            async move {
                set.set_all([(vec![("state", "open".to_owned())], 7)]);
                Ok(())
            }
        });
        let text = m.render().await;
        assert!(
            text.contains(
                r#"rpc_server_requests_total{rpc_method="GetCase",rpc_service="sspm.v1.TicketingService",rpc_system="grpc""#
            ),
            "{text}"
        );
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("rpc_server_requests_total{"), "2");
        assert_eq!(line("rpc_server_errors_total{"), "1");
        assert!(text.contains(r#"rpc_grpc_status_code="5""#), "{text}");
        assert_eq!(line(r#"sspm_things{state="open""#), "7");
        assert!(text.contains("rpc_server_duration_seconds_bucket{"), "{text}");
        m.shutdown();
    }

    #[tokio::test]
    async fn paths_that_are_not_served_share_one_label() {
        let m = Metrics::new("sspm-test").unwrap();
        let methods = Methods::of(
            &["sspm.v1.TicketingService", "sspm.internal.v1.TicketingService"],
            &[sspm_proto::FILE_DESCRIPTOR_SET],
        )
        .unwrap();
        assert!(methods.len() >= 6, "the ticketing methods: {methods:?}");
        let rpc = m.rpc().with_methods(methods);
        for i in 0..500 {
            let junk = format!("/sspm.v1.TicketingService/{}{i}", "x".repeat(6_000));
            rpc.record(&junk, 16, Duration::from_millis(1));
        }
        // A method of another service is not served here either.
        rpc.record("/sspm.v1.ApprovalService/SetDailyLimit", 16, Duration::from_millis(1));
        let text = m.render().await;
        assert!(text.len() < 20_000, "{} bytes of metrics", text.len());
        assert!(!text.contains("xxxx") && !text.contains("SetDailyLimit"), "{text}");
        let unknown = text
            .lines()
            .find(|l| l.starts_with("rpc_server_requests_total{"))
            .unwrap();
        assert!(
            unknown.contains(r#"rpc_method="unknown",rpc_service="unknown""#) && unknown.ends_with(" 501"),
            "{unknown}"
        );
        m.shutdown();
    }
}
