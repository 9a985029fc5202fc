//! OTLP export with the standard `OTEL_*` variables, end to end: the real `sspm up` binary,
//! started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a stand-in collector, exports the
//! spans of a call (across two services, one trace) and each service's metrics, and
//! flushes them on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sspm_platform::SspmConfig;
use sspm_proto::v1 as pb;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use tokio_stream::wrappers::TcpListenerStream;

/// A stand-in collector: keeps every export request it receives.
#[derive(Clone)]
struct Collector<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Clone> Collector<T> {
    fn keep(&self, request: tonic::Request<T>) {
        self.0.lock().unwrap().push(request.into_inner());
    }

    fn received(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl MetricsService for Collector<ExportMetricsServiceRequest> {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep(request);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector<ExportTraceServiceRequest> {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The `service.name` of an exported resource.
fn service_name(resource: Option<&Resource>) -> Option<String> {
    resource?
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sspm_up_exports_traces_over_otlp_when_the_standard_variable_is_set() {
    let collector = Collector::<ExportTraceServiceRequest>::default();
    let metrics = Collector::<ExportMetricsServiceRequest>::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let data = tempfile::tempdir().unwrap();
    let mut up = common::sspm_up(
        data.path(),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))],
    );
    let endpoint = format!("http://127.0.0.1:{}", up.ports[0]);
    let answer = common::eventually("sspm up", || async {
        let channel = sspm_platform::client::connect_lazy(&endpoint, &SspmConfig::default().clients).ok()?;
        let req = common::authed(
            "percy@classics.example",
            pb::GetPortLimitsRequest {
                business_unit_id: "bu-league".into(),
            },
        );
        PortRequestServiceClient::new(channel).get_port_limits(req).await.ok()
    })
    .await
    .into_inner();
    assert_eq!(answer.limits.unwrap().concurrent, 100);

    // SIGTERM: graceful shutdown flushes the exporters.
    common::terminate(&mut up).await;

    let exported = collector.received();
    let mut spans = Vec::new();
    for req in &exported {
        for rs in &req.resource_spans {
            let service = service_name(rs.resource.as_ref());
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans.push((service.clone(), s.name.clone(), s.trace_id.clone()));
                }
            }
        }
    }
    let get = spans
        .iter()
        .find(|(_, name, _)| name == "sspm.v1.PortRequestService/GetPortLimits")
        .unwrap_or_else(|| panic!("no GetPortLimits span exported: {spans:?}"));
    assert!(
        get.0.as_deref().is_some_and(|s| s.contains("sspm")),
        "service.name: {:?}",
        get.0
    );
    assert!(
        spans
            .iter()
            .any(|(_, name, trace)| name == "sspm.v1.AuthorizationService/Check" && *trace == get.2),
        "the authorization check is in the same trace: {spans:?}"
    );

    // Metrics: each service exports its own, flushed at shutdown.
    let exported = metrics.received();
    let mut names = Vec::new();
    for req in &exported {
        for rm in &req.resource_metrics {
            let service = service_name(rm.resource.as_ref()).unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    names.push((service.clone(), m.name.clone()));
                }
            }
        }
    }
    for (service, metric) in [
        ("sspm-request", "rpc.server.requests"),
        ("sspm-request", "rpc.server.duration"),
        ("sspm-request", "sspm.requests"),
        ("sspm-authorization", "rpc.server.requests"),
        ("sspm-approval", "sspm.approval_tasks"),
    ] {
        assert!(
            names.iter().any(|(s, n)| s.contains(service) && n == metric),
            "{metric} of {service} not exported: {names:?}"
        );
    }
    server.abort();
}
