//! Running the real `sspm` binary in tests: on free ports, killed if the test fails.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sspm_platform::{ServiceKind, SspmConfig, TokenMinter};

/// A running `sspm up`; killed when dropped (a failed test leaves nothing behind).
pub struct Up {
    pub child: Child,
    /// gRPC ports: request, authorization, approval, ticketing.
    pub ports: [u16; 4],
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports for services the tests start: below the kernel's ephemeral range (32768 and up
/// here), and clear of `.ci/load-smoke`'s 26xxx. A port from the ephemeral range, free when
/// picked, can become the source port of any outgoing connection before the service binds
/// it: a service then failed to start with "address in use", now and then.
const TEST_PORTS: std::ops::Range<u16> = 27_000..32_700;

/// A port nobody listens on, from [`TEST_PORTS`], never handed out twice by this test process
/// (the tests of one binary run in parallel; binaries start at different points).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + u16::try_from(offset).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// Starts `sspm up --data-dir <data> <args>` with `env`, on free gRPC ports and ephemeral
/// admin ports.
pub fn sspm_up(data: &Path, args: &[&str], env: &[(&str, String)]) -> Up {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sspm"));
    cmd.args(["up", "--data-dir"])
        .arg(data)
        .args(args)
        .env_remove("SSPM_CONFIG");
    let kinds = [
        ServiceKind::Request,
        ServiceKind::Authorization,
        ServiceKind::Approval,
        ServiceKind::Ticketing,
    ];
    for (kind, port) in kinds.iter().zip(ports) {
        let name = kind.name().to_uppercase();
        cmd.env(format!("SSPM__SERVICES__{name}__LISTEN"), format!("127.0.0.1:{port}"));
        cmd.env(format!("SSPM__SERVICES__{name}__ADMIN_LISTEN"), "127.0.0.1:0");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Up { child, ports }
}

/// A development token of the demo tenancy's `principal`.
pub fn token(principal: &str) -> String {
    TokenMinter::new(&SspmConfig::default()).mint(&sspm_platform::auth::parse_principal(principal).unwrap(), 600)
}

/// `message` with a bearer token.
pub fn authed<T>(principal: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {}", token(principal)).parse().unwrap());
    req
}

/// A create by `principal` of request `id` on `business_unit` for `concurrent` ports.
pub fn create_concurrent(
    principal: &str,
    id: &str,
    business_unit: &str,
    concurrent: i32,
) -> tonic::Request<sspm_proto::v1::CreatePortChangeRequestRequest> {
    authed(
        principal,
        sspm_proto::v1::CreatePortChangeRequestRequest {
            request_id: id.into(),
            business_unit_id: business_unit.into(),
            targets: Some(sspm_proto::v1::PortTargets {
                concurrent: Some(concurrent),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// Retries `attempt` until it answers, for at most 60 s (the binary may still be building
/// its databases).
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: no answer within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and waits (at most 20 s) for a successful exit.
pub async fn terminate(up: &mut Up) {
    let pid = up.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "sspm up did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
