//! Hostile and careless callers against the running system (issue 17; RELIABILITY.md,
//! "Hostile callers"): each test reproduces an attack or a fault from outside, over real
//! connections to the real services, and asserts what must hold instead. Loopback only,
//! bounded in time and count.

#![allow(clippy::unwrap_used)] // scenario bodies: an unwrap is an assertion

use std::net::SocketAddr;
use std::time::Duration;

use sspm_e2e::{Backend, TestSystem};
use sspm_platform::ServiceKind;
use tonic::Code;

/// An HTTP/2 connection to `addr`, driven in the background; the driver ends with it.
async fn h2_connect(addr: SocketAddr) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// The headers of a gRPC call to `path`, with `token` as its bearer token when given.
fn grpc_headers(addr: SocketAddr, path: &str, token: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).unwrap()
}

/// The gRPC status a response carries in its headers (a call refused before its handler).
fn header_status(response: &http::Response<h2::RecvStream>) -> Option<Code> {
    response
        .headers()
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// `GET /metrics` on `addr` with an optional bearer token: the status line and the body.
async fn get_metrics(addr: SocketAddr, token: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: sspm\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// Finding 3: every path a caller sends used to become a metric label, so unauthenticated
/// calls with long made-up paths grew /metrics without bound. Labels now come from the
/// methods served; everything else is one `unknown` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_with_made_up_paths_do_not_grow_metrics() {
    let s = TestSystem::start(Backend::Sqlite).await;
    let addr = s.addr(ServiceKind::Request);
    let before = s.scrape(ServiceKind::Request).await.len();
    let (client, driver) = h2_connect(addr).await;
    let junk = "x".repeat(6_000);
    let mut refused = 0;
    for batch in 0..21 {
        let mut pending = Vec::new();
        for i in 0..100 {
            let path = format!("/sspm.v1.PortRequestService/{junk}{batch}-{i}");
            let mut client = client.clone().ready().await.unwrap();
            let (response, _send) = client.send_request(grpc_headers(addr, &path, None), true).unwrap();
            pending.push(response);
        }
        for response in pending {
            let response = response.await.unwrap();
            assert_eq!(header_status(&response), Some(Code::Unauthenticated));
            refused += 1;
        }
    }
    driver.abort();
    assert_eq!(refused, 2_100);
    let after = s.scrape(ServiceKind::Request).await;
    assert!(!after.contains("xxxxxxxx"), "a caller's path became a label");
    assert!(
        after.len() < before + 8_000,
        "/metrics grew from {before} to {} bytes",
        after.len()
    );
    assert_eq!(
        sspm_e2e::metric(
            &after,
            "rpc_server_requests_total",
            &[("rpc_service", "unknown"), ("rpc_method", "unknown")]
        ),
        2_100.0
    );
    s.shutdown().await.unwrap();
}

/// Finding 3: the admin port can require a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_can_require_a_bearer_token() {
    const TOKEN: &str = "a-metrics-scrape-token-of-32-bytes!!";
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.admin.bearer_token = TOKEN.into();
    })
    .await;
    let admin = s.admin_addr(ServiceKind::Approval);
    let (status, body) = get_metrics(admin, None).await;
    assert!(status.contains(" 401"), "{status}");
    assert!(!body.contains("sspm_"), "{body}");
    let (status, _) = get_metrics(admin, Some("a-metrics-scrape-token-of-32-bytes!?")).await;
    assert!(status.contains(" 401"), "{status}");
    let (status, body) = get_metrics(admin, Some(TOKEN)).await;
    assert!(status.contains(" 200"), "{status}");
    assert!(body.contains("rpc_server_requests_total"), "{body}");
    s.shutdown().await.unwrap();
}
