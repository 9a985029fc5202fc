//! The event feed (docs/EVENTS.md) across the four real services: what a request's life
//! writes, who may read it, resuming from a cursor (on another replica), and bad input.
//! Every scenario runs on SQLite, and on PostgreSQL with `--ignored` and
//! `SSPM_TEST_POSTGRES_URL`; each ends with the whole log checked (`check_event_log`).

// Scenario bodies are plain async fns called by the tests: an unwrap there is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sspm_e2e::{Backend, TestSystem, scenario};
use sspm_platform::ServiceKind;
use sspm_platform::client::connect_lazy;
use sspm_proto::v1 as pb;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;

const PERCY: &str = "percy@classics.example";
const MARGUERITE: &str = "marguerite@league.example";
const REP: &str = "rep@sspm.example";
const NETOPS: &str = "netops@sspm.example";
const CONSUMER: &str = "media-servers@platform.example";
const LEAGUE: &str = "bu-league";
const NAUTILUS: &str = "bu-nautilus";

async fn create(s: &TestSystem, id: &str, bu: &str, concurrent: i32) -> pb::CreatePortChangeRequestResponse {
    s.requests()
        .create_port_change_request(s.authed(
            PERCY,
            pb::CreatePortChangeRequestRequest {
                request_id: id.into(),
                business_unit_id: bu.into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(concurrent),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn list(s: &TestSystem, who: &str, req: pb::ListEventsRequest) -> Result<pb::ListEventsResponse, tonic::Status> {
    s.requests()
        .list_events(s.authed(who, req))
        .await
        .map(tonic::Response::into_inner)
}

/// The events of request `id`, with the limits changes it caused, in feed order.
fn of_request<'a>(events: &'a [pb::Event], id: &str) -> Vec<&'a pb::Event> {
    events
        .iter()
        .filter(|e| match &e.data {
            Some(pb::event::Data::Request(r)) => r.request_id == id,
            Some(pb::event::Data::ApprovalTask(t)) => t.request_id == id,
            Some(pb::event::Data::PortLimitsChanged(c)) => c.request_id == id,
            Some(pb::event::Data::CapacityChanged(_)) | None => false,
        })
        .collect()
}

/// A reviewed request's life is told in order: created, needs information, under review
/// with its approval task, approved with the task decided and the limits changed; an
/// automatic one: created, approved, limits changed. Payloads are typed.
async fn a_request_life_in_events(s: &TestSystem) {
    let before = s.port_limits(PERCY, LEAGUE).await;
    let auto = create(s, "ev-auto", LEAGUE, before.concurrent + 10).await;
    assert_eq!(auto.outcome(), pb::CreateOutcome::AutoApproved);
    let big = create(s, "ev-big", LEAGUE, before.concurrent + 2_000).await;
    assert_eq!(big.outcome(), pb::CreateOutcome::NeedsInformation);
    s.requests()
        .provide_information(s.authed(
            PERCY,
            pb::ProvideInformationRequest {
                request_id: "ev-big".into(),
                justification: "Holiday campaign".into(),
            },
        ))
        .await
        .unwrap();
    s.decide(NETOPS, "ev-big", true, "fine").await;
    s.wait_for_state(PERCY, "ev-big", pb::PortChangeRequestState::Approved)
        .await;

    let events = s.check_event_log().await;
    let types = |id| {
        of_request(&events, id)
            .iter()
            .map(|e| e.r#type.trim_start_matches("sspm.v1.").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        types("ev-auto"),
        ["request.created", "request.approved", "port_limits.changed"]
    );
    assert_eq!(
        types("ev-big"),
        [
            "request.created",
            "request.needs_information",
            "request.under_review",
            "approval_task.created",
            "request.approved",
            "approval_task.decided",
            "port_limits.changed",
        ]
    );
    let approved = of_request(&events, "ev-big");
    let Some(pb::event::Data::PortLimitsChanged(change)) = &approved[6].data else {
        panic!("typed payload: {:?}", approved[6]);
    };
    assert_eq!(change.cause(), pb::PortLimitsChangeCause::Applied);
    assert_eq!(change.actor, NETOPS);
    assert_eq!(change.after.as_ref().unwrap().concurrent, before.concurrent + 2_000);
    assert!(!change.case_number.is_empty(), "{change:?}");
    let Some(pb::event::Data::ApprovalTask(task)) = &approved[5].data else {
        panic!("typed payload: {:?}", approved[5]);
    };
    assert!(task.decision.as_ref().unwrap().approved);
    let Some(pb::event::Data::Request(r)) = &approved[4].data else {
        panic!("typed payload: {:?}", approved[4]);
    };
    assert_eq!(r.state(), pb::PortChangeRequestState::Approved);
    assert_eq!(
        r.request.as_ref().unwrap().state(),
        pb::PortChangeRequestState::Approved
    );
    assert!(approved.iter().all(|e| e.subject == LEAGUE));

    // Filtered by type: the limits changes alone, in order.
    let only = list(
        s,
        CONSUMER,
        pb::ListEventsRequest {
            types: vec!["sspm.v1.port_limits.changed".into()],
            business_unit_ids: vec![LEAGUE.into()],
            after_cursor: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        only.events.len() >= 3,
        "provisioned, then two applied: {:?}",
        only.events
    );
    assert!(only.events.iter().all(|e| e.r#type == "sspm.v1.port_limits.changed"));
}
scenario!(
    a_request_life_in_events,
    request_life_on_sqlite,
    request_life_on_postgres
);

/// Another tenant's events are never visible: a partner administrator sees its own and
/// its customers', a customer user its own, and naming another's business unit is refused.
async fn tenants_see_only_their_own(s: &TestSystem) {
    create(s, "ev-t1", LEAGUE, s.port_limits(PERCY, LEAGUE).await.concurrent + 5).await;
    // A change of another partner's limits (an account representative's).
    s.requests()
        .set_provisioned_limits(s.authed(
            REP,
            pb::SetProvisionedLimitsRequest {
                business_unit_id: NAUTILUS.into(),
                limits: Some(pb::PortLimits {
                    concurrent: 77,
                    outbound: 7,
                    agentless: 7,
                }),
                reason: "contract".into(),
            },
        ))
        .await
        .unwrap();
    let everything = s.check_event_log().await;
    assert!(everything.iter().any(|e| e.subject == NAUTILUS));

    let seen = |who: &'static str| async move {
        list(
            s,
            who,
            pb::ListEventsRequest {
                page_size: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .events
    };
    let percy = seen(PERCY).await;
    assert!(!percy.is_empty());
    assert!(percy.iter().all(|e| e.subject != NAUTILUS), "{percy:?}");
    assert!(percy.iter().any(|e| e.subject == LEAGUE));
    let marguerite = seen(MARGUERITE).await;
    assert!(!marguerite.is_empty());
    assert!(marguerite.iter().all(|e| e.subject == LEAGUE), "{marguerite:?}");

    for who in [PERCY, MARGUERITE] {
        let e = list(
            s,
            who,
            pb::ListEventsRequest {
                business_unit_ids: vec![NAUTILUS.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e.code(), Code::NotFound | Code::PermissionDenied), "{e:?}");
        let mut watch = s
            .requests()
            .watch_events(s.authed(
                who,
                pb::WatchEventsRequest {
                    business_unit_ids: vec![NAUTILUS.into()],
                    after_cursor: "0".into(),
                    ..Default::default()
                },
            ))
            .await;
        if let Ok(stream) = &mut watch {
            let first = stream.get_mut().next().await;
            assert!(matches!(first, Some(Err(_))), "{first:?}");
        } else {
            let e = watch.unwrap_err();
            assert!(matches!(e.code(), Code::NotFound | Code::PermissionDenied), "{e:?}");
        }
    }
    // Without a token: nothing.
    let e = s
        .requests()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
scenario!(tenants_see_only_their_own, tenants_on_sqlite, tenants_on_postgres);

/// Bad input is refused with the field named, and nothing is held.
async fn bad_input(s: &TestSystem) {
    let cases = [
        (
            pb::ListEventsRequest {
                types: vec!["sspm.v1.nonsense".into()],
                ..Default::default()
            },
            "types[0]",
        ),
        (
            pb::ListEventsRequest {
                after_cursor: "yesterday".into(),
                ..Default::default()
            },
            "after_cursor",
        ),
        (
            pb::ListEventsRequest {
                after_cursor: "-1".into(),
                ..Default::default()
            },
            "after_cursor",
        ),
        (
            pb::ListEventsRequest {
                page_size: 5_000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListEventsRequest {
                business_unit_ids: vec!["not a business unit!".into()],
                ..Default::default()
            },
            "business_unit_ids[0]",
        ),
        (
            pb::ListEventsRequest {
                business_unit_ids: (0..101).map(|i| format!("bu-{i}")).collect(),
                ..Default::default()
            },
            "business_unit_ids",
        ),
    ];
    for (req, field) in cases {
        let e = list(s, CONSUMER, req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let e = s
        .requests()
        .watch_events(s.authed(
            CONSUMER,
            pb::WatchEventsRequest {
                after_cursor: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
scenario!(bad_input, bad_input_on_sqlite, bad_input_on_postgres);

/// Reads `n` events from `stream`, each within 15 s.
async fn take(stream: &mut tonic::Streaming<pb::WatchEventsResponse>, n: usize) -> Vec<pb::Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("the watch keeps up")
            .expect("the stream goes on")
            .expect("an event");
        out.push(item.event.unwrap());
    }
    out
}

/// A consumer that follows the feed, hangs up, and comes back with its last cursor to
/// another replica misses nothing and gets nothing twice; it sees new events as they
/// commit, its own replica's and the other's.
async fn resume_on_another_replica(backend: Backend) {
    let mut s = TestSystem::start(backend).await;
    let base = s.port_limits(PERCY, LEAGUE).await.concurrent;
    let mut watch = s
        .requests()
        .watch_events(s.authed(
            CONSUMER,
            pb::WatchEventsRequest {
                after_cursor: "0".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let start = s.all_events().await.len();
    let mut seen = take(&mut watch, start).await;
    // Live: each automatic create is three events.
    for i in 0..3 {
        create(&s, &format!("ev-r{i}"), LEAGUE, base + 1 + i).await;
    }
    seen.extend(take(&mut watch, 9).await);
    drop(watch);
    // Written while nobody follows.
    for i in 3..6 {
        create(&s, &format!("ev-r{i}"), LEAGUE, base + 1 + i).await;
    }
    let replica = s.start_replica(ServiceKind::Request).await;
    let mut other =
        PortRequestServiceClient::new(connect_lazy(&format!("http://{replica}"), &s.config.clients).unwrap());
    let cursor = seen.last().unwrap().cursor.clone();
    let mut watch = other
        .watch_events(s.authed(
            CONSUMER,
            pb::WatchEventsRequest {
                after_cursor: cursor,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    seen.extend(take(&mut watch, 9).await);
    // Written through the first replica, followed on the second.
    create(&s, "ev-r6", LEAGUE, base + 7).await;
    seen.extend(take(&mut watch, 3).await);

    let all = s.check_event_log().await;
    assert_eq!(seen, all, "every event once, in the feed's order");
    let nothing_more = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(nothing_more.is_err(), "no event twice: {nothing_more:?}");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_replica_on_sqlite() {
    resume_on_another_replica(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn resume_on_another_replica_on_postgres() {
    resume_on_another_replica(Backend::Postgres).await;
}

/// Retention: once old events are pruned, a cursor from before them is refused with
/// OUT_OF_RANGE naming the oldest cursor kept (the caller learns it missed events), `0`
/// reads what is kept, each business unit's numbering carries on after its newest, and a
/// request's history (its `sspm.v1.request.*` events) is kept with the request.
async fn pruned_cursors_are_refused(s: &TestSystem) {
    create(s, "ev-p1", LEAGUE, s.port_limits(PERCY, LEAGUE).await.concurrent + 1).await;
    let history = s.port_change_request(PERCY, "ev-p1").await.history;
    assert!(history.len() >= 2, "created and approved: {history:?}");
    let before = s.all_events().await;
    let first = before.first().unwrap().cursor.clone();
    let url = s.config.database_url(ServiceKind::Request);
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let store = sspm_request::store::Store::new(db);
    let pruned = sspm_request::feed::prune_before(&store, sspm_platform::rpc::now_micros() + 1_000_000, false)
        .await
        .unwrap();
    assert!(pruned > 0, "old events pruned");
    let e = list(
        s,
        CONSUMER,
        pb::ListEventsRequest {
            after_cursor: first,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("oldest kept"), "{e:?}");
    let kept = s.all_events().await;
    assert_eq!(kept.len() as u64 + pruned, before.len() as u64);
    // What goes: every event but the requests' history and each business unit's newest.
    let league: Vec<&pb::Event> = kept.iter().filter(|e| e.subject == LEAGUE).collect();
    let newest_before = before.iter().rfind(|e| e.subject == LEAGUE).unwrap();
    for e in &league {
        assert!(
            e.r#type.starts_with("sspm.v1.request.") || e.id == newest_before.id,
            "only history and the newest are kept: {e:?}"
        );
    }
    assert!(
        before
            .iter()
            .any(|e| e.subject == LEAGUE && e.r#type == "sspm.v1.port_limits.changed" && e.id != newest_before.id),
        "there was something else to prune"
    );
    assert_eq!(
        s.port_change_request(PERCY, "ev-p1").await.history,
        history,
        "the request's history is whole"
    );
    // The numbering carries on.
    let newest = kept.iter().rfind(|e| e.subject == LEAGUE).unwrap().sequence;
    create(s, "ev-p2", LEAGUE, s.port_limits(PERCY, LEAGUE).await.concurrent + 1).await;
    let after = s.all_events().await;
    let next = after
        .iter()
        .find(|e| e.subject == LEAGUE && e.sequence > newest)
        .unwrap();
    assert_eq!(next.sequence, newest + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_cursors_are_refused_on_sqlite() {
    let s = TestSystem::start(Backend::Sqlite).await;
    pruned_cursors_are_refused(&s).await;
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn pruned_cursors_are_refused_on_postgres() {
    let s = TestSystem::start(Backend::Postgres).await;
    pruned_cursors_are_refused(&s).await;
    s.shutdown().await.unwrap();
}
