//! Lost data never goes unnoticed (RELIABILITY.md, "Lost data"): the ticketing
//! service's database is cut to nothing between two runs, as a failed disk or a careless
//! restore would leave it. It used to start empty without a word and hand out case number
//! 00000001 again, which an earlier request already showed, linking a new request to
//! another's case. Now the start says so loudly (dev profile; production refuses to start,
//! tested in `crates/platform/src/app.rs` and by `.ci/deploy-check`), and the request
//! service refuses to link a case number another request holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::authed;
use common::cluster::{Backend, Cluster};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;

const PERCY: &str = "percy@classics.example";

fn create(id: &str, bu: &str, concurrent: i32) -> tonic::Request<pb::CreatePortChangeRequestRequest> {
    common::create_concurrent(PERCY, id, bu, concurrent)
}

async fn request(cluster: &Cluster, id: &str) -> pb::PortChangeRequest {
    cluster
        .clients()
        .requests()
        .get_port_change_request(authed(PERCY, pb::GetPortChangeRequestRequest { request_id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ticketing_database_never_links_a_case_number_twice() {
    let mut cluster = Cluster::new(
        Backend::Sqlite,
        &[
            ("SSPM__WORKFLOW__RETRY_INITIAL_MS", "100"),
            ("SSPM__WORKFLOW__RETRY_MAX_MS", "500"),
            ("SSPM__WORKFLOW__POLL_INTERVAL_MS", "100"),
        ],
    )
    .await;
    cluster.start_all().await;
    let first = cluster
        .clients()
        .requests()
        .create_port_change_request(create("before-loss", "bu-league", 110))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(first.state(), pb::PortChangeRequestState::Approved);
    let number = first.case_number.clone();
    assert!(!number.is_empty());
    cluster.terminate_all().await;

    // The ticketing database is gone: its file cut to nothing, its WAL lost.
    let db = cluster.data_dir().join("ticketing.db");
    std::fs::write(&db, b"").unwrap();
    for side in ["ticketing.db-wal", "ticketing.db-shm"] {
        let _ = std::fs::remove_file(cluster.data_dir().join(side));
    }
    cluster.start_all().await;
    assert!(
        cluster.logs_of(ServiceKind::Ticketing).contains("HOLDS NOTHING"),
        "the ticketing service started on its emptied database without a word"
    );

    // The empty ticketing service hands out the first number again; the request service
    // refuses to link it to a second request.
    let second = cluster
        .clients()
        .requests()
        .create_port_change_request(create("after-loss", "bu-musketeers", 60))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = request(&cluster, &second.request_id).await;
    assert_ne!(second.case_number, number, "a case number was linked to two requests");
    assert_eq!(request(&cluster, "before-loss").await.case_number, number);
    assert!(
        cluster
            .logs_of(ServiceKind::Request)
            .contains("another request already holds"),
        "the request service did not report the reused case number"
    );
    eprintln!(
        "after the loss: the earlier request keeps case {number}; the new one is {:?} with case {:?}",
        second.state(),
        second.case_number
    );
    cluster.terminate_all().await;
}
