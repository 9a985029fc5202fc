//! Verifying and minting bearer tokens (JWTs): user tokens from the identity provider,
//! service tokens signed by each service's own key, development tokens (dev profile).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sspm_rules::PrincipalId;
use tonic::Status;

use super::provider::ProviderKeys;
use super::service_keys::ServiceKeys;
use super::{ON_BEHALF_OF, Principal, PrincipalKind, service_named, service_principal};
use crate::config::{AuthConfig, ServiceKind, SspmConfig};

/// Claims SSPM reads from every token; the rest (the subject claim among them) is kept.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    kind: Option<PrincipalKind>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Claims of the tokens SSPM mints (service tokens, development tokens).
#[derive(Debug, Serialize)]
struct Minted<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    kind: PrincipalKind,
}

/// Why a token whose signature does not verify with a key is refused.
const BAD_SIGNATURE: &str = "signature does not match";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` header.
    #[error("missing bearer token: send the header `authorization: Bearer <token>`")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    /// The token expired.
    #[error("the bearer token has expired")]
    Expired,
    /// Bad signature, issuer, audience, key or shape.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
    /// The identity provider's keys could not be fetched yet: the token can be neither
    /// accepted nor refused for its own sake; retrying later can succeed.
    #[error("the identity provider's keys are unavailable ({0}); retry later")]
    KeysUnavailable(String),
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::KeysUnavailable(_) => crate::error::unavailable("identity provider", &e),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

/// An asymmetric algorithm by its JOSE name (HS* never: whoever verifies could sign).
fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse::<Algorithm>()
        .ok()
        .filter(|a| a.family() != jsonwebtoken::AlgorithmFamily::Hmac)
}

/// User tokens of the identity provider.
#[derive(Clone)]
struct Users {
    keys: ProviderKeys,
    issuer: String,
    audience: String,
    subject_claim: String,
    algorithms: Vec<Algorithm>,
}

/// Verifies bearer tokens: the signature with the key its kind calls for, issuer,
/// audience, `exp` and `nbf` (within `auth.clock_leeway_seconds`), an `iat` not in the
/// future, and a lifetime of at most `auth.max_token_lifetime_seconds`.
///
/// - `kid` `svc-<service>`: a service token, EdDSA with that service's public key only,
///   whose `sub` must name the same service;
/// - HS256: a development user token, with `auth.signing_key` (dev profile only);
/// - any other: a user token of the identity provider, with the key its `kid` names in the
///   provider's key set, in one of `auth.users.algorithms`.
#[derive(Clone)]
pub struct TokenVerifier {
    dev: Arc<[DecodingKey]>,
    services: ServiceKeys,
    users: Option<Users>,
    issuer: String,
    audience: String,
    leeway: u64,
    max_lifetime: u64,
    /// Service tokens already verified, with their `exp`: every internal call carries its
    /// caller's service token, which the caller reuses for half its lifetime, so verifying
    /// its Ed25519 signature again at each call (~50 µs of CPU) is work done for nothing.
    /// Only tokens that verified are kept (only a service's private key can make one), at
    /// most [`VERIFIED_SERVICE_TOKENS`] of them; each is used until its `exp` and no longer.
    verified_services: Arc<quick_cache::sync::Cache<Arc<str>, (ServiceKind, u64)>>,
}

/// Service tokens kept verified: each service renews its token at half its lifetime, so a
/// deployment's four services have a handful live at once; this bounds the rest.
const VERIFIED_SERVICE_TOKENS: usize = 64;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("dev_keys", &self.dev.len())
            .field("services", &self.services)
            .field("users", &self.users.as_ref().map(|u| &u.keys))
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier for the configured keys; the identity provider's keys are fetched in the
    /// background.
    pub fn new(config: &SspmConfig) -> anyhow::Result<Self> {
        let services = ServiceKeys::load(config.profile, &config.auth)?;
        let users = if config.auth.users.configured() {
            let u = &config.auth.users;
            Some(Users {
                keys: ProviderKeys::new(u)?,
                issuer: u.expected_issuer().to_owned(),
                audience: u.audience.clone(),
                subject_claim: u.subject_claim.clone(),
                algorithms: u.algorithms.iter().filter_map(|a| algorithm(a)).collect(),
            })
        } else {
            None
        };
        Ok(Self::with(&config.auth, dev_keys(config), services, users))
    }

    fn with(auth: &AuthConfig, dev: Vec<DecodingKey>, services: ServiceKeys, users: Option<Users>) -> Self {
        Self {
            dev: dev.into(),
            services,
            users,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.clock_leeway_seconds,
            max_lifetime: auth.max_token_lifetime_seconds,
            verified_services: Arc::new(quick_cache::sync::Cache::new(VERIFIED_SERVICE_TOKENS)),
        }
    }

    /// The identity provider's key set, when one is configured.
    pub fn provider(&self) -> Option<&ProviderKeys> {
        self.users.as_ref().map(|u| &u.keys)
    }

    fn validation(&self, alg: Algorithm, issuer: &str, audience: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.leeway;
        v
    }

    /// Verifies a raw token.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("not a JWT signed with an algorithm SSPM knows".into()))?;
        if let Some(kid) = header.kid.as_deref().filter(|k| k.starts_with("svc-")) {
            return self.verify_service(token, kid, header.alg);
        }
        match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.verify_dev(token, header.alg),
            alg => self.verify_user(token, header.kid.as_deref(), alg).await,
        }
    }

    fn verify_service(&self, token: &str, kid: &str, alg: Algorithm) -> Result<Principal, TokenError> {
        // Verified before and not expired yet: what was checked then (signature, issuer,
        // audience, subject, iat, lifetime) cannot have changed since; only `exp` can pass.
        if let Some((kind, exp)) = self.verified_services.get(token) {
            if now() <= exp.saturating_add(self.leeway) {
                return Ok(service_caller(kind, token));
            }
            self.verified_services.remove(token);
        }
        let kind = service_named(kid).ok_or_else(|| TokenError::Invalid(format!("{kid} is not an SSPM service")))?;
        if alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "service tokens are signed with EdDSA, not {alg:?}"
            )));
        }
        let keys = self.services.public(kind);
        if keys.is_empty() {
            return Err(TokenError::Invalid(format!(
                "no public key of the {} service",
                kind.name()
            )));
        }
        let claims = self.decode_any(token, keys, &self.validation(alg, &self.issuer, &self.audience))?;
        let sub = claims.rest.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
        if sub != kid || claims.kind != Some(PrincipalKind::Service) {
            return Err(TokenError::Invalid(format!(
                "a service token signed by {kid} names another principal"
            )));
        }
        self.verified_services.insert(Arc::from(token), (kind, claims.exp));
        Ok(service_caller(kind, token))
    }

    fn verify_dev(&self, token: &str, alg: Algorithm) -> Result<Principal, TokenError> {
        if self.dev.is_empty() || alg != Algorithm::HS256 {
            return Err(TokenError::Invalid(format!(
                "{alg:?} (shared-secret) tokens are development tokens, not accepted here: use a token of the identity provider"
            )));
        }
        let claims = self.decode_any(
            token,
            self.dev.iter(),
            &self.validation(alg, &self.issuer, &self.audience),
        )?;
        self.user(token, claims, "sub")
    }

    async fn verify_user(&self, token: &str, kid: Option<&str>, alg: Algorithm) -> Result<Principal, TokenError> {
        let users = self.users.as_ref().ok_or_else(|| {
            TokenError::Invalid("no identity provider is configured (auth.users) to verify it".into())
        })?;
        if !users.algorithms.contains(&alg) {
            return Err(TokenError::Invalid(format!(
                "signed with {alg:?}, which auth.users.algorithms does not accept"
            )));
        }
        let keys = users.keys.keys_for(kid, alg).await?;
        let claims = self.decode_any(token, &keys, &self.validation(alg, &users.issuer, &users.audience))?;
        self.user(token, claims, &users.subject_claim)
    }

    /// The user a verified token names in `subject_claim`.
    fn user(&self, token: &str, claims: Claims, subject_claim: &str) -> Result<Principal, TokenError> {
        if claims.kind == Some(PrincipalKind::Service) {
            return Err(TokenError::Invalid(
                "a user token cannot claim to be a service: services sign their own tokens".into(),
            ));
        }
        let subject = claims
            .rest
            .get(subject_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| TokenError::Invalid(format!("missing claim {subject_claim}")))?;
        if service_named(subject).is_some() {
            return Err(TokenError::Invalid(format!("{subject} is an SSPM service, not a user")));
        }
        let id = PrincipalId::parse(subject).map_err(|e| TokenError::Invalid(format!("{subject_claim}: {e}")))?;
        Ok(Principal {
            id,
            kind: PrincipalKind::User,
            service: None,
            token: Arc::from(token),
        })
    }

    /// The claims of `token` verified with the first of `keys` whose signature matches
    /// (several keys are valid at once during a rotation).
    fn decode_any<'k>(
        &self,
        token: &str,
        keys: impl IntoIterator<Item = &'k DecodingKey>,
        validation: &Validation,
    ) -> Result<Claims, TokenError> {
        let mut outcome = Err(TokenError::Invalid(BAD_SIGNATURE.into()));
        for key in keys {
            outcome = self.decode(token, key, validation);
            if !matches!(&outcome, Err(TokenError::Invalid(why)) if why == BAD_SIGNATURE) {
                break;
            }
        }
        outcome
    }

    fn decode(&self, token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Invalid(BAD_SIGNATURE.into()),
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet (nbf)".into()),
            ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience".into()),
            ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer".into()),
            ErrorKind::InvalidAlgorithm => TokenError::Invalid("wrong algorithm for its key".into()),
            ErrorKind::MissingRequiredClaim(c) => TokenError::Invalid(format!("missing claim {c}")),
            _ => TokenError::Invalid("not a valid token".into()),
        })?;
        self.check_lifetime(&data.claims)?;
        Ok(data.claims)
    }

    /// The checks on `iat` and the lifetime that the JWT library does not make.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), TokenError> {
        let now = now();
        let issued = match claims.iat {
            Some(iat) if iat > now + self.leeway => {
                return Err(TokenError::Invalid("issued in the future (iat)".into()));
            }
            Some(iat) => iat,
            None => now,
        };
        let lifetime = claims.exp.saturating_sub(issued);
        if lifetime > self.max_lifetime {
            return Err(TokenError::Invalid(format!(
                "its lifetime ({lifetime} s to exp) exceeds the {} s SSPM accepts",
                self.max_lifetime
            )));
        }
        Ok(())
    }

    /// Verifies the `authorization` header of a request.
    pub async fn verify_headers(&self, headers: &http::HeaderMap) -> Result<Principal, TokenError> {
        let value = headers.get(http::header::AUTHORIZATION).ok_or(TokenError::Missing)?;
        let value = value.to_str().map_err(|_| TokenError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(TokenError::Malformed);
        }
        self.verify(token.trim()).await
    }
}

/// The principal of a verified service token.
fn service_caller(kind: ServiceKind, token: &str) -> Principal {
    Principal {
        id: service_principal(kind),
        kind: PrincipalKind::Service,
        service: Some(kind),
        token: Arc::from(token),
    }
}

/// The development HS256 keys in effect (none in production).
fn dev_keys(config: &SspmConfig) -> Vec<DecodingKey> {
    let Some(current) = config.auth.dev_key(config.profile) else {
        return Vec::new();
    };
    std::iter::once(current)
        .chain(config.auth.previous_keys.iter().map(String::as_str))
        .filter_map(|k| DecodingKey::from_secret(k.as_bytes()).ok())
        .collect()
}

/// Mints development user tokens with the HS256 development key (`sspm token`, tests, the
/// load harness); in the production profile it has no key and mints nothing.
#[derive(Clone)]
pub struct TokenMinter {
    key: Option<EncodingKey>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter")
            .field("issuer", &self.issuer)
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl TokenMinter {
    /// A minter of development tokens for `config`; [`TokenMinter::available`] says
    /// whether it has a key.
    pub fn new(config: &SspmConfig) -> Self {
        Self {
            key: config
                .auth
                .dev_key(config.profile)
                .and_then(|k| EncodingKey::from_secret(k.as_bytes()).ok()),
            issuer: config.auth.issuer.clone(),
            audience: config.auth.audience.clone(),
        }
    }

    /// Whether development tokens can be minted (the dev profile).
    pub fn available(&self) -> bool {
        self.key.is_some()
    }

    /// A development token for the user `subject`, valid for `ttl_seconds`; empty (refused
    /// everywhere) where no development key is configured.
    pub fn mint(&self, subject: &PrincipalId, ttl_seconds: u64) -> String {
        let Some(key) = &self.key else {
            return String::new();
        };
        mint(
            key,
            Header::new(Algorithm::HS256),
            subject.as_str(),
            &self.issuer,
            &self.audience,
            ttl_seconds,
            PrincipalKind::User,
        )
    }
}

fn mint(
    key: &EncodingKey,
    header: Header,
    sub: &str,
    iss: &str,
    aud: &str,
    ttl_seconds: u64,
    kind: PrincipalKind,
) -> String {
    let iat = now();
    let claims = Minted {
        sub,
        iss,
        aud,
        exp: iat + ttl_seconds,
        iat,
        kind,
    };
    // Encoding a plain struct with a key of the header's family cannot fail.
    jsonwebtoken::encode(&header, &claims, key).unwrap_or_default()
}

/// The identity of an SSPM service for its calls to the others: a service token signed
/// with its own private key, renewed before it expires.
#[derive(Clone)]
pub struct ServiceIdentity {
    kind: ServiceKind,
    id: PrincipalId,
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl: u64,
    current: Arc<Mutex<Option<(String, SystemTime)>>>,
}

impl std::fmt::Debug for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceIdentity").field("id", &self.id).finish()
    }
}

const SERVICE_TOKEN_TTL: u64 = 3_600;

impl ServiceIdentity {
    /// The identity `svc-<name>` of `kind`, with its private key from the configuration;
    /// an error when this process does not hold that key.
    pub fn new(kind: ServiceKind, config: &SspmConfig) -> anyhow::Result<Self> {
        let keys = ServiceKeys::load(config.profile, &config.auth)?;
        let key = keys.private(kind).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "the {} service's private key ({}) is not in auth.service_keys_dir",
                kind.name(),
                super::service_keys::key_file_names(kind).0
            )
        })?;
        Ok(Self::with_key(kind, key, config))
    }

    /// The identity of `kind` signing with `key` (tests sign with another service's key).
    pub fn with_key(kind: ServiceKind, key: EncodingKey, config: &SspmConfig) -> Self {
        Self {
            kind,
            id: service_principal(kind),
            key,
            issuer: config.auth.issuer.clone(),
            audience: config.auth.audience.clone(),
            ttl: SERVICE_TOKEN_TTL.min(config.auth.max_token_lifetime_seconds),
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// The principal id.
    pub fn id(&self) -> &PrincipalId {
        &self.id
    }

    /// A fresh service token.
    pub fn token(&self) -> String {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now();
        match &*current {
            Some((token, renew_at)) if now < *renew_at => token.clone(),
            _ => {
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(self.id.to_string());
                let token = mint(
                    &self.key,
                    header,
                    self.id.as_str(),
                    &self.issuer,
                    &self.audience,
                    self.ttl,
                    PrincipalKind::Service,
                );
                *current = Some((token.clone(), now + Duration::from_secs(self.ttl / 2)));
                token
            }
        }
    }

    /// Which service.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// A request to another service made by this service, for `on_behalf_of` when given.
    pub fn request<T>(&self, message: T, on_behalf_of: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(v) = format!("Bearer {}", self.token()).parse() {
            req.metadata_mut().insert("authorization", v);
        }
        if let Some(v) = on_behalf_of.and_then(|p| p.parse().ok()) {
            req.metadata_mut().insert(ON_BEHALF_OF, v);
        }
        req
    }
}
