//! Bearer tokens (HS256-signed JWTs) and the server layer that admits every RPC except
//! health and reflection: load shedding, authentication, per-principal rate limits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sspm_rules::PrincipalId;
use tonic::Status;
use tonic::body::Body;

use crate::config::AuthConfig;
use crate::metrics::RpcMetrics;

/// Kind of caller a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    User,
    /// A service or automation.
    Service,
}

/// The authenticated caller of an RPC, put into the request's extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal id (the token's `sub`).
    pub id: PrincipalId,
    /// User or service.
    pub kind: PrincipalKind,
    /// The verified bearer token, forwarded on internal calls so the next service sees the
    /// original principal.
    token: Arc<str>,
}

impl Principal {
    /// The raw token, for forwarding.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// Validates a principal id given on a command line or in config.
pub fn parse_principal(raw: &str) -> anyhow::Result<PrincipalId> {
    PrincipalId::parse(raw).map_err(|e| anyhow::anyhow!("invalid principal: {e}"))
}

/// The caller of a request, as authenticated by [`AuthLayer`]; UNAUTHENTICATED if absent
/// (a service mounted without the layer).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated principal"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    kind: PrincipalKind,
}

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
    /// Bad signature, issuer, audience or shape.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        Status::unauthenticated(e.to_string())
    }
}

/// Verifies tokens with the current key and any previous keys (rotation): signature,
/// issuer, audience, `exp` and `nbf` (within `auth.clock_leeway_seconds`), an `iat` not in
/// the future, and a lifetime (`exp` − `iat`) of at most `auth.max_token_lifetime_seconds`.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<[DecodingKey]>,
    validation: Validation,
    max_lifetime: u64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("keys", &self.keys.len()).finish()
    }
}

impl TokenVerifier {
    /// A verifier for the configured keys, issuer and audience.
    pub fn new(cfg: &AuthConfig) -> Self {
        let keys = std::iter::once(&cfg.signing_key)
            .chain(&cfg.previous_keys)
            // Only an empty secret is refused, and configuration refuses keys under 32 bytes.
            .filter_map(|k| DecodingKey::from_secret(k.as_bytes()).ok())
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = cfg.clock_leeway_seconds;
        Self {
            keys,
            validation,
            max_lifetime: cfg.max_token_lifetime_seconds,
        }
    }

    /// The checks on `iat` that the JWT library does not make.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), TokenError> {
        if claims.iat > now() + self.validation.leeway {
            return Err(TokenError::Invalid("issued in the future (iat)".into()));
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > self.max_lifetime {
            return Err(TokenError::Invalid(format!(
                "its lifetime ({lifetime} s from iat to exp) exceeds the {} s SSPM accepts",
                self.max_lifetime
            )));
        }
        Ok(())
    }

    /// Verifies a raw token.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut last = TokenError::Invalid("no verification key".into());
        for key in self.keys.iter() {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    self.check_lifetime(&data.claims)?;
                    let id = PrincipalId::parse(&data.claims.sub)
                        .map_err(|e| TokenError::Invalid(format!("subject: {e}")))?;
                    return Ok(Principal {
                        id,
                        kind: data.claims.kind,
                        token: Arc::from(token),
                    });
                }
                // Another key may have signed it: try the next one.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last = TokenError::Invalid("signature does not match".into());
                }
                Err(e) => {
                    return Err(match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet (nbf)".into()),
                        ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience".into()),
                        ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer".into()),
                        ErrorKind::MissingRequiredClaim(c) => TokenError::Invalid(format!("missing claim {c}")),
                        _ => TokenError::Invalid("not a valid token".into()),
                    });
                }
            }
        }
        Err(last)
    }

    /// Verifies the `authorization` header of a request.
    pub fn verify_headers(&self, headers: &http::HeaderMap) -> Result<Principal, TokenError> {
        let value = headers.get(http::header::AUTHORIZATION).ok_or(TokenError::Missing)?;
        let value = value.to_str().map_err(|_| TokenError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(TokenError::Malformed);
        }
        self.verify(token.trim())
    }
}

/// Mints tokens with the current signing key (development, tests, `sspm token`).
#[derive(Clone)]
pub struct TokenMinter {
    /// `None` only for an empty key, which configuration refuses (tokens would be empty,
    /// and refused everywhere).
    key: Option<EncodingKey>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter").field("issuer", &self.issuer).finish()
    }
}

impl TokenMinter {
    /// A minter for the configured signing key, issuer and audience.
    pub fn new(cfg: &AuthConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(cfg.signing_key.as_bytes()).ok(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        }
    }

    /// A token for `subject`, valid for `ttl_seconds`.
    pub fn mint(&self, subject: &PrincipalId, kind: PrincipalKind, ttl_seconds: u64) -> String {
        let iat = now();
        let claims = Claims {
            sub: subject.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: iat + ttl_seconds,
            iat,
            nbf: None,
            kind,
        };
        // HS256 encoding of a plain struct cannot fail.
        self.key
            .as_ref()
            .and_then(|key| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok())
            .unwrap_or_default()
    }
}

/// Paths served without a token: health checks and reflection.
pub fn is_public_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Tower layer that admits every RPC except [`is_public_path`] ones, in this order:
/// authenticates it (UNAUTHENTICATED if it can't); refuses it with RESOURCE_EXHAUSTED when
/// its principal is over its rate limit or already has its share of calls under way; waits
/// for its request message, within a deadline and a size (DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED); sheds it with UNAVAILABLE when the server has its maximum of calls
/// being served; and puts the [`Principal`] into the request's extensions. A call holds a
/// server-wide slot only once its message is there, so callers that send headers and no
/// message hold nothing but their own share (README, "Bounds on callers").
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: TokenVerifier,
    metrics: Option<RpcMetrics>,
    in_flight: Option<InFlight>,
    per_principal: Option<PerPrincipal>,
    rate_limits: Option<RateLimits>,
    request: RequestLimits,
}

/// What a call's request message may take.
#[derive(Debug, Clone, Copy)]
struct RequestLimits {
    max_bytes: usize,
    timeout: Duration,
}

/// Per-principal rate limits (GCRA, one state per user principal); service principals are
/// not limited.
#[derive(Clone)]
pub struct RateLimits {
    limiter: Arc<governor::DefaultKeyedRateLimiter<PrincipalId>>,
    per_second: u32,
    checks: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("per_second", &self.per_second)
            .finish()
    }
}

/// Forget principals idle long enough to have a full bucket once every this many checks,
/// so the table holds only the recently active ones.
const RATE_LIMIT_SWEEP_EVERY: u64 = 4_096;

impl RateLimits {
    /// `per_second` calls sustained and `burst` at once per user principal; none when
    /// either is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let quota = governor::Quota::per_second(std::num::NonZeroU32::new(per_second)?)
            .allow_burst(std::num::NonZeroU32::new(burst)?);
        Some(Self {
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
            per_second,
            checks: Arc::default(),
        })
    }

    /// Counts a call of `principal`; the status to refuse it with when over the limit.
    pub fn check(&self, principal: &Principal) -> Result<(), Status> {
        if principal.kind == PrincipalKind::Service {
            return Ok(());
        }
        use governor::clock::Clock;
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(RATE_LIMIT_SWEEP_EVERY)
        {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&principal.id).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            crate::error::rate_limited(principal.id.as_str(), self.per_second, wait)
        })
    }
}

/// The bound on calls being served: a permit per call, from the arrival of its request
/// message until its response starts.
#[derive(Debug, Clone)]
struct InFlight {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

/// The bound on one user principal's calls under way: a count per principal that has any,
/// so the table holds at most one entry per call under way.
#[derive(Debug, Clone)]
struct PerPrincipal {
    counts: Arc<Mutex<HashMap<PrincipalId, usize>>>,
    max: usize,
}

/// One call counted in [`PerPrincipal`], until dropped.
#[derive(Debug)]
struct PrincipalSlot {
    counts: Arc<Mutex<HashMap<PrincipalId, usize>>>,
    id: PrincipalId,
}

impl PerPrincipal {
    /// A slot for a call of `principal`; `None` when it has its maximum under way.
    fn acquire(&self, principal: &Principal) -> Option<PrincipalSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(principal.id.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PrincipalSlot {
            counts: self.counts.clone(),
            id: principal.id.clone(),
        })
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

impl AuthLayer {
    /// A layer verifying with `verifier` and recording every RPC in `metrics`, if given.
    pub fn new(verifier: TokenVerifier, metrics: Option<RpcMetrics>) -> Self {
        let defaults = crate::config::ServerLimits::default();
        Self {
            verifier,
            metrics,
            in_flight: None,
            per_principal: None,
            rate_limits: None,
            request: RequestLimits {
                max_bytes: defaults.max_request_bytes,
                timeout: Duration::from_millis(defaults.request_message_timeout_ms),
            },
        }
    }

    /// Refuses a user principal's calls beyond `limits` with RESOURCE_EXHAUSTED.
    pub fn with_rate_limits(mut self, limits: Option<RateLimits>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Sheds calls beyond `max` being served at once (0: no bound).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = (max > 0).then(|| InFlight {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        });
        self
    }

    /// Refuses a user principal's calls beyond `max` under way at once (0: no bound).
    pub fn with_per_principal_in_flight(mut self, max: usize) -> Self {
        self.per_principal = (max > 0).then(|| PerPrincipal {
            counts: Arc::default(),
            max,
        });
        self
    }

    /// Request messages of at most `max_bytes`, arriving within `timeout` of the headers.
    pub fn with_request_limits(mut self, max_bytes: usize, timeout: Duration) -> Self {
        self.request = RequestLimits { max_bytes, timeout };
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The request with its message read in full, within `limits`; the status to end the call
/// with otherwise.
async fn read_message(req: http::Request<Body>, limits: RequestLimits) -> Result<http::Request<Body>, Status> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_bytes);
    match tokio::time::timeout(limits.timeout, limited.collect()).await {
        Err(_) => Err(crate::error::request_message_timeout(limits.timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(crate::error::request_too_large(limits.max_bytes))
        }
        Ok(Err(e)) => Err(Status::cancelled(format!("the request message could not be read: {e}"))),
        // gRPC requests carry no trailers.
        Ok(Ok(collected)) => Ok(http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(collected.to_bytes())),
        )),
    }
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready; call the instance that was polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        // The call counts as open on its connection until its response body is done, so
        // the connection is not idle meanwhile (conn.rs).
        let open_on_conn = crate::conn::conn_info(&req).map(|c| c.activity.call());
        // tonic calls layers before it enters the RPC's span and polls their futures inside
        // it: verify in the future, so the span is the current one.
        Box::pin(async move {
            let started = Instant::now();
            let span = tracing::Span::current();
            let record = |path: &str, code: i32| {
                span.record("rpc.grpc.status_code", code);
                if let Some(m) = &layer.metrics {
                    m.record(path, code, started.elapsed());
                }
            };
            // Held until the response starts.
            let mut _principal_slot = None;
            let mut _permit = None;
            let mut call = None;
            // A Uri clone shares its bytes: no copy of the path per call.
            let uri = req.uri().clone();
            let path = uri.path();
            if !is_public_path(path) {
                let principal = match layer.verifier.verify_headers(req.headers()) {
                    Ok(principal) => principal,
                    Err(e) => {
                        tracing::debug!(error = %e, "unauthenticated call refused");
                        record(path, tonic::Code::Unauthenticated as i32);
                        return Ok(Status::from(e).into_http());
                    }
                };
                span.record("enduser.id", principal.id.as_str());
                if let Some(Err(refused)) = layer.rate_limits.as_ref().map(|l| l.check(&principal)) {
                    tracing::debug!(path, "refused: over the principal's rate limit");
                    record(path, refused.code() as i32);
                    return Ok(refused.into_http());
                }
                if principal.kind == PrincipalKind::User
                    && let Some(per) = &layer.per_principal
                {
                    match per.acquire(&principal) {
                        Some(slot) => _principal_slot = Some(slot),
                        None => {
                            tracing::debug!(path, "refused: the principal has its share under way");
                            record(path, tonic::Code::ResourceExhausted as i32);
                            return Ok(crate::error::too_many_in_flight(principal.id.as_str(), per.max).into_http());
                        }
                    }
                }
                req = match read_message(req, layer.request).await {
                    Ok(req) => req,
                    Err(refused) => {
                        tracing::debug!(path, status = %refused.message(), "request message refused");
                        record(path, refused.code() as i32);
                        return Ok(refused.into_http());
                    }
                };
                if let Some(limit) = &layer.in_flight {
                    match limit.permits.clone().try_acquire_owned() {
                        Ok(permit) => _permit = Some(permit),
                        Err(_) => {
                            tracing::debug!(path, "shed: at capacity");
                            record(path, tonic::Code::Unavailable as i32);
                            return Ok(crate::error::overloaded(limit.max).into_http());
                        }
                    }
                }
                call = Some(crate::audit::CallContext::of(&principal, req.headers()));
                req.extensions_mut().insert(principal);
            }
            // The handler runs in the call's context: who and which trace, for the audit trail.
            let mut response = match call {
                Some(call) => call.scope(inner.call(req)).await?,
                None => inner.call(req).await?,
            };
            // tonic answers a request it cannot decode at once, before the handler.
            let internal = response.headers().get("grpc-status").is_some_and(|c| c == "13");
            if let Some(fault) = internal
                .then(|| Status::from_header_map(response.headers()))
                .flatten()
                .as_ref()
                .and_then(crate::error::malformed_request)
            {
                tracing::debug!(path, status = %fault.message(), "malformed request refused");
                response = fault.into_http();
            }
            // Errors answered at once carry grpc-status in the headers; otherwise it comes
            // in the trailers of a successful call.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            record(path, code);
            Ok(match open_on_conn {
                Some(open) => response.map(|body| {
                    use http_body_util::BodyExt as _;
                    Body::new(body.map_frame(move |frame| {
                        let _open = &open;
                        frame
                    }))
                }),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: &str) -> AuthConfig {
        AuthConfig {
            signing_key: key.into(),
            ..AuthConfig::default()
        }
    }

    fn alice() -> PrincipalId {
        PrincipalId::parse("alice@classics.example").unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_its_principal() {
        let c = AuthConfig::default();
        let token = TokenMinter::new(&c).mint(&alice(), PrincipalKind::User, 60);
        let p = TokenVerifier::new(&c).verify(&token).unwrap();
        assert_eq!(p.id, alice());
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(p.token(), token);
    }

    #[test]
    fn tokens_of_another_key_issuer_or_audience_are_refused() {
        let c = AuthConfig::default();
        let verifier = TokenVerifier::new(&c);
        let other = cfg("another-key-of-at-least-thirty-two-bytes");
        let token = TokenMinter::new(&other).mint(&alice(), PrincipalKind::User, 60);
        assert_eq!(
            verifier.verify(&token),
            Err(TokenError::Invalid("signature does not match".into()))
        );
        let aud = AuthConfig {
            audience: "other".into(),
            ..AuthConfig::default()
        };
        let token = TokenMinter::new(&aud).mint(&alice(), PrincipalKind::User, 60);
        assert_eq!(
            verifier.verify(&token),
            Err(TokenError::Invalid("wrong audience".into()))
        );
        assert!(matches!(verifier.verify("garbage"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let c = AuthConfig::default();
        let minter = TokenMinter::new(&c);
        let claims = Claims {
            sub: "alice".into(),
            iss: c.issuer.clone(),
            aud: c.audience.clone(),
            exp: now() - 120,
            iat: now() - 180,
            nbf: None,
            kind: PrincipalKind::User,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, minter.key.as_ref().unwrap()).unwrap();
        assert_eq!(TokenVerifier::new(&c).verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn nbf_iat_and_the_lifetime_are_checked() {
        let c = AuthConfig::default();
        let minter = TokenMinter::new(&c);
        let verifier = TokenVerifier::new(&c);
        let sign = |iat: u64, exp: u64, nbf: Option<u64>| {
            let claims = Claims {
                sub: "alice".into(),
                iss: c.issuer.clone(),
                aud: c.audience.clone(),
                exp,
                iat,
                nbf,
                kind: PrincipalKind::User,
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, minter.key.as_ref().unwrap()).unwrap()
        };
        let t = now();
        assert!(verifier.verify(&sign(t, t + 60, Some(t))).is_ok());
        // Within the leeway (5 s by default): accepted; beyond it: refused.
        assert!(verifier.verify(&sign(t, t + 60, Some(t + 3))).is_ok());
        assert_eq!(
            verifier.verify(&sign(t, t + 600, Some(t + 120))),
            Err(TokenError::Invalid("not valid yet (nbf)".into()))
        );
        assert_eq!(
            verifier.verify(&sign(t + 120, t + 600, None)),
            Err(TokenError::Invalid("issued in the future (iat)".into()))
        );
        let long = verifier.verify(&sign(t, t + 86_401, None)).unwrap_err();
        assert!(
            matches!(&long, TokenError::Invalid(m) if m.contains("lifetime")),
            "{long:?}"
        );
        assert!(verifier.verify(&sign(t, t + 86_400, None)).is_ok());
        // A token expired a few seconds ago is refused: the leeway is small.
        assert_eq!(verifier.verify(&sign(t - 100, t - 10, None)), Err(TokenError::Expired));
    }

    #[test]
    fn previous_keys_verify_during_rotation() {
        let old = cfg("the-old-key-of-at-least-thirty-two-bytes");
        let token = TokenMinter::new(&old).mint(&alice(), PrincipalKind::Service, 60);
        let rotated = AuthConfig {
            previous_keys: vec![old.signing_key.clone()],
            ..cfg("the-new-key-of-at-least-thirty-two-bytes")
        };
        assert_eq!(
            TokenVerifier::new(&rotated).verify(&token).unwrap().kind,
            PrincipalKind::Service
        );
    }

    #[test]
    fn header_must_be_bearer() {
        let c = AuthConfig::default();
        let v = TokenVerifier::new(&c);
        let mut h = http::HeaderMap::new();
        assert_eq!(v.verify_headers(&h), Err(TokenError::Missing));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(v.verify_headers(&h), Err(TokenError::Malformed));
        let token = TokenMinter::new(&c).mint(&alice(), PrincipalKind::User, 60);
        h.insert("authorization", format!("bearer {token}").parse().unwrap());
        assert!(v.verify_headers(&h).is_ok());
    }

    #[test]
    fn only_health_and_reflection_are_public() {
        assert!(is_public_path("/grpc.health.v1.Health/Check"));
        assert!(is_public_path(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_public_path("/sspm.v1.PortRequestService/GetPortLimits"));
        assert!(!is_public_path("/grpc.health.v1.HealthX/Check"));
    }

    /// A handler that answers each call only once `gate` has a permit for it (health at once).
    #[derive(Clone)]
    struct Gated {
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl tower::Service<http::Request<Body>> for Gated {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let gate = self.gate.clone();
            let waits = !req.uri().path().starts_with("/grpc.health.v1.Health/");
            Box::pin(async move {
                if waits && let Ok(pass) = gate.acquire().await {
                    pass.forget();
                }
                Ok(http::Response::new(Body::empty()))
            })
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<i32> {
        response.headers().get("grpc-status")?.to_str().ok()?.parse().ok()
    }

    #[tokio::test]
    async fn calls_beyond_max_in_flight_are_shed_at_once_and_health_still_answers() {
        use tower::{Layer, Service};

        let c = cfg("a-signing-key-of-at-least-32-bytes!!");
        let token = TokenMinter::new(&c).mint(&alice(), PrincipalKind::User, 60);
        let call = |path: &str| {
            http::Request::builder()
                .uri(format!("http://sspm{path}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut svc = AuthLayer::new(TokenVerifier::new(&c), None)
            .with_max_in_flight(2)
            .layer(Gated { gate: gate.clone() });

        // Two calls are under way (held by the handler) ...
        let first = tokio::spawn(svc.call(call("/sspm.v1.TicketingService/GetCase")));
        let second = tokio::spawn(svc.call(call("/sspm.v1.TicketingService/GetCase")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ... so a third is refused at once, with the reason and when to retry.
        let shed = tokio::time::timeout(
            Duration::from_secs(1),
            svc.call(call("/sspm.v1.TicketingService/GetCase")),
        )
        .await
        .expect("shed at once, not queued")
        .unwrap();
        assert_eq!(grpc_status(&shed), Some(tonic::Code::Unavailable as i32));
        let status = Status::from_header_map(shed.headers()).unwrap();
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(details.error_info().unwrap().reason, "OVERLOADED");
        assert!(details.retry_info().unwrap().retry_delay.is_some());

        // Health is not counted: probes answer under any load.
        let probe = svc.call(call("/grpc.health.v1.Health/Check")).await.unwrap();
        assert_eq!(grpc_status(&probe), None, "the probe got through");

        // Once the calls under way finish, calls are admitted again.
        gate.add_permits(2);
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), None);
        assert_eq!(grpc_status(&second.await.unwrap().unwrap()), None);
        gate.add_permits(1);
        let admitted = svc.call(call("/sspm.v1.TicketingService/GetCase")).await.unwrap();
        assert_eq!(grpc_status(&admitted), None);
    }

    #[tokio::test]
    async fn a_noisy_principal_is_limited_without_starving_the_others() {
        use tower::{Layer, Service};

        let c = cfg("a-signing-key-of-at-least-32-bytes!!");
        let minter = TokenMinter::new(&c);
        let call = |token: &str| {
            http::Request::builder()
                .uri("http://sspm/sspm.v1.PortRequestService/GetPortLimits")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let noisy = minter.mint(&alice(), PrincipalKind::User, 60);
        let quiet = minter.mint(
            &PrincipalId::parse("bob@classics.example").unwrap(),
            PrincipalKind::User,
            60,
        );
        let service = minter.mint(&PrincipalId::parse("svc-request").unwrap(), PrincipalKind::Service, 60);
        let gate = Arc::new(tokio::sync::Semaphore::new(1_000));
        // One call per second sustained, three at once.
        let mut svc = AuthLayer::new(TokenVerifier::new(&c), None)
            .with_rate_limits(RateLimits::new(1, 3))
            .layer(Gated { gate });

        for _ in 0..3 {
            assert_eq!(
                grpc_status(&svc.call(call(&noisy)).await.unwrap()),
                None,
                "within the burst"
            );
        }
        let refused = svc.call(call(&noisy)).await.unwrap();
        assert_eq!(grpc_status(&refused), Some(tonic::Code::ResourceExhausted as i32));
        let status = Status::from_header_map(refused.headers()).unwrap();
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
        let wait = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "the next token is due within a second: {wait:?}"
        );

        // The others are not affected, and SSPM's own services are never limited.
        assert_eq!(grpc_status(&svc.call(call(&quiet)).await.unwrap()), None);
        for _ in 0..10 {
            assert_eq!(grpc_status(&svc.call(call(&service)).await.unwrap()), None);
        }

        // After the advertised wait, the noisy principal is admitted again.
        tokio::time::sleep(wait).await;
        assert_eq!(grpc_status(&svc.call(call(&noisy)).await.unwrap()), None);
    }

    #[test]
    fn no_rate_limit_when_either_figure_is_zero() {
        assert!(RateLimits::new(0, 10).is_none());
        assert!(RateLimits::new(10, 0).is_none());
    }
}
