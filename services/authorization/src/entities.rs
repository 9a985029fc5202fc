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
        /// A person or a program.
        pub kind: Kind,
        /// Unix microseconds.
        pub create_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// A person or a program, stored by the names of `sspm.v1.PrincipalKind` without their
    /// prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    pub enum Kind {
        /// A person.
        #[sea_orm(string_value = "USER")]
        User,
        /// A program (a platform service calling with its own credentials).
        #[sea_orm(string_value = "SERVICE")]
        Service,
    }

    impl From<Kind> for sspm_proto::v1::PrincipalKind {
        fn from(k: Kind) -> Self {
            match k {
                Kind::User => Self::User,
                Kind::Service => Self::Service,
            }
        }
    }

    impl TryFrom<sspm_proto::v1::PrincipalKind> for Kind {
        /// `PRINCIPAL_KIND_UNSPECIFIED` names no kind.
        type Error = sspm_proto::v1::PrincipalKind;

        fn try_from(k: sspm_proto::v1::PrincipalKind) -> Result<Self, Self::Error> {
            use sspm_proto::v1::PrincipalKind as Pb;
            match k {
                Pb::Unspecified => Err(k),
                Pb::User => Ok(Kind::User),
                Pb::Service => Ok(Kind::Service),
            }
        }
    }
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
        /// The permission.
        #[sea_orm(primary_key, auto_increment = false)]
        pub permission: Permission,
        /// Who granted it.
        pub granted_by: String,
        /// Unix microseconds.
        pub grant_time: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// A permission, stored by the names of `sspm.v1.Permission` without their prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(48))")]
    pub enum Permission {
        /// See the Monitoring Gateway.
        #[sea_orm(string_value = "MONITORING_GATEWAY_VIEW")]
        MonitoringGatewayView,
        /// See port limits and requests.
        #[sea_orm(string_value = "PORT_MANAGEMENT_VIEW")]
        PortManagementView,
        /// Request port changes.
        #[sea_orm(string_value = "PORT_MANAGEMENT_CREATE")]
        PortManagementCreate,
        /// Account representative (global).
        #[sea_orm(string_value = "ACCOUNT_REPRESENTATIVE")]
        AccountRepresentative,
        /// Set daily limits (global).
        #[sea_orm(string_value = "NETWORK_OPERATIONS_DAILY_LIMITS")]
        NetworkOperationsDailyLimits,
        /// Decide approvals (global).
        #[sea_orm(string_value = "NETWORK_OPERATIONS_APPROVE")]
        NetworkOperationsApprove,
        /// Read every business unit's events (global).
        #[sea_orm(string_value = "EVENTS_READ_ALL")]
        EventsReadAll,
    }

    impl std::fmt::Display for Permission {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.to_value())
        }
    }

    impl From<Permission> for sspm_proto::v1::Permission {
        fn from(p: Permission) -> Self {
            match p {
                Permission::MonitoringGatewayView => Self::MonitoringGatewayView,
                Permission::PortManagementView => Self::PortManagementView,
                Permission::PortManagementCreate => Self::PortManagementCreate,
                Permission::AccountRepresentative => Self::AccountRepresentative,
                Permission::NetworkOperationsDailyLimits => Self::NetworkOperationsDailyLimits,
                Permission::NetworkOperationsApprove => Self::NetworkOperationsApprove,
                Permission::EventsReadAll => Self::EventsReadAll,
            }
        }
    }

    impl TryFrom<sspm_proto::v1::Permission> for Permission {
        /// `PERMISSION_UNSPECIFIED` names no permission.
        type Error = sspm_proto::v1::Permission;

        fn try_from(p: sspm_proto::v1::Permission) -> Result<Self, Self::Error> {
            use sspm_proto::v1::Permission as Pb;
            Ok(match p {
                Pb::Unspecified => return Err(p),
                Pb::MonitoringGatewayView => Permission::MonitoringGatewayView,
                Pb::PortManagementView => Permission::PortManagementView,
                Pb::PortManagementCreate => Permission::PortManagementCreate,
                Pb::AccountRepresentative => Permission::AccountRepresentative,
                Pb::NetworkOperationsDailyLimits => Permission::NetworkOperationsDailyLimits,
                Pb::NetworkOperationsApprove => Permission::NetworkOperationsApprove,
                Pb::EventsReadAll => Permission::EventsReadAll,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    use super::principal::Kind;

    /// Every stored principal kind is an API kind of the same name, and back.
    #[test]
    fn principal_kinds_match_the_api() {
        for k in Kind::iter() {
            let api = sspm_proto::v1::PrincipalKind::from(k);
            assert_eq!(api.as_str_name(), format!("PRINCIPAL_KIND_{}", k.to_value()));
            assert_eq!(Kind::try_from(api), Ok(k));
        }
        assert!(Kind::try_from(sspm_proto::v1::PrincipalKind::Unspecified).is_err());
    }

    /// Every stored permission is an API permission of the same name, and back.
    #[test]
    fn permissions_match_the_api() {
        use super::grant::Permission;
        for p in Permission::iter() {
            let api = sspm_proto::v1::Permission::from(p);
            assert_eq!(api.as_str_name(), format!("PERMISSION_{}", p.to_value()));
            assert_eq!(Permission::try_from(api), Ok(p));
            assert_eq!(sspm_platform::rpc::permission_name(api), p.to_value());
        }
        let every = (1..=i32::from(u8::MAX)).filter(|n| sspm_proto::v1::Permission::try_from(*n).is_ok());
        assert_eq!(every.count(), Permission::iter().count());
        assert!(Permission::try_from(sspm_proto::v1::Permission::Unspecified).is_err());
    }
}
