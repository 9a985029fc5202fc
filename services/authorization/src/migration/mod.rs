//! The authorization service's schema: business units, principals and permission grants.
//! A grant is unique per (principal, business unit, permission); global permissions use an
//! empty business unit so the unique key needs no NULL handling. One counter row numbers the
//! changes to all of them, for the other replicas.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_authorization;
mod m20261204_000002_change_generation;

/// Applies the authorization service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_authorization::Migration),
            // The audit trail, shared by every service.
            Box::new(sspm_platform::audit::Migration),
            Box::new(m20261204_000002_change_generation::Migration),
            Box::new(sspm_platform::audit::RetentionMigration),
        ]
    }
}
