//! Hostile and careless callers against the running system (RELIABILITY.md,
//! "Hostile callers"): each test reproduces an attack or a fault from outside, over real
//! connections to the real services, and asserts what must hold instead. Loopback only,
//! bounded in time and count.

#![allow(clippy::unwrap_used)] // scenario bodies: an unwrap is an assertion

use std::net::SocketAddr;
use std::time::Duration;

use sspm_e2e::{Backend, TestSystem};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

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

const PERCY: &str = "percy@classics.example";
const MARGUERITE: &str = "marguerite@league.example";

fn limits_request(s: &TestSystem, who: &str, bu: &str) -> tonic::Request<pb::GetPortLimitsRequest> {
    s.authed(
        who,
        pb::GetPortLimitsRequest {
            business_unit_id: bu.into(),
        },
    )
}

/// A gRPC frame holding `message`.
fn grpc_frame(message: &impl prost::Message) -> bytes::Bytes {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// Finding 1: one user opening ~1,000 streams with headers and no message used to hold
/// every admission slot until it disconnected. Now such calls hold only that user's own
/// share (per-principal in-flight bound), take no server-wide slot, and are ended when
/// their message does not come within the deadline; other tenants are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_streams_starve_no_one_and_are_ended_at_their_deadline() {
    const SHARE: usize = 8;
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.admission.max_in_flight = 20;
        c.admission.per_principal_max_in_flight = SHARE;
        c.server.request_message_timeout_ms = 3_000;
    })
    .await;
    let addr = s.addr(ServiceKind::Request);
    let token = s.token(PERCY);
    let path = "/sspm.v1.PortRequestService/GetPortLimits";

    // Ten connections of 100 streams each (the server's per-connection maximum), all
    // headers and no message.
    let mut held = Vec::new();
    let mut refused_at_once = 0;
    let mut drivers = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..10 {
        let (client, driver) = h2_connect(addr).await;
        drivers.push(driver);
        for _ in 0..100 {
            let mut client = client.clone().ready().await.unwrap();
            let (response, send) = client
                .send_request(grpc_headers(addr, path, Some(&token)), false)
                .unwrap();
            held.push(send);
            waiting.push(response);
        }
    }
    let answers = futures_util::future::join_all(
        waiting
            .into_iter()
            .map(|response| tokio::time::timeout(Duration::from_millis(500), response)),
    )
    .await;
    for answer in answers.into_iter().flatten() {
        assert_eq!(header_status(&answer.unwrap()), Some(Code::ResourceExhausted));
        refused_at_once += 1;
    }
    assert_eq!(
        refused_at_once,
        1_000 - SHARE,
        "all but the user's own share refused at once"
    );

    // Meanwhile another tenant is served, and health says so.
    for _ in 0..20 {
        let limits = s
            .requests()
            .get_port_limits(limits_request(&s, MARGUERITE, "bu-league"))
            .await
            .expect("another tenant is served while the streams are open");
        assert!(limits.into_inner().limits.is_some());
    }
    // The same user's next call is refused at once with the reason, not queued.
    let own = s
        .requests()
        .get_port_limits(limits_request(&s, PERCY, "bu-league"))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::ResourceExhausted, "{own:?}");
    assert_eq!(own.get_details_error_info().unwrap().reason, "TOO_MANY_IN_FLIGHT");

    // At the deadline the held calls end, and the user is served again.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let again = s
        .requests()
        .get_port_limits(limits_request(&s, PERCY, "bu-league"))
        .await;
    assert!(again.is_ok(), "after the deadline: {again:?}");
    drop(held);
    for d in drivers {
        d.abort();
    }
    s.shutdown().await.unwrap();
}

/// Finding 1: the held call's own view: it is ended with DEADLINE_EXCEEDED, and a message
/// sent in time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_message_must_arrive_within_the_deadline() {
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.server.request_message_timeout_ms = 1_000;
    })
    .await;
    let addr = s.addr(ServiceKind::Request);
    let token = s.token(PERCY);
    let path = "/sspm.v1.PortRequestService/GetPortLimits";
    let (client, driver) = h2_connect(addr).await;

    let mut c = client.clone().ready().await.unwrap();
    let (late, _send) = c.send_request(grpc_headers(addr, path, Some(&token)), false).unwrap();
    let started = tokio::time::Instant::now();
    let late = tokio::time::timeout(Duration::from_secs(10), late)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header_status(&late), Some(Code::DeadlineExceeded));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A message that comes a little after its headers, within the deadline, is served.
    let mut c = client.clone().ready().await.unwrap();
    let (timely, mut send) = c.send_request(grpc_headers(addr, path, Some(&token)), false).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send.send_data(
        grpc_frame(&pb::GetPortLimitsRequest {
            business_unit_id: "bu-league".into(),
        }),
        true,
    )
    .unwrap();
    let timely = timely.await.unwrap();
    assert_eq!(timely.status(), http::StatusCode::OK);
    assert_eq!(header_status(&timely), None, "answered by the handler");
    let mut body = timely.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    driver.abort();
    s.shutdown().await.unwrap();
}

/// Whether the server closed `tcp` within `within` (end of file or an error on read).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's HTTP/2 SETTINGS: read on.
            Ok(Ok(_)) => {}
        }
    }
}

/// Finding 2: thousands of idle connections used to exhaust the file descriptors. Now a
/// listener holds at most `server.max_connections` (more are closed at once), connections
/// without a call are closed after `server.idle_timeout_ms`, and the service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_closed() {
    const CAP: usize = 200;
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.server.max_connections = CAP;
        c.server.idle_timeout_ms = 1_500;
    })
    .await;
    let addr = s.addr(ServiceKind::Request);
    // A caller connected before the flood, busy all along.
    let mut busy = s.requests();
    busy.get_port_limits(limits_request(&s, MARGUERITE, "bu-league"))
        .await
        .unwrap();

    let mut flood = Vec::new();
    for _ in 0..1_000 {
        flood.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let closed = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|tcp| closed_by_server(tcp, Duration::from_millis(700))),
    )
    .await;
    let refused = closed.iter().filter(|c| **c).count();
    assert!(
        (1_000 - CAP..=1_000 - CAP + 5).contains(&refused),
        "{refused} of 1,000 closed at once with a cap of {CAP} (one held by the busy caller)"
    );
    // The busy caller is still served, and so is the admin port.
    busy.get_port_limits(limits_request(&s, MARGUERITE, "bu-league"))
        .await
        .unwrap();
    assert!(
        s.scrape(ServiceKind::Request)
            .await
            .contains("rpc_server_requests_total")
    );

    // The idle ones are closed by the server after the idle timeout.
    let kept: Vec<_> = flood
        .iter_mut()
        .zip(&closed)
        .filter(|(_, c)| !**c)
        .map(|(t, _)| t)
        .collect();
    let later = futures_util::future::join_all(
        kept.into_iter()
            .map(|tcp| closed_by_server(tcp, Duration::from_secs(6))),
    )
    .await;
    assert!(later.iter().all(|c| *c), "idle connections left open");
    // New callers get in again.
    let mut fresh = s.requests();
    fresh
        .get_port_limits(limits_request(&s, PERCY, "bu-league"))
        .await
        .unwrap();
    s.shutdown().await.unwrap();
}

/// Finding 2: the HTTP/2 settings a caller sees are the bounded ones, and a connection past
/// its age is asked to go (GOAWAY) and, if a call keeps it open, closed after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_bounded_and_old_connections_are_recycled() {
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.server.max_connection_age_ms = 1_000;
        c.server.max_connection_age_grace_ms = 1_000;
        c.server.request_message_timeout_ms = 30_000;
    })
    .await;
    let addr = s.addr(ServiceKind::Approval);
    let token = s.token(PERCY);

    // The settings: one health call, then what the server announced.
    let (client, idle_driver) = h2_connect(addr).await;
    let mut c = client.clone().ready().await.unwrap();
    let (probe, _) = c
        .send_request(grpc_headers(addr, "/grpc.health.v1.Health/Check", None), true)
        .unwrap();
    let _ = probe.await.unwrap();
    assert_eq!(client.current_max_send_streams(), 100);
    drop((c, client));
    // No call open: the GOAWAY at its age ends it.
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), idle_driver)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // A call that never completes keeps the connection past its age only for the grace.
    let (client, busy_driver) = h2_connect(addr).await;
    let mut c = client.ready().await.unwrap();
    let (_held, _send) = c
        .send_request(
            grpc_headers(addr, "/sspm.v1.ApprovalService/ListApprovalTasks", Some(&token)),
            false,
        )
        .unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), busy_driver)
        .await
        .unwrap()
        .unwrap();
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(1_500) && lasted < Duration::from_secs(10),
        "closed after {lasted:?}: the age is 1 s and the grace 1 s"
    );
    s.shutdown().await.unwrap();
}

/// Asserts that `e` is INVALID_ARGUMENT naming `field` in its `BadRequest` details.
fn refused_naming(e: &tonic::Status, field: &str) {
    let named = e
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default();
    assert_eq!((e.code(), named.as_str()), (Code::InvalidArgument, field), "{e:?}");
}

/// A create by `who` of `concurrent` ports on `bu`, with `justification`.
fn create_justified(
    s: &TestSystem,
    who: &str,
    id: &str,
    bu: &str,
    concurrent: i32,
    justification: &str,
) -> tonic::Request<pb::CreatePortChangeRequestRequest> {
    s.authed(
        who,
        pb::CreatePortChangeRequestRequest {
            request_id: id.into(),
            business_unit_id: bu.into(),
            targets: Some(pb::PortTargets {
                concurrent: Some(concurrent),
                ..Default::default()
            }),
            justification: justification.into(),
            ..Default::default()
        },
    )
}

/// Finding 5: inputs that broke the database layer or could fool a human. A filter of
/// 40,000 states answered INTERNAL ("too many SQL variables"); a justification with U+202E
/// was stored and shown reordered; a token valid for years was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_filters_bidi_text_and_long_lived_tokens_are_refused() {
    let s = TestSystem::start(Backend::Sqlite).await;
    let many = vec![1; 40_000];

    let e = s
        .requests()
        .list_port_change_requests(s.authed(
            PERCY,
            pb::ListPortChangeRequestsRequest {
                states: many.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    refused_naming(&e, "states");
    let e = s
        .ticketing()
        .list_cases(s.authed(
            "percy@classics.example",
            pb::ListCasesRequest {
                business_unit_id: "bu-league".into(),
                statuses: many.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    refused_naming(&e, "statuses");
    let e = s
        .approval()
        .list_approval_tasks(s.authed(
            "netops@sspm.example",
            pb::ListApprovalTasksRequest {
                states: many,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    refused_naming(&e, "states");
    // Duplicates are folded, not refused.
    let folded = s
        .requests()
        .list_port_change_requests(s.authed(
            PERCY,
            pb::ListPortChangeRequestsRequest {
                states: vec![1, 1, 1, 2],
                ..Default::default()
            },
        ))
        .await;
    assert!(folded.is_ok(), "{folded:?}");

    // Bidirectional overrides in free text: refused, naming the field; nothing stored.
    let tricky = "Approve: \u{202E}TCEJER\u{202C}";
    let e = s
        .requests()
        .create_port_change_request(create_justified(&s, PERCY, "bidi-1", "bu-classics", 900, tricky))
        .await
        .unwrap_err();
    refused_naming(&e, "justification");
    let gone = s
        .requests()
        .get_port_change_request(s.authed(
            PERCY,
            pb::GetPortChangeRequestRequest {
                request_id: "bidi-1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let pending = s.create_concurrent(PERCY, "bidi-2", "bu-classics", 900).await.unwrap();
    assert_eq!(pending.outcome(), pb::CreateOutcome::NeedsInformation);
    let e = s
        .requests()
        .provide_information(s.authed(
            PERCY,
            pb::ProvideInformationRequest {
                request_id: "bidi-2".into(),
                justification: "peak\u{2067}season\u{2069}".into(),
            },
        ))
        .await
        .unwrap_err();
    refused_naming(&e, "justification");
    assert_eq!(
        s.port_change_request(PERCY, "bidi-2").await.state(),
        pb::PortChangeRequestState::PendingInformation
    );

    // A token that lives longer than auth.max_token_lifetime_seconds, signed with the right key.
    let percy = sspm_platform::auth::parse_principal(PERCY).unwrap();
    let long = sspm_platform::TokenMinter::new(&s.config).mint(&percy, 400 * 86_400);
    let mut req = tonic::Request::new(pb::GetPortLimitsRequest {
        business_unit_id: "bu-league".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {long}").parse().unwrap());
    let e = s.requests().get_port_limits(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("lifetime"), "{e:?}");
    s.shutdown().await.unwrap();
}

/// Finding 1 (memory): a request message larger than `server.max_request_bytes` is refused
/// with RESOURCE_EXHAUSTED without being held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_message_is_refused() {
    let s = TestSystem::start(Backend::Sqlite).await;
    let e = s
        .requests()
        .get_port_limits(limits_request(&s, PERCY, &"x".repeat(2 << 20)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.get_details_error_info().unwrap().reason, "REQUEST_TOO_LARGE");
    s.shutdown().await.unwrap();
}

/// A watch stream of `who` on `request_id`, its first message read.
async fn watch(
    s: &TestSystem,
    who: &str,
    request_id: &str,
) -> Result<tonic::Streaming<pb::WatchPortChangeRequestResponse>, tonic::Status> {
    let mut stream = s
        .requests()
        .watch_port_change_request(s.authed(
            who,
            pb::WatchPortChangeRequestRequest {
                request_id: request_id.into(),
            },
        ))
        .await?
        .into_inner();
    let first = stream.message().await?.expect("the current state first");
    assert_eq!(first.request.unwrap().request_id, request_id);
    Ok(stream)
}

/// Finding 4: 2,000 watch streams each polled the database every second, without a cap per
/// user, and a stream opened before its viewer's permission was revoked delivered the next
/// update. Now streams are bounded per principal and per process, one poller per process
/// finds other replicas' changes for all of them, and each update is sent only to a caller
/// still allowed to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_bounded_and_end_when_their_viewer_loses_access() {
    let s = TestSystem::start_configured(Backend::Sqlite, &[], |c| {
        c.admission.max_watch_streams = 5;
        c.admission.per_principal_max_watch_streams = 3;
        c.workflow.watch_poll_ms = 200;
    })
    .await;
    // A request under review on bu-classics, and one waiting for information on bu-league.
    let review = s
        .requests()
        .create_port_change_request(create_justified(
            &s,
            PERCY,
            "w-review",
            "bu-classics",
            900,
            "peak season",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(review.outcome(), pb::CreateOutcome::SentToReview);
    let waiting = s.create_concurrent(PERCY, "w-league", "bu-league", 900).await.unwrap();
    assert_eq!(waiting.outcome(), pb::CreateOutcome::NeedsInformation);

    // Percy's share: 3 streams; the fourth is refused at once.
    let mut percys = Vec::new();
    for _ in 0..3 {
        percys.push(watch(&s, PERCY, "w-review").await.unwrap());
    }
    let e = watch(&s, PERCY, "w-league").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.get_details_error_info().unwrap().reason, "TOO_MANY_WATCH_STREAMS");
    // The process's bound: 5 in all.
    let mut m1 = watch(&s, MARGUERITE, "w-league").await.unwrap();
    let _m2 = watch(&s, MARGUERITE, "w-league").await.unwrap();
    let e = watch(&s, MARGUERITE, "w-league").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("maximum of 5"), "{e:?}");

    // One poller for all five streams: a few queries a second, not one per stream.
    let polls = |text: &str| sspm_e2e::metric(text, "sspm_watch_polls", &[]);
    let t0 = polls(&s.scrape(ServiceKind::Request).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = s.scrape(ServiceKind::Request).await;
    assert_eq!(sspm_e2e::metric(&after, "sspm_watch_streams", &[]), 5.0, "{after}");
    let made = polls(&after) - t0;
    assert!(
        (1.0..=14.0).contains(&made),
        "{made} poll queries in 2 s at one per 200 ms"
    );

    // A change written by another replica (straight into the database: no broadcast in
    // this process) reaches the streams through the poller.
    {
        use sea_orm::ConnectionTrait as _;
        let url = s.config.services.request.database_url.clone().unwrap();
        let db = sspm_platform::db::connect(&url).await.unwrap();
        db.execute_unprepared(
            "UPDATE port_change_requests SET justification = 'from another replica', \
             update_time = update_time + 1 WHERE request_id = 'w-league'",
        )
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(5), m1.message())
        .await
        .expect("woken by the poller")
        .unwrap()
        .unwrap();
    assert_eq!(seen.request.unwrap().justification, "from another replica");

    // Percy loses the right to see bu-classics; the review is then approved. None of his
    // streams delivers the approval: each ends with NOT_FOUND or PERMISSION_DENIED.
    s.authorization()
        .revoke_permission(s.authed(
            "rep@sspm.example",
            pb::RevokePermissionRequest {
                principal_id: PERCY.into(),
                business_unit_id: "bu-classics".into(),
                permission: pb::Permission::PortManagementView.into(),
            },
        ))
        .await
        .unwrap();
    s.decide("netops@sspm.example", "w-review", true, "capacity is there")
        .await;
    for mut stream in percys {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends instead of waiting");
        match next {
            Err(e) => assert!(matches!(e.code(), Code::NotFound | Code::PermissionDenied), "{e:?}"),
            Ok(update) => panic!("a revoked viewer got an update: {update:?}"),
        }
    }
    // Closed streams free their slots.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = watch(&s, MARGUERITE, "w-league").await;
    assert!(again.is_ok(), "{again:?}");
    s.shutdown().await.unwrap();
}
