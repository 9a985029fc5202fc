use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A case number belongs to one request (RELIABILITY.md, "Lost data"): a
/// ticketing service that lost its cases and hands out a number again cannot get it linked
/// to a second request. A database that already links one number to several requests is
/// refused with the numbers named, for an operator to resolve: no index could be built on it.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let shared = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT case_number FROM port_change_requests WHERE case_number IS NOT NULL \
                 GROUP BY case_number HAVING COUNT(*) > 1 ORDER BY case_number LIMIT 20",
            ))
            .await?;
        if !shared.is_empty() {
            let numbers: Vec<String> = shared
                .iter()
                .filter_map(|r| r.try_get::<String>("", "case_number").ok())
                .collect();
            return Err(DbErr::Custom(format!(
                "case numbers linked to several requests: {}; the ticketing service handed them out twice \
                 (it lost its cases): resolve them before upgrading (RELIABILITY.md, \"Lost data\")",
                numbers.join(", ")
            )));
        }
        m.create_index(
            Index::create()
                .name("ux_requests_case_number")
                .table("port_change_requests")
                .col("case_number")
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ux_requests_case_number")
                .table("port_change_requests")
                .to_owned(),
        )
        .await
    }
}
