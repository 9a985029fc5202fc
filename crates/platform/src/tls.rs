//! TLS for the gRPC servers and the internal calls (docs/ARCHITECTURE.md, "Observability and operations"): TLS 1.3, and TLS 1.2 with
//! ECDHE key exchange and AES-GCM only (ECDHE-RSA-AES128-GCM-SHA256,
//! ECDHE-RSA-AES256-GCM-SHA384 and their ECDSA variants). rustls has no TLS 1.0/1.1, static
//! RSA key exchange or CBC suites at all; the TLS 1.2 list is narrowed further to the suites
//! the design names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tonic::transport::server::Connected as _;

use crate::conn::{Bounded, ConnLimits, incoming_with};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// A client that opens a connection and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cipher suites SSPM accepts: every TLS 1.3 suite, and the AES-GCM ECDHE ones of TLS 1.2.
pub fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite as C;
    let tls12 = [
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| s.tls13().is_some() || tls12.contains(&s.suite()))
        .collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(),
        ..ring::default_provider()
    })
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The certificate chain (PEM) at `path`.
pub fn load_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    parse_certificates(&read(path, "certificate")?, path)
}

/// The certificates of `pem`, read from `path`; at least one.
fn parse_certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// The server configuration of a service with the certificate chain and private key (PEM)
/// at the given paths; it speaks HTTP/2 only (gRPC).
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = load_certificates(cert_path)?;
    let key_pem = read(key_path, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "{} and {} are not a matching certificate and key",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections of `listener`, each [`Bounded`] by `limits` and then after its TLS
/// handshake. Handshakes run concurrently (a slow client does not hold up the others) and
/// a failed one is logged and dropped. Accepting stops, and the listener closes, when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
) -> ReceiverStream<std::io::Result<TlsStream<Bounded>>> {
    let acceptor = TlsAcceptor::from(config);
    incoming_with(listener, limits, move |tcp, tx| {
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let peer = tcp.connect_info().tcp.remote_addr;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
            }
        });
    })
}

/// The client TLS settings of internal calls: trust the CA (PEM) at `ca_path`.
pub fn client_config(ca_path: &Path) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let pem = read(ca_path, "CA certificate")?;
    parse_certificates(&pem, ca_path)?;
    Ok(tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)))
}
