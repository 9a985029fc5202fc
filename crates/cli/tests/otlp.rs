//! OTLP export with the standard `OTEL_*` variables, end to end: the real `sspm up` binary,
//! started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a stand-in collector, exports the
//! spans of a call (across two services, one trace) and each service's metrics, and
//! flushes them on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use sspm_platform::{PrincipalKind, SspmConfig, TokenMinter};
use sspm_proto::v1 as pb;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use tokio_stream::wrappers::TcpListenerStream;

/// Kills the child if the test fails before it exits.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[derive(Clone, Default)]
struct MetricsCollector(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for MetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sspm_up_exports_traces_over_otlp_when_the_standard_variable_is_set() {
    let collector = Collector::default();
    let metrics = MetricsCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sspm"))
        .args(["up", "--data-dir"])
        .arg(data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))
        .env("SSPM__SERVICES__REQUEST__LISTEN", format!("127.0.0.1:{}", ports[0]))
        .env(
            "SSPM__SERVICES__AUTHORIZATION__LISTEN",
            format!("127.0.0.1:{}", ports[1]),
        )
        .env("SSPM__SERVICES__APPROVAL__LISTEN", format!("127.0.0.1:{}", ports[2]))
        .env("SSPM__SERVICES__TICKETING__LISTEN", format!("127.0.0.1:{}", ports[3]))
        .env("SSPM__SERVICES__REQUEST__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SSPM__SERVICES__AUTHORIZATION__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SSPM__SERVICES__APPROVAL__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SSPM__SERVICES__TICKETING__ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("SSPM_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);

    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    let token = TokenMinter::new(&SspmConfig::default().auth).mint(
        &sspm_platform::auth::parse_principal("percy@classics.example").unwrap(),
        PrincipalKind::User,
        600,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let attempt = async {
            let channel = sspm_platform::client::connect_lazy(&endpoint, &SspmConfig::default().clients).ok()?;
            let mut client = PortRequestServiceClient::new(channel);
            let mut req = tonic::Request::new(pb::GetPortLimitsRequest {
                business_unit_id: "bu-league".into(),
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.get_port_limits(req).await.ok()
        };
        if let Some(a) = attempt.await {
            break a.into_inner();
        }
        assert!(tokio::time::Instant::now() < deadline, "sspm up did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.limits.unwrap().concurrent, 100);

    // SIGTERM: graceful shutdown flushes the exporter.
    let pid = child.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "sspm up did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");

    let exported = collector.0.lock().unwrap().clone();
    let mut spans = Vec::new();
    for req in &exported {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value));
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
    let exported = metrics.0.lock().unwrap().clone();
    let mut names = Vec::new();
    for req in &exported {
        for rm in &req.resource_metrics {
            let service = rm
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
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
