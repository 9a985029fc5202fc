//! One `CreatePortChangeRequest` is one trace across the four real services: the request
//! service's server span is the root, and the authorization, ticketing and approval server
//! spans are its children (docs/ARCHITECTURE.md, "Observability and operations").
//!
//! One test in this binary: it installs a global subscriber, since the services run on the
//! runtime's worker threads.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sspm_e2e::{Backend, TestSystem};
use sspm_proto::v1 as pb;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_one_trace_across_the_four_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    sspm_platform::telemetry::install_propagator();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sspm-test"))
            .with_filter(sspm_platform::telemetry::otel_filter()),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let system = TestSystem::start(Backend::Sqlite).await;
    let created = system
        .create_concurrent("percy@classics.example", "traced-1", "bu-league", 120)
        .await
        .unwrap();
    assert_eq!(created.outcome(), pb::CreateOutcome::AutoApproved);
    // The case is closed after the answer, in the create's trace: wait for it.
    let number = created.request.unwrap().case_number;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while system.case(&number).await.status() != pb::CaseStatus::Closed {
        assert!(tokio::time::Instant::now() < deadline, "case {number} never closed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let missing = system
        .requests()
        .get_port_change_request(system.authed(
            "percy@classics.example",
            pb::GetPortChangeRequestRequest {
                request_id: "no-such-request".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    system.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let root = spans
        .iter()
        .find(|s| s.name == "sspm.v1.PortRequestService/CreatePortChangeRequest")
        .unwrap_or_else(|| {
            panic!(
                "no create span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the create is the root of its trace"
    );
    let trace = root.span_context.trace_id();
    let in_trace: Vec<_> = spans.iter().filter(|s| s.span_context.trace_id() == trace).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_ref()).collect();
    for expected in [
        "sspm.v1.AuthorizationService/Check",
        "sspm.internal.v1.TicketingService/OpenCase",
        "sspm.internal.v1.ApprovalService/EvaluateIncrease",
        "sspm.internal.v1.TicketingService/CloseCase",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from the trace: {names:?}"
        );
    }
    // Failed calls carry their gRPC code.
    let get = spans
        .iter()
        .find(|s| s.name == "sspm.v1.PortRequestService/GetPortChangeRequest")
        .unwrap();
    let code = get
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "rpc.grpc.status_code")
        .map(|kv| kv.value.to_string());
    assert_eq!(code.as_deref(), Some("5"), "{:?}", get.attributes);
    // The database work shows as client spans inside the RPCs.
    let db: Vec<_> = in_trace.iter().filter(|s| s.name.starts_with("sea_orm.")).collect();
    assert!(!db.is_empty(), "no database spans in {names:?}");
    assert!(db.iter().all(|s| s.parent_span_id != SpanId::INVALID));
    // The background loops' polling queries are not exported as traces of their own.
    let orphans = spans
        .iter()
        .filter(|s| s.name.starts_with("sea_orm.") && s.parent_span_id == SpanId::INVALID)
        .count();
    assert_eq!(orphans, 0, "database spans outside any RPC were exported");
    // A proper tree: every span but the root has its parent in the trace.
    let ids: HashMap<SpanId, &str> = in_trace
        .iter()
        .map(|s| (s.span_context.span_id(), s.name.as_ref()))
        .collect();
    for s in &in_trace {
        if s.span_context.span_id() != root.span_context.span_id() {
            assert!(
                ids.contains_key(&s.parent_span_id),
                "{} has a parent outside the trace",
                s.name
            );
        }
    }
    // The calls to the other services are children of the create.
    for s in in_trace
        .iter()
        .filter(|s| s.name.starts_with("sspm.v1.") && s.name != root.name)
    {
        assert_eq!(
            s.parent_span_id,
            root.span_context.span_id(),
            "{} is not a child of the create",
            s.name
        );
    }
}
