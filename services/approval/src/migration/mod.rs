//! The approval service's schema: daily limits, the ledger of automatic approvals (one
//! reservation per request, running totals per day and scope), approval tasks (one per
//! request) and the durable decision log whose auto-increment id is the feed cursor.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_approval;
mod m20261123_000002_release_before_evaluation;

/// Applies the approval service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_approval::Migration),
            // The audit trail, shared by every service.
            Box::new(sspm_platform::audit::Migration),
            Box::new(m20261123_000002_release_before_evaluation::Migration),
            Box::new(sspm_platform::audit::RetentionMigration),
        ]
    }
}
