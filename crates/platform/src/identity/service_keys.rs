//! Each SSPM service's own Ed25519 key pair: the private key signs its service tokens, the
//! public key (which every service holds) verifies them (README, "Identity").

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::config::{AuthConfig, Profile, ServiceKind};

/// The services' public keys, and the private keys of the services this process runs.
#[derive(Clone, Default)]
pub struct ServiceKeys {
    /// Every public key of each service: `<service>.pub.pem`, and during a rotation the
    /// new or old one beside it (`<service>.<label>.pub.pem`).
    public: HashMap<ServiceKind, Vec<DecodingKey>>,
    private: HashMap<ServiceKind, EncodingKey>,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeys")
            .field("public", &self.public.keys().collect::<Vec<_>>())
            .field("private", &self.private.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// PKCS#8 (RFC 8410) of an Ed25519 private key: this prefix, then the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The development key pair of `kind`, derived from the development HS256 key (SHA-256 of
/// a label, the key and the service's name as the Ed25519 seed): every process of a dev
/// deployment derives the same pairs with no files to share. Never used in production.
pub fn dev_service_key_pair(dev_key: &str, kind: ServiceKind) -> (EncodingKey, DecodingKey) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sspm development service key\0");
    ctx.update(dev_key.as_bytes());
    ctx.update(b"\0");
    ctx.update(kind.name().as_bytes());
    let seed = ctx.finish();
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
        .unwrap_or_else(|_| unreachable!("any 32 bytes are a seed"));
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(seed.as_ref());
    use ring::signature::KeyPair as _;
    (
        EncodingKey::from_ed_der(&der),
        DecodingKey::from_ed_der(pair.public_key().as_ref()),
    )
}

/// The file names of a service's key pair in `auth.service_keys_dir`.
pub fn key_file_names(kind: ServiceKind) -> (String, String) {
    (format!("{}.key.pem", kind.name()), format!("{}.pub.pem", kind.name()))
}

impl ServiceKeys {
    /// The keys the configuration gives: from `auth.service_keys_dir` (every public key,
    /// and the private keys found there), or in the dev profile without one, the
    /// development pairs of all four.
    pub fn load(profile: Profile, auth: &AuthConfig) -> anyhow::Result<Self> {
        let dir = auth.service_keys_dir.as_deref().filter(|d| !d.as_os_str().is_empty());
        match (dir, auth.dev_key(profile)) {
            (Some(dir), _) => Self::from_dir(dir),
            (None, Some(dev)) => Ok(Self::dev(dev)),
            (None, None) => anyhow::bail!(
                "auth.service_keys_dir is required: each service signs its tokens with its own key (`sspm keys --out DIR`)"
            ),
        }
    }

    /// The development pairs of all four services.
    pub fn dev(dev_key: &str) -> Self {
        let mut keys = Self::default();
        for kind in ServiceKind::ALL {
            let (private, public) = dev_service_key_pair(dev_key, kind);
            keys.public.insert(kind, vec![public]);
            keys.private.insert(kind, private);
        }
        keys
    }

    /// Every service's public key from `dir` (`<service>.pub.pem`, required, and any
    /// `<service>.<label>.pub.pem` beside it during a rotation), and the private keys
    /// present there (each checked against its service's public keys).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut keys = Self::default();
        let read_public = |path: &Path| -> anyhow::Result<DecodingKey> {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            DecodingKey::from_ed_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 public key in PEM: {e}", path.display()))
        };
        let mut extra: Vec<(ServiceKind, std::path::PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("auth.service_keys_dir: cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((service, label)) = name.strip_suffix(".pub.pem").and_then(|n| n.split_once('.')) else {
                continue;
            };
            if let Some(kind) = ServiceKind::ALL.into_iter().find(|k| k.name() == service)
                && !label.is_empty()
            {
                extra.push((kind, dir.join(name)));
            }
        }
        extra.sort_by(|a, b| a.1.cmp(&b.1));
        for kind in ServiceKind::ALL {
            let (private_name, public_name) = key_file_names(kind);
            let public_path = dir.join(&public_name);
            if !public_path.exists() {
                anyhow::bail!(
                    "auth.service_keys_dir: {} (the {} service's public key) is missing",
                    public_path.display(),
                    kind.name()
                );
            }
            let mut public = vec![read_public(&public_path)?];
            for (_, path) in extra.iter().filter(|(k, _)| *k == kind) {
                public.push(read_public(path)?);
            }
            keys.public.insert(kind, public);
            let private_path = dir.join(&private_name);
            match std::fs::read(&private_path) {
                Ok(pem) => {
                    let private = EncodingKey::from_ed_pem(&pem).map_err(|e| {
                        anyhow::anyhow!(
                            "{}: not an Ed25519 private key in PKCS#8 PEM: {e}",
                            private_path.display()
                        )
                    })?;
                    keys.private.insert(kind, private);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot read {}: {e}", private_path.display()),
            }
        }
        for (kind, private) in &keys.private {
            if !keys.pair_matches(*kind, private) {
                anyhow::bail!(
                    "{}: the {} service's private key matches none of its public keys ({} and any {}.<label>.pub.pem) in the same directory",
                    dir.display(),
                    kind.name(),
                    key_file_names(*kind).1,
                    kind.name()
                );
            }
        }
        Ok(keys)
    }

    fn pair_matches(&self, kind: ServiceKind, private: &EncodingKey) -> bool {
        let probe = b"sspm key pair check";
        let Ok(sig) = jsonwebtoken::crypto::sign(probe, private, jsonwebtoken::Algorithm::EdDSA) else {
            return false;
        };
        self.public(kind).iter().any(|public| {
            jsonwebtoken::crypto::verify(&sig, probe, public, jsonwebtoken::Algorithm::EdDSA).unwrap_or(false)
        })
    }

    /// The public keys of `kind` (several during a rotation).
    pub fn public(&self, kind: ServiceKind) -> &[DecodingKey] {
        self.public.get(&kind).map(Vec::as_slice).unwrap_or_default()
    }

    /// The private key of `kind`, if this process holds it.
    pub fn private(&self, kind: ServiceKind) -> Option<&EncodingKey> {
        self.private.get(&kind)
    }
}
