//! The server layer that admits every RPC except health and reflection: authentication
//! (tokens: [`crate::identity`]), the caller table, per-principal rate limits and shares,
//! the request message's bounds, and load shedding.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sspm_rules::PrincipalId;
use tonic::Status;
use tonic::body::Body;

pub use crate::identity::{Principal, PrincipalKind, TokenError, TokenMinter, TokenVerifier, caller, parse_principal};
use crate::metrics::RpcMetrics;

/// Paths served without a token: health checks and reflection.
pub fn is_public_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Tower layer that admits every RPC except [`is_public_path`] ones, in this order:
/// authenticates it (UNAUTHENTICATED if it can't); refuses it with PERMISSION_DENIED when
/// the caller table does not list its caller ([`crate::identity::callers`]); refuses it with RESOURCE_EXHAUSTED when
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
                let principal = match layer.verifier.verify_headers(req.headers()).await {
                    Ok(principal) => principal,
                    Err(e) => {
                        tracing::debug!(error = %e, "unauthenticated call refused");
                        let refused = Status::from(e);
                        record(path, refused.code() as i32);
                        return Ok(refused.into_http());
                    }
                };
                span.record("enduser.id", principal.id.as_str());
                if let Err(refused) = crate::identity::callers::admit(path, &principal) {
                    tracing::debug!(path, caller = %principal.id, "refused by the caller table");
                    record(path, refused.code() as i32);
                    return Ok(refused.into_http());
                }
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
                call = Some(crate::identity::CallContext::of(&principal, req.headers()));
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
