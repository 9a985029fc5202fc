//! The context a call is served in: who, on whose behalf, and which trace; the audit
//! trail and the clients of other services read it.

use std::future::Future;

use crate::identity::{Principal, PrincipalKind};

/// Metadata key naming the end user an internal call is made for (audit and logs).
pub const ON_BEHALF_OF: &str = "x-sspm-on-behalf-of";

/// The actor of changes no caller asked for.
pub const SYSTEM: &str = "system";

/// Who is calling and from which trace, for the events the call records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// The authenticated principal.
    pub actor: String,
    /// The user an SSPM service acts for (`x-sspm-on-behalf-of`, trusted from services only).
    pub on_behalf_of: Option<String>,
    /// The W3C trace id of the call, or empty.
    pub trace_id: String,
}

tokio::task_local! {
    static CALL: CallContext;
}

impl CallContext {
    /// The context of a call by `principal` with these headers.
    pub fn of(principal: &Principal, headers: &http::HeaderMap) -> Self {
        let on_behalf_of = (principal.kind == PrincipalKind::Service)
            .then(|| headers.get(ON_BEHALF_OF).and_then(|v| v.to_str().ok()))
            .flatten()
            .filter(|v| *v == SYSTEM || sspm_rules::PrincipalId::parse(v).is_ok())
            .map(str::to_owned);
        Self {
            actor: principal.id.to_string(),
            on_behalf_of,
            trace_id: trace_id_of(headers),
        }
    }

    /// Runs `call` with this context.
    pub fn scope<F: Future>(self, call: F) -> impl Future<Output = F::Output> {
        CALL.scope(self, call)
    }

    /// The context of the call being served, if any.
    pub fn current() -> Option<Self> {
        CALL.try_with(Clone::clone).ok()
    }
}

/// The trace id of the current span as OpenTelemetry sees it, else the caller's
/// `traceparent` header, else empty.
fn trace_id_of(headers: &http::HeaderMap) -> String {
    span_trace_id()
        .or_else(|| {
            let parent = headers.get("traceparent")?.to_str().ok()?;
            let id = parent.split('-').nth(1)?;
            (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
                .then(|| id.to_ascii_lowercase())
        })
        .unwrap_or_default()
}

/// The trace id of the current span, if OpenTelemetry gave it one.
pub fn span_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
