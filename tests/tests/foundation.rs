//! The four real services on ephemeral ports: they start on their own databases, report
//! SERVING, are discoverable through reflection (v1 and v1alpha, as grpcurl uses), require
//! a valid bearer token on every API call, and stop gracefully.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use sspm_e2e::{Backend, TestSystem};
use sspm_platform::ServiceKind;
use sspm_proto::service_names;
use tokio_stream::StreamExt;
use tonic::Code;

fn api_of(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Request => service_names::PORT_REQUEST,
        ServiceKind::Authorization => service_names::AUTHORIZATION,
        ServiceKind::Approval => service_names::APPROVAL,
        ServiceKind::Ticketing => service_names::TICKETING,
    }
}

/// The calls for the other SSPM services that `kind` serves beside its API.
fn internal_api_of(kind: ServiceKind) -> Option<&'static str> {
    match kind {
        ServiceKind::Request => None,
        ServiceKind::Authorization => Some(service_names::INTERNAL_AUTHORIZATION),
        ServiceKind::Approval => Some(service_names::INTERNAL_APPROVAL),
        ServiceKind::Ticketing => Some(service_names::INTERNAL_TICKETING),
    }
}

async fn listed_services_v1(system: &TestSystem, kind: ServiceKind) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(system.channel(kind));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    match answers.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// What grpcurl 1.8.6 does: v1alpha reflection, `file_containing_symbol` for `describe`.
async fn describe_v1alpha(system: &TestSystem, kind: ServiceKind, symbol: &str) -> Vec<Vec<u8>> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(system.channel(kind));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    match answers.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn four_services_start_serve_reflect_authenticate_and_stop(backend: Backend) {
    let system = TestSystem::start(backend).await;

    for kind in ServiceKind::ALL {
        let api = api_of(kind);
        let mut expected = vec!["grpc.health.v1.Health", api, service_names::AUDIT];
        expected.extend(internal_api_of(kind));
        expected.sort_unstable();
        assert_eq!(
            listed_services_v1(&system, kind).await,
            expected,
            "{} service lists its own API (public and internal), its audit trail and health",
            kind.name()
        );
        let files = describe_v1alpha(&system, kind, api).await;
        assert!(!files.is_empty(), "{api} can be described");
    }

    // Every API call needs a token; health and reflection (above) did not.
    let mut tickets =
        sspm_proto::v1::ticketing_service_client::TicketingServiceClient::new(system.channel(ServiceKind::Ticketing));
    let err = tickets
        .list_cases(sspm_proto::v1::ListCasesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut requests = sspm_proto::v1::port_request_service_client::PortRequestServiceClient::new(
        system.channel(ServiceKind::Request),
    );
    let mut bad = tonic::Request::new(sspm_proto::v1::GetPortLimitsRequest::default());
    bad.metadata_mut()
        .insert("authorization", "Bearer not.a.token".parse().unwrap());
    assert_eq!(
        requests.get_port_limits(bad).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let with_token = system.authed(
        "alice@classics.example",
        sspm_proto::v1::GetPortLimitsRequest::default(),
    );
    let answer = requests.get_port_limits(with_token).await;
    assert!(
        !matches!(&answer, Err(s) if s.code() == Code::Unauthenticated),
        "a valid token passes authentication: {answer:?}"
    );

    let addr = system.addr(ServiceKind::Request);
    system.shutdown().await.expect("clean shutdown");
    let after = tokio::net::TcpStream::connect(addr).await;
    assert!(after.is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_on_sqlite() {
    four_services_start_serve_reflect_authenticate_and_stop(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn four_services_on_postgres() {
    four_services_start_serve_reflect_authenticate_and_stop(Backend::Postgres).await;
}
