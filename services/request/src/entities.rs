//! sea-orm entities of the request service's tables (see [`crate::migration`]).

/// `port_limits`: the current limits of each business unit.
pub mod limits {
    use sea_orm::entity::prelude::*;

    /// One business unit's limits.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "port_limits")]
    pub struct Model {
        /// The business unit.
        #[sea_orm(primary_key, auto_increment = false)]
        pub business_unit_id: String,
        /// Concurrent ports.
        pub concurrent: i32,
        /// Outbound ports.
        pub outbound: i32,
        /// Agentless ports.
        pub agentless: i32,
        /// Bumped on every change (optimistic concurrency).
        pub version: i64,
        /// Unix microseconds.
        pub update_time: i64,
        /// The cluster it draws on (R13), as of its last write.
        pub cluster: Option<String>,
        /// The pool it draws on (R12): its partner's, or its own when it has no partner; as
        /// of its last write.
        pub pool_id: Option<String>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `port_change_requests`: the requests.
pub mod request {
    use sea_orm::entity::prelude::*;
    use sspm_rules::RequestState;

    /// One request.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "port_change_requests")]
    pub struct Model {
        /// Client-chosen id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        /// Business unit.
        pub business_unit_id: String,
        /// Its cluster.
        pub cluster: String,
        /// Requester.
        pub requester: String,
        /// Lifecycle state.
        pub state: State,
        /// Support case.
        pub case_number: Option<String>,
        /// Limits before.
        pub before_concurrent: i32,
        /// Limits before.
        pub before_outbound: i32,
        /// Limits before.
        pub before_agentless: i32,
        /// Targets.
        pub target_concurrent: Option<i32>,
        /// Targets.
        pub target_outbound: Option<i32>,
        /// Targets.
        pub target_agentless: Option<i32>,
        /// R10, micro-units of `currency`.
        pub cost_change_micros: i64,
        /// ISO 4217.
        pub currency: String,
        /// Justification.
        pub justification: Option<String>,
        /// How it is decided, once known.
        pub approval_path: Option<ApprovalPath>,
        /// Who decided (`system` for automatic approvals).
        pub decided_by: Option<String>,
        /// Approved or rejected.
        pub decision_approved: Option<bool>,
        /// Why.
        pub decision_reason: Option<String>,
        /// Unix microseconds.
        pub decide_time: Option<i64>,
        /// Why it FAILED.
        pub failure_reason: Option<String>,
        /// R11: when to revert, Unix microseconds.
        pub revert_at: Option<i64>,
        /// When it was reverted.
        pub reverted_time: Option<i64>,
        /// Limits after the revert.
        pub reverted_concurrent: Option<i32>,
        /// Limits after the revert.
        pub reverted_outbound: Option<i32>,
        /// Limits after the revert.
        pub reverted_agentless: Option<i32>,
        /// When the reconciler should look at it next; `None` when nothing is due.
        pub next_attempt_at: Option<i64>,
        /// Failed attempts since the last success (for backoff).
        pub attempts: i32,
        /// Unix microseconds.
        pub create_time: i64,
        /// Unix microseconds.
        pub update_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// A request's state as stored: [`RequestState`] (which lives in the pure rules crate,
    /// without sea-orm) by the names of `sspm.v1.PortChangeRequestState` without their prefix.
    /// Also the type of the history's `from_state`/`to_state`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
    pub enum State {
        /// [`RequestState::New`].
        #[sea_orm(string_value = "NEW")]
        New,
        /// [`RequestState::PendingInformation`].
        #[sea_orm(string_value = "PENDING_INFORMATION")]
        PendingInformation,
        /// [`RequestState::UnderReview`].
        #[sea_orm(string_value = "UNDER_REVIEW")]
        UnderReview,
        /// [`RequestState::Approved`].
        #[sea_orm(string_value = "APPROVED")]
        Approved,
        /// [`RequestState::Rejected`].
        #[sea_orm(string_value = "REJECTED")]
        Rejected,
        /// [`RequestState::Cancelled`].
        #[sea_orm(string_value = "CANCELLED")]
        Cancelled,
        /// [`RequestState::Failed`].
        #[sea_orm(string_value = "FAILED")]
        Failed,
    }

    impl From<RequestState> for State {
        fn from(s: RequestState) -> Self {
            match s {
                RequestState::New => State::New,
                RequestState::PendingInformation => State::PendingInformation,
                RequestState::UnderReview => State::UnderReview,
                RequestState::Approved => State::Approved,
                RequestState::Rejected => State::Rejected,
                RequestState::Cancelled => State::Cancelled,
                RequestState::Failed => State::Failed,
            }
        }
    }

    impl From<State> for RequestState {
        fn from(s: State) -> Self {
            match s {
                State::New => RequestState::New,
                State::PendingInformation => RequestState::PendingInformation,
                State::UnderReview => RequestState::UnderReview,
                State::Approved => RequestState::Approved,
                State::Rejected => RequestState::Rejected,
                State::Cancelled => RequestState::Cancelled,
                State::Failed => RequestState::Failed,
            }
        }
    }

    /// How a request was decided, stored by the names of `sspm.v1.ApprovalPath` without
    /// their prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum ApprovalPath {
        /// By SSPM: the increase fit the daily limit, or needed no check (R8).
        #[sea_orm(string_value = "AUTOMATIC")]
        Automatic,
        /// By a human approver.
        #[sea_orm(string_value = "REVIEW")]
        Review,
    }

    impl std::fmt::Display for ApprovalPath {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.to_value())
        }
    }

    impl From<ApprovalPath> for sspm_proto::v1::ApprovalPath {
        fn from(p: ApprovalPath) -> Self {
            match p {
                ApprovalPath::Automatic => Self::Automatic,
                ApprovalPath::Review => Self::Review,
            }
        }
    }
}

/// `events`: the event log (docs/EVENTS.md). A request's history is its rows with a `kind`.
pub mod event {
    use sea_orm::entity::prelude::*;

    pub use super::request::State;

    /// One event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        /// Insertion order.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The business unit (the CloudEvents `subject`).
        pub business_unit_id: String,
        /// The business unit's events are numbered 1, 2, ... with no gap.
        pub sequence: i64,
        /// Place in the feed; `None` until the sequencer places it (PostgreSQL).
        pub position: Option<i64>,
        /// CloudEvents `type` (`sspm.v1.request.approved`, ...).
        #[sea_orm(column_name = "type")]
        pub event_type: String,
        /// The request it is about, if any.
        pub request_id: Option<String>,
        /// For a history entry, its kind; `None` for other events.
        pub kind: Option<Kind>,
        /// Unix microseconds.
        pub time: i64,
        /// Who.
        pub actor: String,
        /// State before.
        pub from_state: Option<State>,
        /// State after.
        pub to_state: Option<State>,
        /// Why.
        pub reason: String,
        /// The payload, protobuf-encoded (`sspm.v1.PortLimitsChanged`, `RequestEvent`,
        /// `ApprovalTaskEvent`, by `event_type`).
        pub payload: Option<Vec<u8>>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// The kind of a history entry, stored by the names of `sspm.v1.HistoryEventKind`
    /// without their prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum Kind {
        /// A change of state.
        #[sea_orm(string_value = "TRANSITION")]
        Transition,
        /// A temporary change reverted (R11); the state stays.
        #[sea_orm(string_value = "REVERTED")]
        Reverted,
        /// A note; the state stays.
        #[sea_orm(string_value = "NOTE")]
        Note,
    }

    impl From<Kind> for sspm_proto::v1::HistoryEventKind {
        fn from(k: Kind) -> Self {
            match k {
                Kind::Transition => Self::Transition,
                Kind::Reverted => Self::Reverted,
                Kind::Note => Self::Note,
            }
        }
    }
}

/// `request_effects`: the outbox of calls to other services.
pub mod effect {
    use sea_orm::entity::prelude::*;

    /// One call to make.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "request_effects")]
    pub struct Model {
        /// Order.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The request.
        pub request_id: String,
        /// What to do.
        pub kind: Kind,
        /// Its argument (a comment, a resolution, a reason).
        pub argument: String,
        /// On whose behalf.
        pub actor: String,
        /// When it was carried out.
        pub done_time: Option<i64>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// What an effect does (`crate::outbox::Effect` is the kind with its argument decoded).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
    pub enum Kind {
        /// Comment on the case.
        #[sea_orm(string_value = "COMMENT")]
        Comment,
        /// Set the case's status.
        #[sea_orm(string_value = "CASE_STATUS")]
        CaseStatus,
        /// Close the case.
        #[sea_orm(string_value = "CLOSE_CASE")]
        CloseCase,
        /// Submit the request for review.
        #[sea_orm(string_value = "SUBMIT_REVIEW")]
        SubmitReview,
        /// Withdraw it from review.
        #[sea_orm(string_value = "WITHDRAW_REVIEW")]
        WithdrawReview,
        /// Release its daily-limit reservation.
        #[sea_orm(string_value = "RELEASE")]
        Release,
    }
}

/// `port_capacities`: the size of each partner pool (R12) and cluster (R13); a row without
/// a size is an unbounded level, kept as the lock an increase takes.
pub mod capacity {
    use sea_orm::entity::prelude::*;

    /// One pool or cluster.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "port_capacities")]
    pub struct Model {
        /// A pool or a cluster.
        #[sea_orm(primary_key, auto_increment = false)]
        pub level: Level,
        /// The partner's business unit, or the cluster's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub target: String,
        /// Concurrent ports; `None` while no size is set.
        pub concurrent: Option<i32>,
        /// Outbound ports.
        pub outbound: Option<i32>,
        /// Agentless ports.
        pub agentless: Option<i32>,
        /// Who set the size.
        pub updated_by: Option<String>,
        /// Unix microseconds (0 for a row only ever locked).
        pub update_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// What a row sizes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum Level {
        /// A partner's pool (R12).
        #[sea_orm(string_value = "POOL")]
        Pool,
        /// A cluster (R13).
        #[sea_orm(string_value = "CLUSTER")]
        Cluster,
    }

    impl From<Level> for sspm_rules::capacity::Level {
        fn from(l: Level) -> Self {
            match l {
                Level::Pool => Self::Pool,
                Level::Cluster => Self::Cluster,
            }
        }
    }
}

/// `decision_cursor`: where the decision feed resumes.
pub mod cursor {
    use sea_orm::entity::prelude::*;

    /// One feed's position.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "decision_cursor")]
    pub struct Model {
        /// Feed name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub feed: String,
        /// Last processed cursor.
        pub cursor: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
