//! TLS as docs/ARCHITECTURE.md ("Observability and operations") specifies, on the real `sspm up --tls`: the whole lifecycle works over
//! TLS (every internal call too), and the `openssl s_client` command line (not only our own
//! client) proves what is accepted and refused: TLS 1.3, and TLS 1.2 with
//! ECDHE-RSA-AES128-GCM-SHA256 or ECDHE-RSA-AES256-GCM-SHA384 are accepted; TLS 1.1,
//! TLS 1.0, static-RSA key exchange and CBC suites are refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error as _;
use std::path::Path;
use std::process::{Command, Stdio};

use sspm_platform::config::ClientConfig;
use sspm_proto::v1 as pb;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;

/// One `openssl s_client` handshake with the given options; (succeeded, its output).
fn s_client(port: u16, ca: &Path, options: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-alpn",
            "h2",
            "-CAfile",
        ])
        .arg(ca)
        .args(options)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the openssl command line (Debian package `openssl`; .ci/run installs it): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sspm_up_tls_accepts_only_modern_tls() {
    let data = tempfile::tempdir().unwrap();
    let mut up = common::sspm_up(data.path(), &["--tls"], &[]);
    let ca = data.path().join("tls").join("ca.pem");
    let port = up.ports[0];

    // Our own client, trusting the generated CA: the lifecycle runs over TLS, including the
    // request service's calls to authorization, ticketing and approval.
    let clients = ClientConfig {
        ca_path: Some(ca.clone()),
        ..ClientConfig::default()
    };
    let endpoint = format!("https://127.0.0.1:{port}");
    let created = common::eventually("sspm up --tls", || async {
        // The CA is written just before the services start.
        let channel = sspm_platform::client::connect_lazy(&endpoint, &clients).ok()?;
        let req = common::authed(
            "percy@classics.example",
            pb::CreatePortChangeRequestRequest {
                request_id: "tls-1".into(),
                business_unit_id: "bu-league".into(),
                targets: Some(pb::PortTargets {
                    concurrent: Some(110),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        PortRequestServiceClient::new(channel)
            .create_port_change_request(req)
            .await
            .ok()
    })
    .await
    .into_inner();
    assert_eq!(created.outcome(), pb::CreateOutcome::AutoApproved);
    let request = created.request.unwrap();
    assert!(
        !request.case_number.is_empty(),
        "a case was opened over TLS: {request:?}"
    );

    // A plaintext client gets nowhere.
    let plain =
        sspm_platform::client::connect_lazy(&format!("http://127.0.0.1:{port}"), &ClientConfig::default()).unwrap();
    let err = PortRequestServiceClient::new(plain)
        .get_port_limits(common::authed(
            "percy@classics.example",
            pb::GetPortLimitsRequest {
                business_unit_id: "bu-league".into(),
            },
        ))
        .await
        .unwrap_err();
    // The server answers the plaintext preface with a TLS alert; the client reports that as a
    // reset (UNAVAILABLE / UNKNOWN), as the connection closing under the call (CANCELLED) or,
    // when its HTTP/2 layer reads the alert as a frame, as a protocol error (INTERNAL),
    // depending on timing. Never an answer from the service.
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        ) && err.source().is_some(),
        "a transport error, not an answer: {err:?}"
    );

    // The openssl command line. Old protocols are offered at security level 0, so that a
    // refusal is the server's and not openssl's own default policy.
    for (options, protocol, cipher) in [
        (
            &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"][..],
            "TLSv1.2",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"][..],
            "TLSv1.2",
            "ECDHE-RSA-AES256-GCM-SHA384",
        ),
        (&["-tls1_3"][..], "TLSv1.3", "TLS_AES_"),
    ] {
        let (ok, out) = s_client(port, &ca, options);
        assert!(ok, "{options:?} should be accepted: {out}");
        assert!(
            out.contains(&format!("New, {protocol}, Cipher is {cipher}")),
            "{options:?}: {out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{options:?}: {out}");
        assert!(out.contains("ALPN protocol: h2"), "{options:?}: {out}");
    }
    for (options, what) in [
        (&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"][..], "TLS 1.1"),
        (&["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"][..], "TLS 1.0"),
        (
            &[
                "-tls1_2",
                "-cipher",
                "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES128-SHA",
            ][..],
            "static RSA",
        ),
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA",
            ][..],
            "CBC",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"][..],
            "TLS 1.2 suites beyond the design's list",
        ),
    ] {
        let (ok, out) = s_client(port, &ca, options);
        assert!(!ok, "{what} should be refused: {out}");
        assert!(out.contains("Cipher is (NONE)"), "{what}: no session: {out}");
    }

    // `sspm health`, the probe of docker-compose and Kubernetes: SERVING over https when it
    // trusts the CA, a clear failure (non-zero exit) when it does not.
    let health = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_sspm"))
            .env_remove("SSPM_CONFIG")
            .args([
                "health",
                "--endpoint",
                &endpoint,
                "--service",
                "sspm.v1.PortRequestService",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = health(&["--cacert".as_ref(), ca.as_os_str()]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let untrusted = health(&[]);
    assert!(!untrusted.status.success(), "no CA, no trust: {untrusted:?}");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains(&endpoint),
        "the failure names the endpoint: {untrusted:?}"
    );

    common::terminate(&mut up).await;
}
