//! sea-orm entities of the ticketing service's tables (see [`crate::migration`]).

/// `cases`: support cases.
pub mod case {
    use sea_orm::entity::prelude::*;

    /// One case.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "cases")]
    pub struct Model {
        /// The sequence the case number is formatted from.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Salesforce-style number; set in the inserting transaction.
        pub case_number: Option<String>,
        /// The caller's unique reference.
        pub external_reference: String,
        /// Subject.
        pub subject: String,
        /// Description.
        pub description: String,
        /// Business unit concerned.
        pub business_unit_id: String,
        /// Who the case is for.
        pub requester: String,
        /// Its status.
        pub status: Status,
        /// How it was resolved.
        pub resolution: Option<String>,
        /// Unix microseconds.
        pub create_time: i64,
        /// Unix microseconds.
        pub update_time: i64,
        /// Unix microseconds.
        pub close_time: Option<i64>,
        /// The org's record id (the Salesforce backend); `None` for a case kept only here.
        pub org_id: Option<String>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// A case's status, stored by the names of `sspm.v1.CaseStatus` without their prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
    pub enum Status {
        /// Opened.
        #[sea_orm(string_value = "NEW")]
        New,
        /// Being worked on.
        #[sea_orm(string_value = "WORKING")]
        Working,
        /// Waiting for the customer (a justification).
        #[sea_orm(string_value = "WAITING_ON_CUSTOMER")]
        WaitingOnCustomer,
        /// With a human approver.
        #[sea_orm(string_value = "ESCALATED")]
        Escalated,
        /// Resolved.
        #[sea_orm(string_value = "CLOSED")]
        Closed,
    }

    impl From<Status> for sspm_proto::v1::CaseStatus {
        fn from(s: Status) -> Self {
            match s {
                Status::New => Self::New,
                Status::Working => Self::Working,
                Status::WaitingOnCustomer => Self::WaitingOnCustomer,
                Status::Escalated => Self::Escalated,
                Status::Closed => Self::Closed,
            }
        }
    }

    impl TryFrom<sspm_proto::v1::CaseStatus> for Status {
        /// `CASE_STATUS_UNSPECIFIED` names no status.
        type Error = sspm_proto::v1::CaseStatus;

        fn try_from(s: sspm_proto::v1::CaseStatus) -> Result<Self, Self::Error> {
            use sspm_proto::v1::CaseStatus as Pb;
            Ok(match s {
                Pb::Unspecified => return Err(s),
                Pb::New => Status::New,
                Pb::Working => Status::Working,
                Pb::WaitingOnCustomer => Status::WaitingOnCustomer,
                Pb::Escalated => Status::Escalated,
                Pb::Closed => Status::Closed,
            })
        }
    }
}

/// `case_comments`: comments on cases.
pub mod comment {
    use sea_orm::entity::prelude::*;

    /// One comment.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "case_comments")]
    pub struct Model {
        /// Order of comments.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The case.
        pub case_id: i64,
        /// Who wrote it.
        pub author: String,
        /// The text.
        pub body: String,
        /// Unix microseconds.
        pub create_time: i64,
        /// The caller's idempotency key, unique per case.
        pub comment_key: Option<String>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `org_writes`: writes to the org not carried out yet (the Salesforce backend's outbox).
pub mod org_write {
    use sea_orm::entity::prelude::*;

    /// One pending write.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "org_writes")]
    pub struct Model {
        /// Order of writes.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The case.
        pub case_id: i64,
        /// What to send.
        pub kind: Kind,
        /// The comment as the org gets it, the SSPM status name, or the resolution.
        pub argument: String,
        /// Failed attempts so far.
        pub attempts: i32,
        /// Unix microseconds: not before.
        pub next_attempt_time: i64,
        /// Unix microseconds: a worker holds it until then.
        pub lease_until: Option<i64>,
        /// The last attempt at a comment may have added it.
        pub maybe_done: bool,
        /// Why the last attempt failed.
        pub last_error: Option<String>,
        /// Unix microseconds: the org refused it for good.
        pub failed_time: Option<i64>,
        /// Unix microseconds.
        pub create_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// What the org is sent, in order per case.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum Kind {
        /// A comment, as the org gets it.
        #[sea_orm(string_value = "COMMENT")]
        Comment,
        /// A status (the argument is a stored [`super::case::Status`]).
        #[sea_orm(string_value = "STATUS")]
        Status,
        /// Close with the resolution.
        #[sea_orm(string_value = "CLOSE")]
        Close,
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    use super::case::Status;

    /// Every stored status is an API status of the same name, and back.
    #[test]
    fn case_statuses_match_the_api() {
        for s in Status::iter() {
            let api = sspm_proto::v1::CaseStatus::from(s);
            assert_eq!(api.as_str_name(), format!("CASE_STATUS_{}", s.to_value()));
            assert_eq!(Status::try_from(api), Ok(s));
        }
        assert!(Status::try_from(sspm_proto::v1::CaseStatus::Unspecified).is_err());
    }
}
