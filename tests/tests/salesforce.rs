//! The whole request lifecycle with the ticketing service's Salesforce backend (README, "Cases in Salesforce"),
//! against a local server speaking the Salesforce REST API: automatic approval, review and
//! approval, rejection, cancellation, and an outage of the org in the middle. The four real
//! services run; requests show the org's case numbers, and at the end every case in the org
//! is closed, with the comments SSPM made, once each, in order.

// Scenario bodies are plain async fns called by the tests: an unwrap there is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sspm_e2e::{Backend, TestSystem, metric};
use sspm_platform::ServiceKind;
use sspm_platform::config::TicketingBackend;
use sspm_proto::v1 as pb;
use sspm_ticketing::fake_salesforce::{FakeCase, FakeSalesforce};

use pb::PortChangeRequestState as S;

const PERCY: &str = "percy@classics.example";
const NETOPS: &str = "netops@sspm.example";
const FIELD: &str = "SSPM_Request_Id__c";

fn create_req(id: &str, bu: &str, concurrent: i32, justification: &str) -> pb::CreatePortChangeRequestRequest {
    pb::CreatePortChangeRequestRequest {
        request_id: id.into(),
        business_unit_id: bu.into(),
        targets: Some(pb::PortTargets {
            concurrent: Some(concurrent),
            outbound: None,
            agentless: None,
        }),
        justification: justification.into(),
        ..Default::default()
    }
}

async fn create(s: &TestSystem, req: pb::CreatePortChangeRequestRequest) -> pb::CreatePortChangeRequestResponse {
    s.requests()
        .create_port_change_request(s.authed(PERCY, req))
        .await
        .expect("create")
        .into_inner()
}

/// Polls until `check` holds, or panics after 20 s saying what it waited for.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The org's case of request `id`.
fn org_case(org: &FakeSalesforce, id: &str) -> Option<FakeCase> {
    org.cases()
        .into_iter()
        .find(|c| c.fields.get(FIELD).and_then(|v| v.as_str()) == Some(id))
}

/// Every case SSPM recorded is the org's: same number, closed there, and its comments in
/// the org are SSPM's, in order, each once, signed by their author, then the resolution.
fn assert_mirrored(local: &pb::Case, org: &FakeCase) {
    let number = &local.case_number;
    assert_eq!(org.fields["CaseNumber"], number.as_str());
    assert_eq!(local.status(), pb::CaseStatus::Closed, "{local:#?}");
    assert_eq!(org.fields["Status"], "Closed", "{number}: {org:#?}");
    assert_eq!(
        org.comments.len(),
        local.comments.len() + 1,
        "{number}: local {:#?}, org {:#?}",
        local.comments,
        org.comments
    );
    for (mine, theirs) in local.comments.iter().zip(&org.comments) {
        let signature = if mine.author == "system" {
            format!("{}\n\n— SSPM ({number}/", mine.body)
        } else {
            format!("{}\n\n— {}, via SSPM ({number}/", mine.body, mine.author)
        };
        assert!(
            theirs.starts_with(&signature),
            "{number}: {theirs:?} is not {signature:?}…"
        );
    }
    assert_eq!(
        org.comments.last().unwrap(),
        &format!("Resolution: {}\n\n— SSPM ({number}/close)", local.resolution)
    );
}

async fn pending_org_writes(s: &TestSystem) -> f64 {
    metric(
        &s.scrape(ServiceKind::Ticketing).await,
        "sspm_ticketing_org_writes",
        &[("state", "pending")],
    )
}

async fn lifecycle_with_salesforce(backend: Backend) {
    let org = FakeSalesforce::start("sspm-app", "s3cret", FIELD, &[]).await;
    let s = TestSystem::start_configured(backend, &[], |c| {
        c.ticketing.backend = TicketingBackend::Salesforce;
        c.ticketing.salesforce = org.config();
    })
    .await;

    // Automatic approval: the request shows the org's case number; the org's case closes.
    let auto = create(&s, create_req("sf-auto", "bu-league", 110, "")).await;
    assert_eq!(auto.outcome(), pb::CreateOutcome::AutoApproved);
    let auto = auto.request.unwrap();
    let in_org = org_case(&org, "sf-auto").expect("the org has the case");
    assert_eq!(in_org.fields["CaseNumber"], auto.case_number.as_str());
    assert_eq!(in_org.fields["Origin"], "Web");
    assert!(in_org.fields["Subject"].as_str().unwrap().contains("bu-league"));

    // Review, first waiting on the customer (the org's "Working").
    let review = create(&s, create_req("sf-review", "bu-classics", 600, "")).await;
    assert_eq!(review.outcome(), pb::CreateOutcome::NeedsInformation);
    eventually("the org's case of sf-review to wait on the customer", || async {
        org_case(&org, "sf-review").is_some_and(|c| {
            c.fields["Status"] == "Working" && c.comments.iter().any(|b| b.contains("exceed the daily limit"))
        })
    })
    .await;

    // Cancelled while under review.
    let cancel = create(&s, create_req("sf-cancel", "bu-musketeers", 400, "New site")).await;
    assert_eq!(cancel.outcome(), pb::CreateOutcome::SentToReview);
    s.requests()
        .cancel_port_change_request(s.authed(
            PERCY,
            pb::CancelPortChangeRequestRequest {
                request_id: "sf-cancel".into(),
                reason: "wrong unit".into(),
            },
        ))
        .await
        .expect("cancel");

    // The org goes down. SSPM goes on: the justification, the approval and a new request
    // are taken; the cases' record here is current and readable; nothing reaches the org.
    eventually("the org to have what was sent before the outage", || async {
        pending_org_writes(&s).await == 0.0
    })
    .await;
    org.set_down(true);
    let before: Vec<FakeCase> = org.cases();
    s.requests()
        .provide_information(s.authed(
            PERCY,
            pb::ProvideInformationRequest {
                request_id: "sf-review".into(),
                justification: "Holiday campaign".into(),
            },
        ))
        .await
        .expect("provide information");
    s.decide(NETOPS, "sf-review", true, "fine for the holidays").await;
    let reviewed = s.wait_for_state(PERCY, "sf-review", S::Approved).await;
    eventually("sf-review's case to be closed here", || async {
        s.case(&reviewed.case_number).await.status() == pb::CaseStatus::Closed
    })
    .await;
    let outage = create(&s, create_req("sf-outage", "bu-league", 120, "")).await;
    assert_eq!(outage.outcome(), pb::CreateOutcome::Accepted, "{outage:#?}");
    assert_eq!(outage.request.unwrap().case_number, "", "no case while the org is down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pending_org_writes(&s).await > 0.0);
    let during = org.cases();
    assert_eq!(during.len(), before.len());
    for (b, d) in before.iter().zip(&during) {
        assert_eq!((&b.fields, &b.comments), (&d.fields, &d.comments), "the org was down");
    }

    // It comes back: the new request gets its case, the writes arrive.
    org.set_down(false);
    let outage = s.wait_for_state(PERCY, "sf-outage", S::Approved).await;
    assert_eq!(
        org_case(&org, "sf-outage").expect("opened after the outage").fields["CaseNumber"],
        outage.case_number.as_str()
    );

    // Rejected.
    let reject = create(&s, create_req("sf-reject", "bu-league", 900, "New site")).await;
    assert_eq!(reject.outcome(), pb::CreateOutcome::SentToReview);
    s.decide(NETOPS, "sf-reject", false, "not this quarter").await;
    s.wait_for_state(PERCY, "sf-reject", S::Rejected).await;

    eventually("every write to reach the org", || async {
        pending_org_writes(&s).await == 0.0 && org.cases().iter().all(|c| c.fields["Status"] == "Closed")
    })
    .await;
    let ids = ["sf-auto", "sf-review", "sf-cancel", "sf-outage", "sf-reject"];
    assert_eq!(org.cases().len(), ids.len(), "one case per request, never two");
    for id in ids {
        let request = s.port_change_request(PERCY, id).await;
        let local = s.case(&request.case_number).await;
        assert_mirrored(&local, &org_case(&org, id).unwrap());
    }
    let resolution = |id: &str| {
        let comments = org_case(&org, id).unwrap().comments;
        comments.last().cloned().unwrap_or_default()
    };
    assert!(resolution("sf-auto").starts_with("Resolution: Approved automatically"));
    assert!(resolution("sf-review").starts_with("Resolution: Approved by netops@sspm.example"));
    assert!(resolution("sf-cancel").starts_with("Resolution: Cancelled by percy@classics.example"));
    assert!(resolution("sf-reject").starts_with("Resolution: Rejected by netops@sspm.example"));
    let review = org_case(&org, "sf-review").unwrap().comments;
    assert!(review.iter().any(|c| c.contains("Holiday campaign")), "{review:#?}");
    s.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_with_salesforce_on_sqlite() {
    lifecycle_with_salesforce(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
async fn lifecycle_with_salesforce_on_postgres() {
    lifecycle_with_salesforce(Backend::Postgres).await;
}
