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
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `port_change_requests`: the requests.
pub mod request {
    use sea_orm::entity::prelude::*;

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
        /// Lifecycle state (`RequestState::as_str`).
        pub state: String,
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
        /// `AUTOMATIC` or `REVIEW`.
        pub approval_path: Option<String>,
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
}

/// `events`: the event log (docs/EVENTS.md). A request's history is its rows with a `kind`.
pub mod event {
    use sea_orm::entity::prelude::*;

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
        /// For a history entry: `TRANSITION`, `REVERTED` or `NOTE`; `None` otherwise.
        pub kind: Option<String>,
        /// Unix microseconds.
        pub time: i64,
        /// Who.
        pub actor: String,
        /// State before.
        pub from_state: Option<String>,
        /// State after.
        pub to_state: Option<String>,
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
        /// What to do (see `crate::workflow::Effect`).
        pub kind: String,
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
