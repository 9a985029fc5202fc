//! sea-orm entities of the authorization service's tables (see [`crate::migration`]).

/// `business_units`: a business unit with its cluster, partner and feature flags.
pub mod business_unit {
    use sea_orm::entity::prelude::*;

    /// One business unit.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "business_units")]
    pub struct Model {
        /// Its id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub business_unit_id: String,
        /// Its name.
        pub display_name: String,
        /// Its cluster.
        pub cluster: String,
        /// The partner that manages it.
        pub partner_id: Option<String>,
        /// R6.
        pub monitoring_gateway_enabled: bool,
        /// R2.
        pub personal_connection_enabled: bool,
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

/// `principals`: users and services known to SSPM.
pub mod principal {
    use sea_orm::entity::prelude::*;

    /// One principal.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "principals")]
    pub struct Model {
        /// Its id (the `sub` of its tokens).
        #[sea_orm(primary_key, auto_increment = false)]
        pub principal_id: String,
        /// Its name.
        pub display_name: String,
        /// The business unit it belongs to; `None` for staff.
        pub home_business_unit_id: Option<String>,
        /// `USER` or `SERVICE`.
        pub kind: String,
        /// Unix microseconds.
        pub create_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `permission_grants`: one permission of one principal on one business unit ('' = global).
pub mod grant {
    use sea_orm::entity::prelude::*;

    /// One grant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "permission_grants")]
    pub struct Model {
        /// Who holds it.
        #[sea_orm(primary_key, auto_increment = false)]
        pub principal_id: String,
        /// On which business unit; empty for a global permission.
        #[sea_orm(primary_key, auto_increment = false)]
        pub business_unit_id: String,
        /// The permission's name without the `PERMISSION_` prefix.
        #[sea_orm(primary_key, auto_increment = false)]
        pub permission: String,
        /// Who granted it.
        pub granted_by: String,
        /// Unix microseconds.
        pub grant_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
