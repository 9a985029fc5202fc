//! Out of file descriptors (RELIABILITY.md, "Hostile callers"): a service run
//! with a small descriptor limit is sent more connections than it can open. Its accept loop
//! used to spin a full core on EMFILE; now it pauses with backoff, says so in its log, and
//! serves again once connections close.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

async fn serving(port: u16) -> bool {
    let cfg = sspm_platform::config::ClientConfig {
        timeout_ms: 1_000,
        connect_timeout_ms: 500,
        ..Default::default()
    };
    let channel = sspm_platform::client::connect_lazy(&format!("http://127.0.0.1:{port}"), &cfg).unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_pauses_instead_of_spinning() {
    assert!(
        Command::new("prlimit")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs prlimit (util-linux)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log_path = dir.path().join("authorization.log");
    let mut child = Command::new("prlimit")
        .args([
            "--nofile=128:128",
            env!("CARGO_BIN_EXE_sspm"),
            "serve",
            "authorization",
            "--demo",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("SSPM_CONFIG")
        .env("RUST_LOG", "warn")
        .env("SSPM__SERVICES__AUTHORIZATION__LISTEN", format!("127.0.0.1:{port}"))
        .env("SSPM__SERVICES__AUTHORIZATION__ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = common::eventually("the service serving", || async { serving(port).await.then_some(()) });
    tokio::time::timeout(Duration::from_secs(60), started).await.unwrap();

    // Far more connections than it has descriptors for.
    // (Connections beyond the kernel's backlog are not completed: they time out here.)
    let mut flood = Vec::new();
    for _ in 0..400 {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        match tokio::time::timeout(Duration::from_millis(200), connect).await {
            Ok(Ok(tcp)) => flood.push(tcp),
            // The backlog is full too.
            _ => break,
        }
    }
    assert!(flood.len() > 150, "only {} connections", flood.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("cannot accept a connection; pausing"), "{log}");
    // A spinning loop burns about 200 ticks (a full core) in 2 s, and one that retries every
    // millisecond about 15; pausing with backoff, next to nothing.
    assert!(spent < 8, "{spent} ticks of CPU in 2 s while out of descriptors");
    eprintln!(
        "out of descriptors: {} connections, {spent} ticks of CPU in 2 s",
        flood.len()
    );

    // Once connections close, it serves again.
    drop(flood);
    let back = common::eventually("serving again", || async { serving(port).await.then_some(()) });
    tokio::time::timeout(Duration::from_secs(30), back).await.unwrap();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
