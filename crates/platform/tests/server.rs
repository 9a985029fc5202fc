//! The platform's server and client builders over a real gRPC connection: authentication,
//! forwarding of the caller's principal, trace context across the hop, rich error details
//! read back by a client, health and graceful shutdown.
//!
//! One test per binary: it installs a global subscriber (servers run on worker threads).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sspm_platform::auth::{TokenMinter, TokenVerifier, caller};
use sspm_platform::client::{connect_lazy, on_behalf_of};
use sspm_platform::config::{ClientConfig, SspmConfig};
use sspm_platform::{ServiceServer, error};
use sspm_proto::v1::ticketing_service_client::TicketingServiceClient;
use sspm_proto::v1::ticketing_service_server::{TicketingService, TicketingServiceServer};
use sspm_proto::v1::*;
use sspm_rules::{PrincipalId, Rule, Violation};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// Answers every call with a rule violation naming the authenticated caller, so the test
/// sees both the forwarded principal and the rich details.
struct Refusing;

fn refuse<T, U>(req: &Request<T>) -> Result<Response<U>, Status> {
    let who = caller(req)?;
    Err(error::violation(Violation::new(
        Rule::R2PersonalConnection,
        "targets.outbound",
        format!("refused for {}", who.id),
    )))
}

#[tonic::async_trait]
impl TicketingService for Refusing {
    async fn get_case(&self, r: Request<GetCaseRequest>) -> Result<Response<GetCaseResponse>, Status> {
        refuse(&r)
    }
    async fn list_cases(&self, r: Request<ListCasesRequest>) -> Result<Response<ListCasesResponse>, Status> {
        refuse(&r)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_authenticates_forwards_traces_and_returns_rich_errors() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    sspm_platform::telemetry::install_propagator();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(sspm_platform::telemetry::otel_filter()),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let config = SspmConfig::default();
    let listener = sspm_platform::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ServiceServer::new("test", listener, TokenVerifier::new(&config).unwrap())
        .add_service(TicketingServiceServer::new(Refusing));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let channel = connect_lazy(&format!("http://{addr}"), &ClientConfig::default()).unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: sspm_proto::service_names::TICKETING.into(),
        })
        .await
        .expect("health needs no token")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let mut client = TicketingServiceClient::new(channel);
    // No token: refused before reaching the handler.
    // (The refused calls use ListCases, so that the one server span of GetCase below is
    // the traced call's.)
    let err = client.list_cases(ListCasesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("bearer"), "{}", err.message());

    // A token from another key: refused.
    let mut other = SspmConfig::default();
    other.auth.signing_key = "someone-elses-key-of-at-least-32-bytes".into();
    let alice = PrincipalId::parse("alice@classics.example").unwrap();
    let forged = TokenMinter::new(&other).mint(&alice, 60);
    let mut req = Request::new(ListCasesRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_eq!(client.list_cases(req).await.unwrap_err().code(), Code::Unauthenticated);

    // A valid principal, forwarded by the client builder, inside a client span.
    let token = TokenMinter::new(&config).mint(&alice, 60);
    let principal = TokenVerifier::new(&config).unwrap().verify(&token).await.unwrap();
    let client_span = tracing::info_span!("caller");
    let client_cx = client_span.context();
    let err = {
        let call = client.get_case(on_behalf_of(GetCaseRequest::default(), &principal));
        tracing::Instrument::instrument(call, client_span.clone())
            .await
            .unwrap_err()
    };
    drop(client_span);

    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("refused for alice@classics.example"),
        "{}",
        err.message()
    );
    let details = err.get_error_details();
    let violation = &details.precondition_failure().expect("PreconditionFailure").violations[0];
    assert_eq!(
        (violation.r#type.as_str(), violation.subject.as_str()),
        ("R2", "targets.outbound")
    );
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("R2_PERSONAL_CONNECTION", "sspm.v1")
    );

    // Graceful shutdown: the server stops by itself once told to.
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let server_span = spans
        .iter()
        .find(|s| s.name == "sspm.v1.TicketingService/GetCase")
        .unwrap_or_else(|| {
            panic!(
                "no server span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    let client_span_cx = client_cx.span().span_context().clone();
    assert_eq!(server_span.span_kind, SpanKind::Server);
    assert_eq!(
        server_span.span_context.trace_id(),
        client_span_cx.trace_id(),
        "one trace across the hop"
    );
    assert_eq!(
        server_span.parent_span_id,
        client_span_cx.span_id(),
        "server span is the caller's child"
    );
    assert!(
        spans.iter().all(|s| !s.name.starts_with("grpc.health")),
        "health probes are not traced at INFO"
    );
}
