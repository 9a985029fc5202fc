//! Acknowledged means durable (RELIABILITY.md, "Durability"): on SQLite a
//! create is answered only after its commit reached the disk. Checked from outside, on the
//! real request service process: `strace` makes every `fsync`/`fdatasync` of the process
//! fail with EIO. A commit that syncs before it returns then fails, so the create must not
//! be answered as done; with `synchronous=NORMAL` (WAL commits that do not sync) the same
//! create would be acknowledged while nothing had reached the disk. Once the disk "works"
//! again, the same create succeeds and nothing of the failed one is left behind.
//!
//! Needs `strace` and permission to trace a child process (`.ci/run` installs strace); the
//! test fails, loudly, without them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::authed;
use common::cluster::{Backend, Cluster};
use sspm_platform::ServiceKind;
use sspm_proto::v1 as pb;

const PERCY: &str = "percy@classics.example";

fn create(id: &str, concurrent: i32) -> tonic::Request<pb::CreatePortChangeRequestRequest> {
    common::create_concurrent(PERCY, id, "bu-league", concurrent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_answered_only_after_its_commit_is_on_disk() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace; .ci/run installs it)"
    );
    let mut cluster = Cluster::new(
        Backend::Sqlite,
        &[
            ("SSPM__WORKFLOW__RETRY_INITIAL_MS", "100"),
            ("SSPM__CLIENTS__TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    cluster.start_all().await;
    let mut requests = cluster.clients().requests();
    let before = requests
        .create_port_change_request(create("durable-1", 110))
        .await
        .unwrap();
    assert_eq!(before.into_inner().outcome(), pb::CreateOutcome::AutoApproved);

    // Every sync of the request service now fails.
    let mut tracer = Command::new("strace")
        .args([
            "-f",
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            "inject=fsync,fdatasync:error=EIO",
            "-o",
            "/dev/null",
            "-p",
        ])
        .arg(cluster.pid(ServiceKind::Request).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace");
    let stderr = tracer.stderr.take().unwrap();
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("strace: {line}");
            if line.contains("attached") {
                let _ = attached_tx.send(());
            }
        }
    });
    attached_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("strace attached to the request service (is ptrace allowed here?)");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let during = requests.create_port_change_request(create("durable-2", 120)).await;
    assert!(
        during.is_err(),
        "a create was acknowledged while its commit could not reach the disk: {during:?}"
    );
    eprintln!(
        "while syncs fail, the create is refused: {:?}",
        during.unwrap_err().code()
    );

    // The disk works again.
    let _ = Command::new("kill").args(["-INT", &tracer.id().to_string()]).status();
    let _ = tracer.wait();
    let after = common::eventually("the create once syncs work again", || {
        let mut requests = requests.clone();
        async move {
            match requests.create_port_change_request(create("durable-2", 120)).await {
                Ok(r) => Some(r.into_inner()),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                }
            }
        }
    })
    .await;
    let request = after.request.unwrap();
    assert_eq!(request.business_unit_id, "bu-league");
    // The limits are those of the acknowledged creates, each applied once.
    let limits = requests
        .get_port_limits(authed(
            PERCY,
            pb::GetPortLimitsRequest {
                business_unit_id: "bu-league".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(limits.concurrent, 120);
    cluster.terminate_all().await;
}
