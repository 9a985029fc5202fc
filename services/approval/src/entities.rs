//! sea-orm entities of the approval service's tables (see [`crate::migration`]).

/// `daily_limits`: limits set by Network Operations.
pub mod daily_limit {
    use sea_orm::entity::prelude::*;

    /// One limit.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "daily_limits")]
    pub struct Model {
        /// What it limits.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: Scope,
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

    /// What a limit (or a ledger total) is about, stored by the names of
    /// `sspm.v1.LimitScope` without their prefix. Ordered as limits are listed: the default,
    /// then clusters, then business units.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum Scope {
        /// Every cluster without a limit of its own (target empty). Never a ledger scope:
        /// a default limit counts against the cluster's total.
        #[sea_orm(string_value = "DEFAULT")]
        Default,
        /// One cluster (target: its name).
        #[sea_orm(string_value = "CLUSTER")]
        Cluster,
        /// One business unit (target: its id).
        #[sea_orm(string_value = "BUSINESS_UNIT")]
        BusinessUnit,
    }

    impl std::fmt::Display for Scope {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.to_value())
        }
    }

    impl From<Scope> for sspm_proto::v1::LimitScope {
        fn from(s: Scope) -> Self {
            match s {
                Scope::Default => Self::Default,
                Scope::Cluster => Self::Cluster,
                Scope::BusinessUnit => Self::BusinessUnit,
            }
        }
    }

    impl From<Scope> for sspm_rules::daily::LimitScope {
        fn from(s: Scope) -> Self {
            match s {
                Scope::Default => Self::Default,
                Scope::Cluster => Self::Cluster,
                Scope::BusinessUnit => Self::BusinessUnit,
            }
        }
    }
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

    pub use super::daily_limit::Scope;

    /// One running total.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_totals")]
    pub struct Model {
        /// Ledger day.
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: i64,
        /// `Cluster` or `BusinessUnit`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: Scope,
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
        /// Where its review is.
        pub state: State,
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

    /// Where a task's review is, stored by the names of `sspm.v1.ApprovalTaskState` without
    /// their prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum State {
        /// Waiting for an approver.
        #[sea_orm(string_value = "PENDING")]
        Pending,
        /// Approved.
        #[sea_orm(string_value = "APPROVED")]
        Approved,
        /// Rejected.
        #[sea_orm(string_value = "REJECTED")]
        Rejected,
        /// Withdrawn: the request was cancelled before a decision.
        #[sea_orm(string_value = "WITHDRAWN")]
        Withdrawn,
    }

    impl From<State> for sspm_proto::v1::ApprovalTaskState {
        fn from(s: State) -> Self {
            match s {
                State::Pending => Self::Pending,
                State::Approved => Self::Approved,
                State::Rejected => Self::Rejected,
                State::Withdrawn => Self::Withdrawn,
            }
        }
    }

    impl TryFrom<sspm_proto::v1::ApprovalTaskState> for State {
        /// `APPROVAL_TASK_STATE_UNSPECIFIED` names no state.
        type Error = sspm_proto::v1::ApprovalTaskState;

        fn try_from(s: sspm_proto::v1::ApprovalTaskState) -> Result<Self, Self::Error> {
            use sspm_proto::v1::ApprovalTaskState as Pb;
            Ok(match s {
                Pb::Unspecified => return Err(s),
                Pb::Pending => State::Pending,
                Pb::Approved => State::Approved,
                Pb::Rejected => State::Rejected,
                Pb::Withdrawn => State::Withdrawn,
            })
        }
    }
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

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    use super::task::State;

    /// Every stored task state is an API state of the same name, and back.
    #[test]
    fn task_states_match_the_api() {
        for s in State::iter() {
            let api = sspm_proto::v1::ApprovalTaskState::from(s);
            assert_eq!(api.as_str_name(), format!("APPROVAL_TASK_STATE_{}", s.to_value()));
            assert_eq!(State::try_from(api), Ok(s));
        }
        assert!(State::try_from(sspm_proto::v1::ApprovalTaskState::Unspecified).is_err());
    }

    /// Every stored limit scope is an API scope of the same name, and the rules' scope of
    /// the same meaning; listed in the API's order.
    #[test]
    fn limit_scopes_match_the_api_and_the_rules() {
        use super::daily_limit::Scope;
        use sspm_rules::daily::LimitScope;
        let scopes: Vec<Scope> = Scope::iter().collect();
        for s in &scopes {
            let api = sspm_proto::v1::LimitScope::from(*s);
            assert_eq!(api.as_str_name(), format!("LIMIT_SCOPE_{}", s.to_value()));
        }
        let rules: Vec<LimitScope> = scopes.iter().map(|s| LimitScope::from(*s)).collect();
        assert_eq!(
            rules,
            [LimitScope::Default, LimitScope::Cluster, LimitScope::BusinessUnit]
        );
        let mut sorted = scopes.clone();
        sorted.sort();
        assert_eq!(
            sorted, scopes,
            "limits list the default, then clusters, then business units"
        );
    }
}
