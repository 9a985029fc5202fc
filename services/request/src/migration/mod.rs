//! The request service's schema: port limits per business unit, change requests, the event
//! log (which holds their history), the feed cursors, and the partner pools' and clusters'
//! sizes (R12, R13). R5 (one open request per business unit) and the
//! idempotency key (`request_id`) are constraints, so they hold with any number of replicas.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_requests;
mod m20261122_000002_index_state;
mod m20261203_000003_unique_case_number;
mod m20261205_000004_events;
mod m20261205_000005_pools;

/// Applies the request service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_requests::Migration),
            Box::new(m20261122_000002_index_state::Migration),
            // The audit trail, shared by every service.
            Box::new(sspm_platform::audit::Migration),
            Box::new(m20261203_000003_unique_case_number::Migration),
            Box::new(m20261205_000004_events::Migration),
            Box::new(sspm_platform::audit::RetentionMigration),
            Box::new(m20261205_000005_pools::Migration),
        ]
    }
}
