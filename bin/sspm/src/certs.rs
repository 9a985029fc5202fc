//! A development certificate authority and a server certificate for the services, for
//! `sspm up --tls` and `sspm certs` (docker-compose). RSA 2048 keys, so the ECDHE-RSA
//! suites of docs/ARCHITECTURE.md ("Observability and operations") are the ones negotiated, as with a production RSA certificate.
//! Not for production: the CA key sits next to the certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rsa::pkcs8::EncodePrivateKey;
use sspm_platform::{ServiceKind, SspmConfig};

/// The files of a development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate: what clients (grpcurl `-cacert`, the services) trust.
    pub ca_cert: PathBuf,
    /// The services' certificate (one for all four: its names cover each).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl DevPki {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("services.pem"),
            key: dir.join("services-key.pem"),
        }
    }

    /// Points every service of `config` at these files and makes internal calls trust the
    /// CA (endpoints become `https://`).
    pub fn apply(&self, config: &mut SspmConfig) {
        for kind in ServiceKind::ALL {
            let svc = config.services.get_mut(kind);
            svc.tls_cert_path = Some(self.cert.clone());
            svc.tls_key_path = Some(self.key.clone());
            if let Some(e) = &svc.endpoint
                && let Some(rest) = e.strip_prefix("http://")
            {
                svc.endpoint = Some(format!("https://{rest}"));
            }
        }
        config.clients.ca_path = Some(self.ca_cert.clone());
    }
}

fn rsa_key() -> anyhow::Result<KeyPair> {
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).context("cannot generate an RSA key")?;
    let der = key.to_pkcs8_der().context("cannot encode the RSA key")?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).context("cannot load the RSA key")
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// The development PKI in `dir`: the existing one if its files are there (so clients keep
/// trusting it across restarts), otherwise a new CA and a services certificate valid for
/// `localhost`, `127.0.0.1`, `::1`, each service's name (`request`, `sspm-request`, …) and
/// `extra_names`.
pub fn ensure_dev_pki(dir: &Path, extra_names: &[String]) -> anyhow::Result<(DevPki, bool)> {
    let pki = DevPki::in_dir(dir);
    if pki.ca_cert.exists() && pki.cert.exists() && pki.key.exists() {
        return Ok((pki, false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = rsa_key()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "SSPM development CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "SSPM (development only)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA certificate")?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for kind in ServiceKind::ALL {
        names.push(kind.name().to_owned());
        names.push(format!("sspm-{}", kind.name()));
    }
    names.extend(extra_names.iter().cloned());
    let mut leaf = CertificateParams::new(names).context("invalid certificate name")?;
    leaf.distinguished_name
        .push(DnType::CommonName, "SSPM services (development)");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rsa_key()?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .context("cannot sign the services certificate")?;

    write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;
    write(&pki.ca_cert, &ca_cert.pem(), false)?;
    write(&pki.key, &leaf_key.serialize_pem(), true)?;
    write(&pki.cert, &leaf_cert.pem(), false)?;
    Ok((pki, true))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_generated_files_make_a_server_configuration_and_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, created) = ensure_dev_pki(dir.path(), &["sspm.internal".into()]).unwrap();
        assert!(created);
        sspm_platform::tls::server_config(&pki.cert, &pki.key).unwrap();
        sspm_platform::tls::client_config(&pki.ca_cert).unwrap();
        let before = std::fs::read(&pki.cert).unwrap();
        let (again, created) = ensure_dev_pki(dir.path(), &[]).unwrap();
        assert!(!created);
        assert_eq!(std::fs::read(&again.cert).unwrap(), before);
        let mut config = SspmConfig::default();
        pki.apply(&mut config);
        config.validate().unwrap();
        assert!(config.services.request.endpoint().starts_with("https://"));
    }
}
