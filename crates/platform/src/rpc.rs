//! What every handler needs: timestamps, input checks, pagination, the service's own
//! identity for internal calls, and the client of the authorization service.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sspm_proto::internal::v1::authorization_service_client::AuthorizationServiceClient as InternalAuthorizationClient;
use sspm_proto::v1::authorization_service_client::AuthorizationServiceClient;
use sspm_proto::v1::{
    Action, BusinessUnit, CheckRequest, CheckResponse, DenyReason, GetBusinessUnitRequest,
    ListVisibleBusinessUnitsRequest, Permission,
};
use sspm_rules::{InvalidValue, PrincipalId, Rule, Violation};
use tonic::{Code, Status};

use crate::authz_cache::CheckCache;
use crate::client::{InternalChannel, connect_lazy};
use crate::config::{ServiceKind, SspmConfig};
use crate::error;

pub use crate::identity::{ON_BEHALF_OF, ServiceIdentity};

/// Now, in Unix microseconds (how every SSPM database stores time).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A stored time (Unix microseconds) as a protobuf timestamp.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or_default(),
    }
}

/// A stored optional time as an optional protobuf timestamp.
pub fn timestamp_opt(micros: Option<i64>) -> Option<prost_types::Timestamp> {
    micros.map(timestamp)
}

/// A protobuf timestamp from a caller as Unix microseconds; INVALID_ARGUMENT naming `field`
/// when it is out of range.
pub fn micros_of(ts: &prost_types::Timestamp, field: &str) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=253_402_300_799).contains(&ts.seconds) {
        return Err(invalid(field, "not a valid timestamp"));
    }
    Ok(ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000)
}

/// Records what an RPC is about on its server span (empty values are left unset).
pub fn annotate(request_id: &str, business_unit_id: &str) {
    let span = tracing::Span::current();
    if !request_id.is_empty() {
        span.record("sspm.request_id", request_id);
    }
    if !business_unit_id.is_empty() {
        span.record("sspm.business_unit_id", business_unit_id);
    }
}

/// Records the state a request ends the RPC in on its server span.
pub fn annotate_state(state: &str) {
    tracing::Span::current().record("sspm.state", state);
}

/// INVALID_ARGUMENT for malformed input in `field`.
pub fn invalid(field: &str, message: impl Into<String>) -> Status {
    error::violation(Violation::new(Rule::Input, field, message))
}

/// Turns a newtype's parse error into INVALID_ARGUMENT naming `field`.
pub fn parse_at<T>(field: &str, parsed: Result<T, InvalidValue>) -> Result<T, Status> {
    parsed.map_err(|e| error::violation(e.at(field)))
}

/// A required enum field: INVALID_ARGUMENT when unset (`*_UNSPECIFIED`) or unknown.
pub fn required_enum<E>(field: &str, raw: i32) -> Result<E, Status>
where
    E: TryFrom<i32> + PartialEq + Default,
{
    match E::try_from(raw) {
        Ok(v) if v != E::default() => Ok(v),
        Ok(_) => Err(invalid(field, "is required")),
        Err(_) => Err(invalid(field, format!("unknown value {raw}"))),
    }
}

/// A repeated enum field used as a filter: each value required and known, duplicates
/// folded; INVALID_ARGUMENT naming `field` when it lists more values than the enum has (so
/// a filter never grows a query beyond the enum's size, whatever a caller sends).
pub fn enum_filter<E>(field: &str, raw: &[i32]) -> Result<Vec<E>, Status>
where
    E: TryFrom<i32> + PartialEq + Default,
{
    let known = (1..=i32::from(u8::MAX)).filter(|v| E::try_from(*v).is_ok()).count();
    if raw.len() > known {
        return Err(invalid(
            field,
            format!("lists {} values; there are only {known} to filter by", raw.len()),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let e: E = required_enum(&format!("{field}[{i}]"), *v)?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Default page size of list RPCs.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page size of list RPCs.
pub const MAX_PAGE_SIZE: u64 = 500;

/// The page size of a list request: 0 means [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
pub fn page_size(raw: i32) -> Result<u64, Status> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=500 => Ok(raw.unsigned_abs().into()),
        _ => Err(invalid("page_size", "must be between 0 and 500")),
    }
}

const TOKEN_PREFIX: &str = "p1.";

/// An opaque page token holding `key` (the sort key of the last item of the page).
pub fn page_token(key: &str) -> String {
    let mut out = String::with_capacity(TOKEN_PREFIX.len() + key.len() * 2);
    out.push_str(TOKEN_PREFIX);
    for b in key.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The key of a page token; `None` for the first page; INVALID_ARGUMENT for a token that
/// no list RPC issued.
pub fn page_key(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(foreign_token)?;
    if hex.len() % 2 != 0 {
        return Err(foreign_token());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| foreign_token())?;
    String::from_utf8(bytes).map(Some).map_err(|_| foreign_token())
}

/// Truncates a page fetched with one row more than `size` and returns the token of the
/// next page (the key of the page's last row), empty on the last page.
pub fn next_page_token<T>(rows: &mut Vec<T>, size: u64, key: impl Fn(&T) -> String) -> String {
    if rows.len() as u64 <= size {
        return String::new();
    }
    rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    rows.last().map(|r| page_token(&key(r))).unwrap_or_default()
}

/// The key of a page token holding a number (an offset or a row id): digits only, at most
/// `i64::MAX` (what a database can compare with).
pub fn page_number<N: std::str::FromStr>(token: &str) -> Result<Option<N>, Status> {
    page_key(token)?
        .map(|k| {
            let in_range = !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && k.parse::<i64>().is_ok();
            if in_range {
                k.parse::<N>().map_err(|_| foreign_token())
            } else {
                Err(foreign_token())
            }
        })
        .transpose()
}

/// The key of a page token holding a (time, id) pair, see [`time_id_key`].
pub fn page_time_id(token: &str) -> Result<Option<(i64, String)>, Status> {
    page_key(token)?
        .map(|k| {
            let (t, id) = k.split_once('|').ok_or_else(foreign_token)?;
            Ok((t.parse::<i64>().map_err(|_| foreign_token())?, id.to_owned()))
        })
        .transpose()
}

/// The page key of a row ordered by (time, id).
pub fn time_id_key(time: i64, id: &str) -> String {
    format!("{time}|{id}")
}

/// INVALID_ARGUMENT for a page token this RPC did not issue.
pub fn foreign_token() -> Status {
    invalid("page_token", "not a page token issued by this RPC")
}

/// A downstream failure as this service's answer: UNAVAILABLE when retrying can help,
/// INTERNAL otherwise (the downstream service refusing us is a bug or a misconfiguration).
pub fn downstream(dependency: &str, status: &Status) -> Status {
    if is_transient(status) {
        error::unavailable(dependency, status.message())
    } else {
        tracing::error!(dependency, code = ?status.code(), message = status.message(), "downstream call failed");
        Status::internal(format!("internal error while calling the {dependency}"))
    }
}

pub use crate::backoff::backoff_ms;

/// Whether retrying a failed call can succeed.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::ResourceExhausted
    ) || (status.code() == Code::Unknown && status.message().contains("transport"))
}

/// The authorization service, as the other services ask it.
#[derive(Debug, Clone)]
pub struct Authz {
    client: AuthorizationServiceClient<InternalChannel>,
    identity: ServiceIdentity,
    /// Check answers reused for `clients.authz_cache_ttl_ms` (see [`crate::authz_cache`]).
    cache: Option<Arc<CheckCache>>,
}

/// Name of the authorization service in errors.
const AUTHORIZATION: &str = "authorization service";

impl Authz {
    /// A client of the configured authorization service, calling as `identity`.
    pub fn new(config: &SspmConfig, identity: ServiceIdentity) -> anyhow::Result<Self> {
        let endpoint = config.services.get(ServiceKind::Authorization).endpoint();
        let channel = connect_lazy(&endpoint, &config.clients)?;
        let client = AuthorizationServiceClient::new(channel.clone());
        let ttl = Duration::from_millis(config.clients.authz_cache_ttl_ms);
        let cache = (!ttl.is_zero())
            .then(|| CheckCache::start(ttl, InternalAuthorizationClient::new(channel), identity.clone()));
        Ok(Self {
            client,
            identity,
            cache,
        })
    }

    /// Whether Check answers are being reused now (configured, and subscribed to changes).
    pub fn caching(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.is_active())
    }

    /// The answer under `key`: reused when the cache allows, else from `fetch` (kept unless
    /// a change came in meanwhile).
    async fn cached(
        &self,
        key: (String, i32, String),
        fetch: impl Future<Output = Result<CheckResponse, Status>>,
    ) -> Result<CheckResponse, Status> {
        let Some(cache) = self.cache.as_ref() else {
            return fetch.await;
        };
        if let Some(answer) = cache.get(&key) {
            return Ok(answer);
        }
        let (generation, fetched_at) = (cache.generation(), tokio::time::Instant::now());
        let answer = fetch.await?;
        cache.put(key, generation, fetched_at, answer.clone());
        Ok(answer)
    }

    /// The answer to `req`: reused when allowed, else from the authorization service.
    async fn check(&self, req: CheckRequest) -> Result<CheckResponse, Status> {
        let key = (req.principal_id.clone(), req.action, req.business_unit_id.clone());
        let on_behalf_of = req.principal_id.clone();
        let fetch = async {
            Ok(self
                .client
                .clone()
                .check(self.identity.request(req, Some(&on_behalf_of)))
                .await
                .map_err(|s| downstream(AUTHORIZATION, &s))?
                .into_inner())
        };
        self.cached(key, fetch).await
    }

    /// Whether `principal` may do `action` on `business_unit_id` (empty for global actions);
    /// the allowed business unit's facts, or the status to answer the caller with: NOT_FOUND
    /// for a business unit it may not see, FAILED_PRECONDITION (R6) without Monitoring
    /// Gateway, PERMISSION_DENIED for missing permissions.
    pub async fn require(
        &self,
        principal: &PrincipalId,
        action: Action,
        business_unit_id: &str,
    ) -> Result<Option<BusinessUnit>, Status> {
        let req = CheckRequest {
            principal_id: principal.to_string(),
            action: action.into(),
            business_unit_id: business_unit_id.to_owned(),
        };
        let answer = self.check(req).await?;
        if answer.allowed {
            return Ok(answer.business_unit);
        }
        Err(match answer.deny_reason() {
            DenyReason::NotFound => error::not_found("business unit", business_unit_id),
            DenyReason::MonitoringGatewayDisabled => error::violation(Violation::new(
                Rule::R6MonitoringGateway,
                "business_unit_id",
                "monitoring gateway is not enabled for this business unit; SSPM is not available for it",
            )),
            DenyReason::UnknownPrincipal => {
                error::permission_denied(format!("principal {principal} is not registered with SSPM"), &[])
            }
            DenyReason::MissingPermission | DenyReason::Unspecified => {
                let names: Vec<&str> = answer.missing_permissions().map(permission_name).collect();
                error::permission_denied(answer.message.clone(), &names)
            }
        })
    }

    /// The business units `principal` may see (its own, and a partner's customers) and may
    /// do `action` on, at most `max`: one call per page of 500, not one Check per business
    /// unit.
    pub async fn visible(
        &self,
        principal: &PrincipalId,
        action: Action,
        max: usize,
    ) -> Result<Vec<BusinessUnit>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let req = ListVisibleBusinessUnitsRequest {
                principal_id: principal.to_string(),
                page_size: 500,
                page_token: token,
                action: action.into(),
            };
            let page = self
                .client
                .clone()
                .list_visible_business_units(self.identity.request(req, Some(principal.as_str())))
                .await
                .map_err(|s| downstream(AUTHORIZATION, &s))?
                .into_inner();
            out.extend(page.business_units);
            if page.next_page_token.is_empty() || out.len() >= max {
                out.truncate(max);
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// A business unit's facts as the service sees them (every business unit); `None` when
    /// it does not exist.
    pub async fn business_unit(&self, business_unit_id: &str) -> Result<Option<BusinessUnit>, Status> {
        // Reused like Check answers (the same cache, under a key no Check has: no principal,
        // no action), and dropped with them at every change.
        let key = (String::new(), -1, business_unit_id.to_owned());
        let req = GetBusinessUnitRequest {
            business_unit_id: business_unit_id.to_owned(),
        };
        let fetch = async {
            let found = match self
                .client
                .clone()
                .get_business_unit(self.identity.request(req, None))
                .await
            {
                Ok(r) => r.into_inner().business_unit,
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => return Err(downstream(AUTHORIZATION, &s)),
            };
            Ok(CheckResponse {
                allowed: found.is_some(),
                business_unit: found,
                ..Default::default()
            })
        };
        Ok(self.cached(key, fetch).await?.business_unit)
    }
}

/// The name of a permission as stored and shown: the protobuf name without its prefix, e.g.
/// `PORT_MANAGEMENT_CREATE`. (A match, not the names: a permission added to the protos does
/// not compile until it has its stored name.)
pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Unspecified => "UNSPECIFIED",
        Permission::MonitoringGatewayView => "MONITORING_GATEWAY_VIEW",
        Permission::PortManagementView => "PORT_MANAGEMENT_VIEW",
        Permission::PortManagementCreate => "PORT_MANAGEMENT_CREATE",
        Permission::AccountRepresentative => "ACCOUNT_REPRESENTATIVE",
        Permission::NetworkOperationsDailyLimits => "NETWORK_OPERATIONS_DAILY_LIMITS",
        Permission::NetworkOperationsApprove => "NETWORK_OPERATIONS_APPROVE",
        Permission::EventsReadAll => "EVENTS_READ_ALL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_are_the_proto_names_without_their_prefix() {
        for n in 0..=i32::from(u8::MAX) {
            if let Ok(p) = Permission::try_from(n) {
                assert_eq!(format!("PERMISSION_{}", permission_name(p)), p.as_str_name());
            }
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        // Without jitter: the lower half, doubling, capped.
        let low: Vec<u64> = (1..=9).map(|a| backoff_ms(100, 10_000, a, 0.0)).collect();
        assert_eq!(low, [50, 100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        // With full jitter: the ceiling.
        assert_eq!(backoff_ms(100, 10_000, 3, 1.0), 400);
        assert_eq!(backoff_ms(100, 10_000, 40, 1.0), 10_000);
        // Between: spread over the upper half.
        assert_eq!(backoff_ms(100, 10_000, 3, 0.5), 300);
        for attempt in 0..64 {
            for jitter in [0.0, 0.25, 0.999, 1.0] {
                let d = backoff_ms(100, 10_000, attempt, jitter);
                assert!((50..=10_000).contains(&d), "{attempt} {jitter}: {d}");
            }
        }
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_tokens_are_refused() {
        let t = page_token("1700000000|req-1");
        assert_eq!(page_key(&t).unwrap().as_deref(), Some("1700000000|req-1"));
        assert_eq!(page_key("").unwrap(), None);
        let t = page_token(&time_id_key(17, "req|1"));
        assert_eq!(page_time_id(&t).unwrap(), Some((17, "req|1".to_owned())));
        assert_eq!(page_number::<u64>(&page_token("40")).unwrap(), Some(40));
        assert!(page_number::<u64>(&page_token("x")).is_err());
        for bad in ["abc", "p1.zz", "p1.a", "p1.ff"] {
            assert_eq!(page_key(bad).unwrap_err().code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn enum_filters_are_folded_and_bounded() {
        use sspm_proto::v1::CaseStatus;
        let folded: Vec<CaseStatus> = enum_filter("statuses", &[1, 2, 1, 1]).unwrap();
        assert_eq!(
            folded,
            [CaseStatus::try_from(1).unwrap(), CaseStatus::try_from(2).unwrap()]
        );
        let e = enum_filter::<CaseStatus>("statuses", &vec![1; 40_000]).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("statuses"), "{e:?}");
        let e = enum_filter::<CaseStatus>("statuses", &[1, 99]).unwrap_err();
        assert!(e.message().contains("statuses[1]"), "{e:?}");
        assert!(enum_filter::<CaseStatus>("statuses", &[0]).is_err(), "unspecified");
    }

    #[test]
    fn page_sizes_default_and_are_bounded() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(500).unwrap(), 500);
        assert!(page_size(501).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn timestamps_round_trip_in_microseconds() {
        let ts = timestamp(1_700_000_000_123_456);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_000));
        assert_eq!(micros_of(&ts, "t").unwrap(), 1_700_000_000_123_456);
        let bad = prost_types::Timestamp { seconds: 1, nanos: -1 };
        assert_eq!(micros_of(&bad, "revert_at").unwrap_err().code(), Code::InvalidArgument);
    }
}
