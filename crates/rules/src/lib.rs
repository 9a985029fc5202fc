//! SSPM's domain rules (docs/ARCHITECTURE.md, "Rules" and "The request lifecycle"), pure: no I/O, no tonic, no database, no runtime.
//!
//! - R1 port ranges: [`PortLimit`], [`PortLimits`]
//! - R2, R6, R9 and the shape of a change: [`validate_change`]; R3 at apply time: [`reapply`]
//! - R4 holds by construction: one [`RequestedTargets`] is for one business unit
//! - R5 (one open request) is enforced by the request service's database; the open states
//!   are [`RequestState::is_open`]
//! - R8 daily limits: [`daily`]
//! - provisioned limits (onboarding: R1, R2, no daily limit): [`validate_provisioned`]
//! - R10 cost: [`monthly_cost_change`]
//! - R11 temporary changes: [`validate_temporary`], [`revert`]
//! - R12 partner pools and R13 cluster capacity (sums of limits): [`capacity`]
//! - the lifecycle: [`lifecycle::next`]
//! - a create call's fields parsed and checked, as the handler and the fuzz target do: [`parse_create`]
//!
//! Every violation is a [`Violation`] naming the rule and the field.

pub mod capacity;
pub mod change;
pub mod cost;
pub mod create;
pub mod daily;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod provision;
pub mod revert;
pub mod violation;

pub use change::{
    BusinessUnitFacts, MAX_TEMPORARY_SECONDS, RequestedTargets, Targets, ValidatedChange, reapply, validate_change,
    validate_temporary,
};
pub use cost::{Amount, Price, monthly_cost_change};
pub use create::{CreateCommand, CreateFields, parse_create};
pub use ids::{BusinessUnitId, CaseNumber, ClusterName, InvalidValue, PrincipalId, RequestId, Text};
pub use lifecycle::{Event, RequestState};
pub use limits::{PortKind, PortLimit, PortLimits};
pub use provision::validate_provisioned;
pub use revert::revert;
pub use violation::{Rule, Violation, ViolationClass, Violations};
