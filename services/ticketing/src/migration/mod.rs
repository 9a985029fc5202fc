//! The ticketing service's schema: cases with unique Salesforce-style numbers and unique
//! external references (idempotent open), and their comments; with the Salesforce backend,
//! the org's record ids and the outbox of writes the org has not taken yet.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_cases;
mod m20261122_000002_comment_keys;
mod m20261203_000003_org_mirror;

/// Applies the ticketing service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_cases::Migration),
            Box::new(m20261122_000002_comment_keys::Migration),
            // The audit trail, shared by every service.
            Box::new(sspm_platform::audit::Migration),
            Box::new(m20261203_000003_org_mirror::Migration),
            Box::new(sspm_platform::audit::RetentionMigration),
        ]
    }
}
