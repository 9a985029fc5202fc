//! The system under load: clients of each service over `--connections` HTTP/2 connections,
//! and the bearer tokens of the load tenancy's principals, minted with the configured key
//! (as `sspm token` does).

use std::time::Duration;

use anyhow::Context as _;
use sspm_platform::client::{InternalChannel, connect_lazy};
use sspm_platform::{ServiceKind, SspmConfig, TokenMinter};
use sspm_proto::v1::approval_service_client::ApprovalServiceClient;
use sspm_proto::v1::authorization_service_client::AuthorizationServiceClient;
use sspm_proto::v1::port_request_service_client::PortRequestServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic_health::pb::health_client::HealthClient;

use crate::tenancy;

/// A bearer token, ready to put in the `authorization` header.
pub type Token = AsciiMetadataValue;

/// A request carrying `token`.
pub fn authed<T>(token: &Token, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", token.clone());
    r
}

/// One connection to each service.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The request service (PortRequestService).
    pub request: PortRequestServiceClient<InternalChannel>,
    /// The request service's health (the baseline: a bare RPC through the stack).
    pub health: HealthClient<InternalChannel>,
    /// The authorization service.
    pub authorization: AuthorizationServiceClient<InternalChannel>,
    /// The approval service.
    pub approval: ApprovalServiceClient<InternalChannel>,
}

/// Everything a run or the seed needs to reach the system.
#[derive(Debug, Clone)]
pub struct Target {
    /// One set of clients per connection; worker `i` uses `connections[i % len]`.
    pub connections: Vec<Clients>,
    /// The request service's endpoint (for the report).
    pub endpoint: String,
    minter: TokenMinter,
}

impl Target {
    /// Clients of the services `config` names, over `connections` connections each, with
    /// each call bounded by `timeout`.
    pub fn new(
        config: &SspmConfig,
        endpoint: Option<String>,
        connections: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut clients = config.clients.clone();
        clients.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let request_endpoint = endpoint.unwrap_or_else(|| config.services.get(ServiceKind::Request).endpoint());
        let connect = |e: &str| connect_lazy(e, &clients).with_context(|| format!("endpoint {e}"));
        let mut out = Vec::new();
        for _ in 0..connections.max(1) {
            let request = connect(&request_endpoint)?;
            out.push(Clients {
                request: PortRequestServiceClient::new(request.clone()),
                health: HealthClient::new(request),
                authorization: AuthorizationServiceClient::new(connect(
                    &config.services.get(ServiceKind::Authorization).endpoint(),
                )?),
                approval: ApprovalServiceClient::new(connect(&config.services.get(ServiceKind::Approval).endpoint())?),
            });
        }
        Ok(Self {
            connections: out,
            endpoint: request_endpoint,
            minter: TokenMinter::new(config),
        })
    }

    /// The clients worker `i` uses.
    pub fn clients(&self, i: usize) -> Clients {
        self.connections[i % self.connections.len()].clone()
    }

    /// A token of `principal`, valid for a day.
    pub fn token(&self, principal: &str) -> anyhow::Result<Token> {
        let id = sspm_platform::auth::parse_principal(principal)?;
        let token = self.minter.mint(&id, 86_400);
        Ok(format!("Bearer {token}").parse()?)
    }

    /// The tokens of the first `n` load users.
    pub fn user_tokens(&self, n: usize) -> anyhow::Result<Vec<Token>> {
        (0..n.max(1)).map(|i| self.token(&tenancy::user(i))).collect()
    }
}

/// The name of a gRPC status code as the gRPC specification spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
