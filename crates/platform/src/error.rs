//! Mapping of rule violations and service errors to gRPC statuses with rich details
//! (google.rpc `BadRequest`, `PreconditionFailure`, `ErrorInfo`), as docs/ARCHITECTURE.md,
//! "API conventions", says.

use std::collections::HashMap;

use sea_orm::DbErr;
use sspm_rules::{Violation, ViolationClass, Violations};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::db::{DbErrorKind, classify};

/// `ErrorInfo.domain` of every SSPM error.
pub const ERROR_DOMAIN: &str = "sspm.v1";

/// INVALID_ARGUMENT with a `BadRequest` field violation per violation, or
/// FAILED_PRECONDITION with a `PreconditionFailure` (type = the rule, subject = the field);
/// both with an `ErrorInfo` naming the first violation's rule and field.
pub fn violations(v: &Violations) -> Status {
    let first = v.first();
    let mut details = ErrorDetails::new();
    let mut metadata = HashMap::from([
        ("rule".to_owned(), first.rule.code().to_owned()),
        ("field".to_owned(), first.field.clone()),
    ]);
    metadata.extend(first.metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    details.set_error_info(first.rule.reason(), ERROR_DOMAIN, metadata);
    let code = match v.class() {
        ViolationClass::InvalidArgument => {
            for x in v.as_slice() {
                details.add_bad_request_violation(x.field.clone(), format!("{}: {}", x.rule.code(), x.message));
            }
            Code::InvalidArgument
        }
        ViolationClass::FailedPrecondition => {
            for x in v.as_slice() {
                details.add_precondition_failure_violation(x.rule.code(), x.field.clone(), x.message.clone());
            }
            Code::FailedPrecondition
        }
    };
    Status::with_error_details(code, v.to_string(), details)
}

/// [`violations`] of a single violation.
pub fn violation(v: Violation) -> Status {
    violations(&Violations::from(v))
}

/// The `ErrorInfo` reason of a status SSPM made (empty when it has none): what a per-item
/// result of a batch call carries in place of the status itself.
pub fn reason_of(status: &Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// NOT_FOUND for an unknown id, or one the caller may not see (never reveal which).
pub fn not_found(what: &str, id: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "NOT_FOUND",
        ERROR_DOMAIN,
        HashMap::from([("resource".to_owned(), what.to_owned())]),
    );
    let shown = sspm_rules::ids::quoted(id);
    let name = if shown.len() == id.len() + 2 {
        id
    } else {
        shown.as_str()
    };
    details.set_resource_info(what, name, "", format!("no {what} {shown} that you may see"));
    Status::with_error_details(Code::NotFound, format!("{what} {shown} not found"), details)
}

/// PERMISSION_DENIED, naming the missing permissions.
pub fn permission_denied(message: impl Into<String>, missing: &[&str]) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "PERMISSION_DENIED",
        ERROR_DOMAIN,
        HashMap::from([("missing_permissions".to_owned(), missing.join(","))]),
    );
    Status::with_error_details(Code::PermissionDenied, message, details)
}

/// PERMISSION_DENIED: `caller` is not among the callers of `rpc` in the caller table
/// (README, "Who may call what"), whatever its permissions.
pub fn caller_not_allowed(rpc: &str, caller: &str, message: String) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "CALLER_NOT_ALLOWED",
        ERROR_DOMAIN,
        HashMap::from([
            ("rpc".to_owned(), rpc.to_owned()),
            ("caller".to_owned(), caller.to_owned()),
        ]),
    );
    Status::with_error_details(Code::PermissionDenied, message, details)
}

/// UNAVAILABLE: a dependency (another service, the database) cannot be reached; retrying
/// the same call later can succeed.
pub fn unavailable(dependency: &str, message: impl std::fmt::Display) -> Status {
    retry_later(
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
        ("dependency", dependency.to_owned()),
        std::time::Duration::from_secs(1),
        format!("{dependency} is unavailable: {message}"),
    )
}

/// UNAVAILABLE: this server has `max_in_flight` calls under way already; the call is shed at
/// once rather than queued until everything times out. Retrying shortly (with backoff,
/// or on another replica) can succeed.
pub fn overloaded(max_in_flight: usize) -> Status {
    retry_later(
        Code::Unavailable,
        "OVERLOADED",
        ("max_in_flight", max_in_flight.to_string()),
        std::time::Duration::from_millis(200),
        format!("the server is at capacity ({max_in_flight} calls in flight): retry shortly"),
    )
}

/// RESOURCE_EXHAUSTED: `principal` made more calls than its rate limit allows; the same
/// call can succeed after `wait`.
pub fn rate_limited(principal: &str, per_second: u32, wait: std::time::Duration) -> Status {
    // Round up to whole milliseconds: a retry at the advertised time must pass.
    let wait = std::time::Duration::from_millis(u64::try_from(wait.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX));
    retry_later(
        Code::ResourceExhausted,
        "RATE_LIMITED",
        ("limit_per_second", per_second.to_string()),
        wait,
        format!(
            "{principal} is over its rate limit of {per_second} calls per second: retry in {} ms",
            wait.as_millis()
        ),
    )
}

/// RESOURCE_EXHAUSTED: `principal` already has `max` calls under way; one can be made as
/// soon as one of those ends.
pub fn too_many_in_flight(principal: &str, max: usize) -> Status {
    retry_later(
        Code::ResourceExhausted,
        "TOO_MANY_IN_FLIGHT",
        ("per_principal_max_in_flight", max.to_string()),
        std::time::Duration::from_millis(100),
        format!("{principal} already has {max} calls under way: wait for one to end"),
    )
}

/// RESOURCE_EXHAUSTED: a watch stream beyond the bound configured as `key` (`max`).
pub fn watch_limit(key: &str, max: usize, message: String) -> Status {
    retry_later(
        Code::ResourceExhausted,
        "TOO_MANY_WATCH_STREAMS",
        (key, max.to_string()),
        std::time::Duration::from_secs(1),
        message,
    )
}

/// OUT_OF_RANGE: a feed cursor from before what is kept (`oldest`: where the caller can
/// resume, accepting the loss, or `0` for the oldest kept).
pub fn cursor_expired(cursor: i64, oldest: i64) -> Status {
    with_reason(
        Code::OutOfRange,
        "CURSOR_EXPIRED",
        ("oldest_cursor", oldest.to_string()),
        None,
        format!(
            "events after cursor {cursor} were pruned (events.retention_days); the oldest kept is at cursor {oldest}: \
             resume from \"0\" to read from there"
        ),
    )
}

/// DEADLINE_EXCEEDED: a call's request message did not arrive within `timeout` of its
/// headers.
pub fn request_message_timeout(timeout: std::time::Duration) -> Status {
    with_reason(
        Code::DeadlineExceeded,
        "REQUEST_MESSAGE_TIMEOUT",
        ("timeout_ms", timeout.as_millis().to_string()),
        None,
        format!(
            "the request message did not arrive within {} ms of the call's headers",
            timeout.as_millis()
        ),
    )
}

/// RESOURCE_EXHAUSTED: a request message larger than `max` bytes.
pub fn request_too_large(max: usize) -> Status {
    with_reason(
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        ("max_request_bytes", max.to_string()),
        None,
        format!("the request message is larger than {max} bytes"),
    )
}

/// `code` with an `ErrorInfo` (`reason`, one metadata entry) and a `RetryInfo` delay.
fn retry_later(code: Code, reason: &str, entry: (&str, String), delay: std::time::Duration, message: String) -> Status {
    with_reason(code, reason, entry, Some(delay), message)
}

/// `code` with an `ErrorInfo` (`reason`, one metadata entry) and, when given, a
/// `RetryInfo` delay.
fn with_reason(
    code: Code,
    reason: &str,
    (key, value): (&str, String),
    delay: Option<std::time::Duration>,
    message: String,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::from([(key.to_owned(), value)]));
    if delay.is_some() {
        details.set_retry_info(delay);
    }
    Status::with_error_details(code, message, details)
}

/// The INTERNAL statuses tonic answers before a handler runs, when the request itself is
/// malformed: bytes that are not the method's protobuf message, a frame cut short, an invalid
/// compression flag, no message at all. They are the caller's mistake, so callers get
/// INVALID_ARGUMENT (gRPC's own table says INTERNAL; ours never blames the server for bad
/// input). `None` for every other status, including the services' own INTERNAL errors.
pub fn malformed_request(status: &Status) -> Option<Status> {
    const TONIC_DECODE_ERRORS: [&str; 4] = [
        "failed to decode Protobuf message",
        "Unexpected EOF decoding stream",
        "protocol error: received message with",
        "Missing request message",
    ];
    if status.code() != Code::Internal || !TONIC_DECODE_ERRORS.iter().any(|p| status.message().starts_with(p)) {
        return None;
    }
    let mut details = ErrorDetails::new();
    details.set_error_info("MALFORMED_REQUEST", ERROR_DOMAIN, HashMap::new());
    Some(Status::with_error_details(
        Code::InvalidArgument,
        format!(
            "the request is not a well-formed gRPC message of this method: {}",
            status.message()
        ),
        details,
    ))
}

/// INTERNAL: logs the error with its cause chain once, returns nothing of it to the caller.
pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> Status {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(context, error = %chain, "internal error");
    Status::internal(format!("internal error while {context}"))
}

/// A database error as a status: UNAVAILABLE when the database is down, ABORTED when the
/// transaction lost a race (retry), INTERNAL otherwise. Unique violations that mean
/// something to the caller must be translated by the service before calling this.
pub fn database(context: &str, err: &DbErr) -> Status {
    match classify(err) {
        DbErrorKind::Unavailable => unavailable("database", "cannot reach the database"),
        DbErrorKind::Conflict => Status::aborted(format!("concurrent update while {context}; retry")),
        DbErrorKind::UniqueViolation | DbErrorKind::ForeignKeyViolation | DbErrorKind::Other => internal(context, err),
    }
}

/// [`database`] as a closure for `map_err`.
pub fn db(context: &'static str) -> impl Fn(DbErr) -> Status {
    move |e| database(context, &e)
}

#[cfg(test)]
mod tests {
    use sspm_rules::{Rule, Violation};

    use super::*;

    /// Sends the status through the HTTP/2 trailers encoding a client decodes.
    fn over_the_wire(s: Status) -> Status {
        let response = s.into_http::<()>();
        Status::from_header_map(response.headers()).expect("status headers")
    }

    #[test]
    fn invalid_arguments_carry_bad_request_and_error_info() {
        let v = Violations::new(vec![
            Violation::new(
                Rule::R1PortRange,
                "targets.concurrent",
                "10000 exceeds the maximum of 9999 ports",
            ),
            Violation::new(Rule::R1PortRange, "targets.outbound", "-1 is negative"),
        ]);
        let s = over_the_wire(violations(&v));
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        let fields: Vec<_> = d
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["targets.concurrent", "targets.outbound"]);
        let info = d.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("R1_PORT_RANGE", ERROR_DOMAIN)
        );
        assert_eq!(info.metadata["field"], "targets.concurrent");
    }

    #[test]
    fn rule_violations_of_state_are_failed_preconditions() {
        let s = over_the_wire(violation(Violation::new(
            Rule::R2PersonalConnection,
            "targets.concurrent",
            "with personal connection, outbound ports (80) may not exceed concurrent ports (70)",
        )));
        assert_eq!(s.code(), Code::FailedPrecondition);
        let d = s.get_error_details();
        let p = &d.precondition_failure().unwrap().violations[0];
        assert_eq!((p.r#type.as_str(), p.subject.as_str()), ("R2", "targets.concurrent"));
        assert_eq!(d.error_info().unwrap().metadata["rule"], "R2");
        assert!(d.bad_request().is_none());
    }

    #[test]
    fn not_found_and_permission_denied_have_reasons() {
        let s = over_the_wire(not_found("business unit", "bu-9"));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "NOT_FOUND");
        let s = over_the_wire(permission_denied("missing permission", &["PORT_MANAGEMENT_CREATE"]));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            s.get_error_details().error_info().unwrap().metadata["missing_permissions"],
            "PORT_MANAGEMENT_CREATE"
        );
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let err = std::io::Error::other("password=hunter2 at db.internal");
        let s = internal("loading limits", &err);
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("hunter2"));
    }
}
