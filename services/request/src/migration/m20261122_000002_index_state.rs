use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The business figures (`sspm_requests{state, approval_path}`) count requests by state and
/// approval path at every scrape: an index the count can be answered from, not a table scan.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("ix_requests_state_path")
                .table("port_change_requests")
                .col("state")
                .col("approval_path")
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_requests_state_path")
                .table("port_change_requests")
                .to_owned(),
        )
        .await
    }
}
