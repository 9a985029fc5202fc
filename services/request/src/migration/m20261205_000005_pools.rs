use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The levels above the business unit (R12 partner pools, R13 cluster capacity;
/// docs/ARCHITECTURE.md, "Rules"): `port_limits` records what each business unit draws on
/// (its cluster and its pool: its partner, or itself), as of its last write, indexed for the
/// sums; `port_capacities` holds one row per cluster and per pool, whose sizes are `NULL`
/// while none is set (unbounded), and which every increase locks before it sums (the lock
/// that makes the check exact across replicas). The cluster of the limits recorded so far is
/// their business unit's latest request's; their pool is unknown until they are next written.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("port_limits")
                .add_column(string_len_null("cluster", 16))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("port_limits")
                .add_column(string_len_null("pool_id", 64))
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("ix_port_limits_cluster", "cluster"),
            ("ix_port_limits_pool", "pool_id"),
        ] {
            m.create_index(Index::create().name(name).table("port_limits").col(col).to_owned())
                .await?;
        }
        m.create_table(
            Table::create()
                .table("port_capacities")
                .if_not_exists()
                .col(string_len("level", 16))
                .col(string_len("target", 64))
                .col(integer_null("concurrent"))
                .col(integer_null("outbound"))
                .col(integer_null("agentless"))
                .col(string_len_null("updated_by", 128))
                .col(big_integer("update_time"))
                .primary_key(Index::create().col("level").col("target"))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_raw(Statement::from_string(
            db.get_database_backend(),
            "UPDATE port_limits SET cluster = (SELECT r.cluster FROM port_change_requests r \
             WHERE r.business_unit_id = port_limits.business_unit_id \
             ORDER BY r.create_time DESC, r.request_id DESC LIMIT 1)",
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("port_capacities").to_owned()).await?;
        for name in ["ix_port_limits_cluster", "ix_port_limits_pool"] {
            m.drop_index(Index::drop().name(name).table("port_limits").to_owned())
                .await?;
        }
        for col in ["pool_id", "cluster"] {
            m.alter_table(Table::alter().table("port_limits").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
