//! Shared service plumbing for SSPM: configuration, telemetry, the gRPC server and client
//! builders, bearer tokens, database connection and migrations, and the error model.

pub mod app;
pub mod audit;
pub mod auth;
pub mod authz_cache;
pub mod backoff;
pub mod client;
pub mod config;
pub mod conn;
pub mod db;
pub mod error;
pub mod group_commit;
pub mod identity;
pub mod lite;
pub mod metrics;
pub mod retention;
pub mod rpc;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use app::{Draining, ServiceApp};
pub use config::{ServiceKind, SspmConfig};
pub use identity::{Principal, PrincipalKind, ServiceIdentity, TokenMinter, TokenVerifier, caller};
pub use metrics::Metrics;
pub use server::ServiceServer;
