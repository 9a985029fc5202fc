//! The NATS JetStream publisher under faults (docs/EVENTS.md, "NATS JetStream"), with the
//! services in their own processes (`sspm serve`) and a nats-server of the test's own (on a
//! free port, with its own store, so that the test can stop it): the broker stopped during
//! a burst of creates and started again later; the request service killed with SIGKILL
//! during a burst. After each, the stream holds every event of the feed once, in the feed's
//! order, and `sspm_events_pending` is back to zero.
//!
//! They need `nats-server` (on PATH, or `SSPM_TEST_NATS_SERVER`) and run with `--ignored`
//! (as `.ci/run` does); without the binary they fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{Backend, Clients, Cluster};
use common::{authed, create_concurrent, eventually, free_port};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PERCY: &str = "percy@classics.example";
const CONSUMER: &str = "media-servers@platform.example";
const STREAM: &str = "SSPM_FAULTS";
/// Percy's business units with their demo limits (concurrent).
const UNITS: [(&str, i32); 3] = [("bu-classics", 200), ("bu-league", 100), ("bu-musketeers", 50)];

/// A nats-server with JetStream of the test's own.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn binary() -> String {
        let bin = std::env::var("SSPM_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let found = Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "these tests run a nats-server of their own: install it (Debian: nats-server) or set SSPM_TEST_NATS_SERVER"
        );
        bin
    }

    async fn start() -> Self {
        let mut nats = Self {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
        };
        nats.restart().await;
        nats
    }

    /// Starts it (again, on the same port and store).
    async fn restart(&mut self) {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually("nats-server listening", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
    }

    /// Kills it (SIGKILL: the broker simply disappears).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster publishing to `nats`, quick to retry, its request service's metrics on
/// `admin_port`.
async fn cluster(nats: &Nats, admin_port: u16) -> Cluster {
    let env: Vec<(String, String)> = vec![
        ("SSPM__EVENTS__NATS_URL".into(), nats.url()),
        ("SSPM__EVENTS__STREAM".into(), STREAM.into()),
        ("SSPM__EVENTS__RETRY_INITIAL_MS".into(), "100".into()),
        ("SSPM__EVENTS__RETRY_MAX_MS".into(), "1000".into()),
        ("SSPM__EVENTS__ACK_TIMEOUT_MS".into(), "1000".into()),
        ("SSPM__EVENTS__POLL_MS".into(), "100".into()),
        // Every create fits the day: all are applied automatically.
        ("SSPM__DAILY_LIMITS__DEFAULT_MAX_DAILY_INCREASE".into(), "9999".into()),
        ("SSPM__WORKFLOW__RETRY_INITIAL_MS".into(), "100".into()),
        ("SSPM__WORKFLOW__RETRY_MAX_MS".into(), "1000".into()),
        ("SSPM__CLIENTS__CONNECT_TIMEOUT_MS".into(), "300".into()),
        (
            "SSPM__SERVICES__REQUEST__ADMIN_LISTEN".into(),
            format!("127.0.0.1:{admin_port}"),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cluster = Cluster::new(Backend::Sqlite, &env).await;
    cluster.start_all().await;
    cluster
}

/// `sspm_events_pending` of the request service (`None` while it does not answer).
async fn pending(admin_port: u16) -> Option<f64> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await.ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    conn.read_to_string(&mut page).await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix("sspm_events_pending "))
        .and_then(|v| v.trim().parse().ok())
}

/// Creates requests one after another on each of Percy's business units (one more port
/// each time) until `stop`; counts those answered.
fn burst(clients: &Clients, stop: &Arc<AtomicBool>, made: &Arc<AtomicUsize>, tag: &str) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    for (u, (bu, initial)) in UNITS.iter().enumerate() {
        let (clients, stop, made, tag) = (clients.clone(), stop.clone(), made.clone(), tag.to_owned());
        workers.spawn(async move {
            let mut target = *initial;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{tag}-{u}-{i}");
                match clients
                    .requests()
                    .create_port_change_request(create_concurrent(PERCY, &id, bu, target + 1))
                    .await
                {
                    Ok(_) => {
                        target += 1;
                        i += 1;
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    // The service killed under the call (which may have committed): learn
                    // where the limits are, and go on from there with a new id.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(l) = clients
                            .requests()
                            .get_port_limits(authed(
                                PERCY,
                                pb::GetPortLimitsRequest {
                                    business_unit_id: (*bu).into(),
                                },
                            ))
                            .await
                        {
                            target = l.into_inner().limits.unwrap().concurrent;
                        }
                        i += 1;
                    }
                }
            }
        });
    }
    workers
}

/// Every event of the feed, as the platform consumer pages through it.
async fn feed(clients: &Clients) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let page = clients
            .requests()
            .list_events(authed(
                CONSUMER,
                pb::ListEventsRequest {
                    after_cursor: cursor.clone(),
                    page_size: 1_000,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if page.events.is_empty() {
            return out;
        }
        cursor = page.next_cursor;
        out.extend(page.events);
    }
}

/// Once the publisher has caught up: the stream holds the feed's events, each once, in
/// the same order, and nothing is pending.
async fn stream_matches_feed(nats: &Nats, clients: &Clients, admin_port: u16) -> usize {
    let events = feed(clients).await;
    let streamed = eventually("the publisher catches up", || async {
        let streamed = sspm_request::publish::read_stream(&nats.url(), STREAM).await.ok()?;
        (streamed.len() >= events.len()).then_some(streamed)
    })
    .await;
    let ids: Vec<&str> = streamed.iter().map(|m| m.id.as_str()).collect();
    let feed_ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids, feed_ids,
        "every event once (JetStream drops what was published again), in order"
    );
    assert!(streamed.iter().all(|m| m.message_id == m.id));
    // No applied change without its event: each business unit's port_limits.changed
    // events chain from its first limits to the limits it has now.
    for (bu, _) in UNITS {
        let mut at: Option<pb::PortLimits> = None;
        for e in events.iter().filter(|e| e.subject == bu) {
            if let Some(pb::event::Data::PortLimitsChanged(c)) = &e.data {
                if let Some(prev) = at {
                    assert_eq!(c.before, Some(prev), "{bu}'s changes chain: {e:?}");
                }
                at = c.after;
            }
        }
        let now = clients
            .requests()
            .get_port_limits(authed(
                PERCY,
                pb::GetPortLimitsRequest {
                    business_unit_id: bu.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .limits;
        assert_eq!(at, now, "{bu}: the last port_limits.changed is its limits now");
    }
    let none = eventually("sspm_events_pending back to 0", || async {
        (pending(admin_port).await? == 0.0).then_some(())
    })
    .await;
    let () = none;
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "NATS variant: runs its own nats-server (PATH or SSPM_TEST_NATS_SERVER) and stops it; run with --ignored"]
async fn broker_stopped_during_a_burst_and_started_later() {
    let mut nats = Nats::start().await;
    let admin_port = free_port();
    let mut cluster = cluster(&nats, admin_port).await;
    let clients = cluster.clients();
    let (stop, made) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut workers = burst(&clients, &stop, &made, "nb");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    nats.stop();
    let before = made.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        made.load(Ordering::Relaxed) > before + 5,
        "requests are accepted while the broker is down"
    );
    let backlog = eventually("the backlog shows", || async {
        pending(admin_port).await.filter(|p| *p > 0.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let n = stream_matches_feed(&nats, &clients, admin_port).await;
    eprintln!(
        "broker down mid-burst: {} creates, {backlog} events pending at one point, {n} events streamed once each",
        made.load(Ordering::Relaxed)
    );
    cluster.terminate_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "NATS variant: runs its own nats-server (PATH or SSPM_TEST_NATS_SERVER); run with --ignored"]
async fn request_service_killed_during_a_burst_publishes_each_event_once() {
    let nats = Nats::start().await;
    let admin_port = free_port();
    let mut cluster = cluster(&nats, admin_port).await;
    let clients = cluster.clients();
    let (stop, made) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut workers = burst(&clients, &stop, &made, "nk");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        cluster.kill(ServiceKind::Request);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.start(ServiceKind::Request).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    assert!(made.load(Ordering::Relaxed) >= 10, "a burst");
    let n = stream_matches_feed(&nats, &clients, admin_port).await;
    eprintln!(
        "request service killed 3 times mid-burst: {} creates, {n} events streamed once each",
        made.load(Ordering::Relaxed)
    );
    cluster.terminate_all().await;
}

/// What the publisher's chained window relies on (`sspm_request::publish`), checked on the
/// real broker: an event refused (here, for naming the wrong event before it) makes every
/// later event of the window that expects it refused too, so the stream stays a prefix of
/// the feed; and an event already stored is acknowledged as a duplicate before its
/// expectation is looked at, so a window sent again after a crash goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs a nats-server of its own: `cargo test -- --ignored` (see the module's doc)"]
async fn a_refused_event_stops_the_rest_of_its_window() {
    use async_nats::jetstream::{self, message::PublishMessage, stream};
    let nats = Nats::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: "CHAIN".into(),
        subjects: vec!["chain.>".into()],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let msg = |id: &str, after: Option<&str>| {
        let m = PublishMessage::build().payload(id.to_owned().into()).message_id(id);
        match after {
            Some(previous) => m.expected_last_message_id(previous),
            None => m,
        }
    };
    js.send_publish("chain.x", msg("a", None)).await.unwrap().await.unwrap();
    // A window of two whose first is refused: both are sent before either is acknowledged.
    let b = js.send_publish("chain.x", msg("b", Some("not-a"))).await.unwrap();
    let c = js.send_publish("chain.y", msg("c", Some("b"))).await.unwrap();
    assert!(b.await.is_err(), "b names the wrong event before it");
    assert!(c.await.is_err(), "c expects b, which was not stored");
    // Sent again: "a" is a duplicate whatever it expects; then the window goes through.
    let a = js.send_publish("chain.x", msg("a", Some("anything"))).await.unwrap();
    assert!(a.await.unwrap().duplicate);
    let b = js.send_publish("chain.x", msg("b", Some("a"))).await.unwrap();
    let c = js.send_publish("chain.y", msg("c", Some("b"))).await.unwrap();
    assert!(!b.await.unwrap().duplicate);
    assert!(!c.await.unwrap().duplicate);
    let held: Vec<String> = sspm_request::publish::read_stream(&nats.url(), "CHAIN")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(held, ["a", "b", "c"], "the stream is the feed's order, nothing twice");
}
