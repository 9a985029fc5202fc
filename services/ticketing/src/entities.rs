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
        /// `NEW`, `WORKING`, `WAITING_ON_CUSTOMER`, `ESCALATED` or `CLOSED`.
        pub status: String,
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
        /// `COMMENT`, `STATUS` or `CLOSE`.
        pub kind: String,
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
}
