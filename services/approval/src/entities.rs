//! sea-orm entities of the approval service's tables (see [`crate::migration`]).

/// `daily_limits`: limits set by Network Operations.
pub mod daily_limit {
    use sea_orm::entity::prelude::*;

    /// One limit.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "daily_limits")]
    pub struct Model {
        /// `DEFAULT`, `CLUSTER` or `BUSINESS_UNIT`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        /// The cluster or business unit; empty for the default.
        #[sea_orm(primary_key, auto_increment = false)]
        pub target: String,
        /// Ports per day.
        pub max_daily_increase: i32,
        /// Who set it.
        pub updated_by: String,
        /// Unix microseconds.
        pub update_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `ledger_reservations`: one automatically approved increase per request.
pub mod reservation {
    use sea_orm::entity::prelude::*;

    /// One reservation.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_reservations")]
    pub struct Model {
        /// The port change request.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        /// Ledger day (days since 1970-01-01).
        pub day: i64,
        /// Cluster.
        pub cluster: String,
        /// Business unit.
        pub business_unit_id: String,
        /// Ports reserved.
        pub increase: i32,
        /// Unix microseconds.
        pub create_time: i64,
        /// Unix microseconds; set when released.
        pub release_time: Option<i64>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `ledger_totals`: the day's reserved ports per cluster and per business unit.
pub mod total {
    use sea_orm::entity::prelude::*;

    /// One running total.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_totals")]
    pub struct Model {
        /// Ledger day.
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: i64,
        /// `CLUSTER` or `BUSINESS_UNIT`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        /// The cluster or business unit.
        #[sea_orm(primary_key, auto_increment = false)]
        pub target: String,
        /// Ports reserved that day.
        pub used: i32,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `approval_tasks`: requests under human review.
pub mod task {
    use sea_orm::entity::prelude::*;

    /// One task.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "approval_tasks")]
    pub struct Model {
        /// `task-<request id>`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        /// The port change request.
        pub request_id: String,
        /// Business unit.
        pub business_unit_id: String,
        /// Cluster.
        pub cluster: String,
        /// Requester.
        pub requester: String,
        /// Case number.
        pub case_number: String,
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
        /// Justification.
        pub justification: String,
        /// Monthly cost change in micro-units.
        pub cost_change_micros: i64,
        /// ISO 4217.
        pub currency: String,
        /// `PENDING`, `APPROVED`, `REJECTED` or `WITHDRAWN`.
        pub state: String,
        /// Approver.
        pub decided_by: Option<String>,
        /// Why.
        pub decision_reason: Option<String>,
        /// Unix microseconds.
        pub create_time: i64,
        /// Unix microseconds.
        pub decide_time: Option<i64>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `decision_events`: the durable, ordered log of decisions.
pub mod decision {
    use sea_orm::entity::prelude::*;

    /// One decision.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "decision_events")]
    pub struct Model {
        /// Position in the log.
        #[sea_orm(primary_key)]
        pub cursor: i64,
        /// The task.
        pub task_id: String,
        /// The request.
        pub request_id: String,
        /// Approved or rejected.
        pub approved: bool,
        /// Approver.
        pub decided_by: String,
        /// Why.
        pub reason: String,
        /// Unix microseconds.
        pub decide_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
