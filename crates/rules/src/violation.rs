//! Typed rule violations: every one names the rule and the field it concerns.

use std::fmt;

/// The rule a violation breaks (docs/ARCHITECTURE.md, "Rules"), plus plain malformed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Malformed input that no rule names: an empty id, an unknown enum value, …
    Input,
    /// R1: concurrent ports at most 9,999; no limit negative.
    R1PortRange,
    /// R2: with Personal Connection, outbound and agentless never exceed concurrent;
    /// without it only concurrent can change.
    R2PersonalConnection,
    /// R3: a request is atomic; it can no longer be applied as a whole.
    R3Atomic,
    /// R4: a request targets exactly one business unit.
    R4SingleBusinessUnit,
    /// R5: at most one open request per business unit.
    R5OneOpenRequest,
    /// R6: Monitoring Gateway must be enabled.
    R6MonitoringGateway,
    /// R9: a request states target values and changes something.
    R9EmptyChange,
    /// R11: temporary changes (revert time in the future, increases only).
    R11Temporary,
    /// R12: a partner's business units together stay within the partner's pool.
    R12PartnerPool,
    /// R13: the business units of a cluster together stay within its capacity.
    R13ClusterCapacity,
    /// The request lifecycle (docs/ARCHITECTURE.md, "The request lifecycle") does not allow this transition.
    Lifecycle,
}

/// How a violation is reported to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationClass {
    /// The request itself is wrong (gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The request is well formed but the system's state forbids it (FAILED_PRECONDITION).
    FailedPrecondition,
}

impl Rule {
    /// Short code, e.g. "R2".
    pub fn code(self) -> &'static str {
        match self {
            Rule::Input => "INPUT",
            Rule::R1PortRange => "R1",
            Rule::R2PersonalConnection => "R2",
            Rule::R3Atomic => "R3",
            Rule::R4SingleBusinessUnit => "R4",
            Rule::R5OneOpenRequest => "R5",
            Rule::R6MonitoringGateway => "R6",
            Rule::R9EmptyChange => "R9",
            Rule::R11Temporary => "R11",
            Rule::R12PartnerPool => "R12",
            Rule::R13ClusterCapacity => "R13",
            Rule::Lifecycle => "LIFECYCLE",
        }
    }

    /// Machine-readable reason, used as google.rpc.ErrorInfo.reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rule::Input => "INVALID_INPUT",
            Rule::R1PortRange => "R1_PORT_RANGE",
            Rule::R2PersonalConnection => "R2_PERSONAL_CONNECTION",
            Rule::R3Atomic => "R3_NOT_APPLICABLE",
            Rule::R4SingleBusinessUnit => "R4_SINGLE_BUSINESS_UNIT",
            Rule::R5OneOpenRequest => "R5_OPEN_REQUEST_EXISTS",
            Rule::R6MonitoringGateway => "R6_MONITORING_GATEWAY_DISABLED",
            Rule::R9EmptyChange => "R9_NO_CHANGE",
            Rule::R11Temporary => "R11_INVALID_REVERT",
            Rule::R12PartnerPool => "R12_PARTNER_POOL_EXCEEDED",
            Rule::R13ClusterCapacity => "R13_CLUSTER_CAPACITY_EXCEEDED",
            Rule::Lifecycle => "ILLEGAL_TRANSITION",
        }
    }

    /// INVALID_ARGUMENT for malformed input and R1/R9/R11/R4; FAILED_PRECONDITION for rules
    /// that depend on the stored state (R2, R3, R5, R6, R12, R13, the lifecycle).
    pub fn class(self) -> ViolationClass {
        match self {
            Rule::Input | Rule::R1PortRange | Rule::R4SingleBusinessUnit | Rule::R9EmptyChange | Rule::R11Temporary => {
                ViolationClass::InvalidArgument
            }
            Rule::R2PersonalConnection
            | Rule::R3Atomic
            | Rule::R5OneOpenRequest
            | Rule::R6MonitoringGateway
            | Rule::R12PartnerPool
            | Rule::R13ClusterCapacity
            | Rule::Lifecycle => ViolationClass::FailedPrecondition,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One broken rule, on one field (a proto field path such as `targets.concurrent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The offending field, as a path in the request message; empty when no single field is
    /// to blame.
    pub field: String,
    /// What is wrong, for humans: lowercase, no trailing punctuation.
    pub message: String,
    /// What a program may match on besides the rule and the field (ErrorInfo metadata):
    /// the pool or cluster of R12/R13 and its headroom.
    pub metadata: Vec<(&'static str, String)>,
}

impl Violation {
    /// A violation of `rule` on `field`.
    pub fn new(rule: Rule, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            rule,
            field: field.into(),
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// With one more metadata entry.
    #[must_use]
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.rule, self.message)
        } else {
            write!(f, "{}: {}: {}", self.rule, self.field, self.message)
        }
    }
}

/// One or more violations found together (all field errors of a request at once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// Wraps a non-empty list. Panics on an empty one: that is a programming error.
    pub fn new(list: Vec<Violation>) -> Self {
        assert!(!list.is_empty(), "violations must not be empty");
        Self(list)
    }

    /// The violations, in the order they were found.
    pub fn as_slice(&self) -> &[Violation] {
        &self.0
    }

    /// How the whole set is reported: INVALID_ARGUMENT if any violation is one.
    pub fn class(&self) -> ViolationClass {
        if self.0.iter().any(|v| v.rule.class() == ViolationClass::InvalidArgument) {
            ViolationClass::InvalidArgument
        } else {
            ViolationClass::FailedPrecondition
        }
    }

    /// The first violation: the one to headline.
    pub fn first(&self) -> &Violation {
        &self.0[0]
    }

    /// True when some violation breaks `rule`.
    pub fn breaks(&self, rule: Rule) -> bool {
        self.0.iter().any(|v| v.rule == rule)
    }
}

impl From<Violation> for Violations {
    fn from(v: Violation) -> Self {
        Self(vec![v])
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Collects violations, then fails if there were any.
#[derive(Debug, Default)]
pub(crate) struct Collector(Vec<Violation>);

impl Collector {
    pub(crate) fn push(&mut self, v: Violation) {
        self.0.push(v);
    }

    pub(crate) fn finish(self) -> Result<(), Violations> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Violations(self.0))
        }
    }

    /// The collected violations; call only after pushing at least one.
    pub(crate) fn into_violations(self) -> Violations {
        Violations::new(self.0)
    }

    pub(crate) fn has_invalid_argument(&self) -> bool {
        self.0.iter().any(|v| v.rule.class() == ViolationClass::InvalidArgument)
    }
}
