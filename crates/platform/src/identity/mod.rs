//! Who is calling: the principal of a call, the tokens that prove it, the services' own
//! keys, the context a call runs in (who, on whose behalf, which trace), and the table of
//! which callers may call which RPC (README, "Identity").
//!
//! A leaf of the platform: it depends on configuration, error mapping, certificates (a
//! private provider's CA) and the backoff arithmetic only, and the admission layer, the
//! audit trail, the clients and the handlers depend on it.
//!
//! Three kinds of token are accepted:
//! - **user tokens from the identity provider**, signed with an asymmetric key it publishes
//!   (a JWKS from a file or an OIDC issuer), naming the user in a configured claim;
//! - **service tokens**, each signed by one SSPM service with its own Ed25519 key, naming
//!   that service (`kid` and `sub` are `svc-<service>`): only that service's public key
//!   verifies them, so holding one service's key lets nobody act as another service or
//!   as a user;
//! - **development user tokens** (HS256 with `auth.signing_key`), in the dev profile only.

pub mod callers;
mod context;
mod provider;
mod service_keys;
mod tokens;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sspm_rules::PrincipalId;
use tonic::Status;

use crate::config::ServiceKind;

pub use context::{CallContext, ON_BEHALF_OF, SYSTEM, span_trace_id};
pub use provider::ProviderKeys;
pub use service_keys::{ServiceKeys, dev_service_key_pair};
pub use tokens::{ServiceIdentity, TokenError, TokenMinter, TokenVerifier};

/// Kind of caller a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    User,
    /// An SSPM service.
    Service,
}

/// The authenticated caller of an RPC, put into the request's extensions by the admission
/// layer (the `auth` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal id: the user, or `svc-<service>`.
    pub id: PrincipalId,
    /// User or service.
    pub kind: PrincipalKind,
    /// Which SSPM service, for a service token.
    service: Option<ServiceKind>,
    /// The verified bearer token.
    token: Arc<str>,
}

impl Principal {
    /// The raw token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SSPM service a service token was signed by; `None` for a user.
    pub fn service(&self) -> Option<ServiceKind> {
        self.service
    }

    /// Whether the caller is an SSPM service.
    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }
}

/// The principal id of an SSPM service: `svc-<name>`.
pub fn service_principal(kind: ServiceKind) -> PrincipalId {
    PrincipalId::parse(&format!("svc-{}", kind.name())).unwrap_or_else(|_| unreachable!("a valid id"))
}

/// The SSPM service named by a principal id or key id `svc-<name>`.
pub fn service_named(id: &str) -> Option<ServiceKind> {
    let name = id.strip_prefix("svc-")?;
    ServiceKind::ALL.into_iter().find(|k| k.name() == name)
}

/// Validates a principal id given on a command line or in config.
pub fn parse_principal(raw: &str) -> anyhow::Result<PrincipalId> {
    PrincipalId::parse(raw).map_err(|e| anyhow::anyhow!("invalid principal: {e}"))
}

/// The caller of a request, as authenticated by the admission layer; UNAUTHENTICATED if
/// absent (a service mounted without the layer).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated principal"))
}
