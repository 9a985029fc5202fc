//! The identity provider's signing keys (a JWKS), from a file or from an OIDC issuer's
//! discovery document, refreshed periodically and when a token names a key not yet seen
//! (README, "Identity").
//!
//! A failed refresh keeps the keys already fetched: a provider that cannot be reached
//! never makes a token verifiable that was not, and never stops the ones that were.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::tokens::TokenError;
use crate::config::UsersConfig;

/// At most this many keys of a set are kept (a provider publishes a handful).
const MAX_KEYS: usize = 64;

/// One published key: what it verifies with, and the algorithm it is pinned to, if any.
#[derive(Clone)]
struct PublishedKey {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<PublishedKey>>,
    /// Keys published without a `kid` (tried for tokens without one).
    anonymous: Vec<PublishedKey>,
    loaded: bool,
}

struct State {
    cfg: UsersConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started; one fetch at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches made (tests count them).
    fetches: std::sync::atomic::AtomicU64,
}

/// The provider's keys, shared by every verifier of the process built from the same config.
#[derive(Clone)]
pub struct ProviderKeys {
    state: Arc<State>,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("issuer_url", &self.state.cfg.issuer_url)
            .field("jwks_file", &self.state.cfg.jwks_file)
            .finish_non_exhaustive()
    }
}

impl ProviderKeys {
    /// Keys from the provider `cfg` names; fetched at the first token, then refreshed every
    /// `refresh_seconds` by a background task while this value lives.
    pub fn new(cfg: &UsersConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_path {
            for cert in crate::tls::load_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("auth.users.ca_path {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_millis(cfg.fetch_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let keys = Self {
            state: Arc::new(State {
                cfg: cfg.clone(),
                http,
                keys: RwLock::new(Arc::default()),
                last_fetch: tokio::sync::Mutex::new(None),
                fetches: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        keys.spawn_refresher();
        Ok(keys)
    }

    /// How many fetches were made.
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Arc<KeySet> {
        self.state
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn spawn_refresher(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.state);
        let period = Duration::from_secs(self.state.cfg.refresh_seconds);
        runtime.spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(state) = weak.upgrade() else { return };
                let keys = ProviderKeys { state };
                let wait = match keys.refresh(Duration::ZERO).await {
                    Ok(()) => {
                        failures = 0;
                        period
                    }
                    Err(_) => {
                        failures += 1;
                        // Retry a failed fetch sooner, backing off up to the period.
                        Duration::from_millis(crate::backoff::backoff_ms(1_000, 60_000, failures, rand::random()))
                            .min(period)
                    }
                };
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The keys that may have signed a token with `kid` and `alg`: refreshed first when the
    /// set was never loaded or does not know `kid` (at most once per
    /// `min_refresh_interval_seconds`).
    pub(super) async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<DecodingKey>, TokenError> {
        let mut set = self.current();
        let known = |set: &KeySet| match kid {
            Some(k) => set.by_kid.contains_key(k),
            None => !set.anonymous.is_empty(),
        };
        if !known(&set) {
            let min = Duration::from_secs(self.state.cfg.min_refresh_interval_seconds);
            let refreshed = self.refresh(min).await;
            set = self.current();
            if !set.loaded {
                return Err(TokenError::KeysUnavailable(
                    refreshed.err().unwrap_or_else(|| "not fetched yet".to_owned()),
                ));
            }
        }
        let candidates = match kid {
            Some(k) => set.by_kid.get(k).map(Vec::as_slice).unwrap_or_default(),
            None => set.anonymous.as_slice(),
        };
        if candidates.is_empty() {
            return Err(TokenError::Invalid(match kid {
                Some(k) => format!("signed with key {k:?}, which the identity provider does not publish"),
                None => "no kid, and the identity provider publishes no key without one".to_owned(),
            }));
        }
        let family = alg.family();
        let usable: Vec<DecodingKey> = candidates
            .iter()
            .filter(|k| k.alg.is_none_or(|a| a == alg) && k.key.family() == family)
            .map(|k| k.key.clone())
            .collect();
        if usable.is_empty() {
            return Err(TokenError::Invalid(format!(
                "the key it names is not for {alg:?} (algorithm confusion refused)"
            )));
        }
        Ok(usable)
    }

    /// Fetches the key set unless a fetch started less than `min_interval` ago; keeps the
    /// old set when the fetch fails.
    async fn refresh(&self, min_interval: Duration) -> Result<(), String> {
        let mut last = self.state.last_fetch.lock().await;
        if let Some(at) = *last
            && at.elapsed() < min_interval
        {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.state.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await.and_then(|body| parse_jwks(&body)) {
            Ok(set) => {
                tracing::debug!(
                    keys = set.by_kid.len() + set.anonymous.len(),
                    "identity provider keys fetched"
                );
                *self
                    .state
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the identity provider's keys; keeping the keys already fetched");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let cfg = &self.state.cfg;
        if let Some(path) = &cfg.jwks_file {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if bytes.len() > cfg.max_document_bytes {
                return Err(format!(
                    "{} is larger than {} bytes",
                    path.display(),
                    cfg.max_document_bytes
                ));
            }
            return Ok(bytes);
        }
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer_url.trim_end_matches('/')
        );
        let discovery: serde_json::Value = serde_json::from_slice(&self.get(&discovery_url).await?)
            .map_err(|e| format!("{discovery_url}: not a discovery document: {e}"))?;
        let issuer = discovery.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
        if issuer.trim_end_matches('/') != cfg.issuer_url.trim_end_matches('/') {
            return Err(format!(
                "{discovery_url}: names the issuer {issuer:?}, not {:?} (OpenID Connect Discovery §4.3)",
                cfg.issuer_url
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{discovery_url}: no jwks_uri"))?;
        let same_scheme = jwks_uri.starts_with("https://")
            || (jwks_uri.starts_with("http://") && cfg.issuer_url.starts_with("http://"));
        if !same_scheme {
            return Err(format!("{discovery_url}: jwks_uri {jwks_uri:?} is not https"));
        }
        self.get(jwks_uri).await
    }

    /// The body of `url`, at most `max_document_bytes`.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let max = self.state.cfg.max_document_bytes;
        let mut response = self
            .state
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {}", describe(&e)))? {
            if body.len() + chunk.len() > max {
                return Err(format!("{url}: larger than {max} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The verification keys of a JWKS document: public signing keys only (no symmetric `oct`
/// keys, no encryption keys); keys of unknown types are skipped.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet {
        loaded: true,
        ..KeySet::default()
    };
    for raw in doc.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(
                jwk.algorithm,
                AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
            )
        {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => match Algorithm::try_from(a) {
                Ok(a) => Some(a),
                Err(_) => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let published = PublishedKey { key, alg };
        match jwk.common.key_id {
            Some(kid) => set.by_kid.entry(kid).or_default().push(published),
            None => set.anonymous.push(published),
        }
    }
    Ok(set)
}
