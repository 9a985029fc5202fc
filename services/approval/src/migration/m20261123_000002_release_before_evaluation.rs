//! A release may arrive before the evaluation it releases (a request cancelled while it was
//! being evaluated). It then leaves a released reservation of 0 ports under the request's
//! id, so that the late evaluation finds it and reserves nothing: the check on `increase`
//! becomes `>= 0`.

use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLE: &str = "ledger_reservations";
const COLUMNS: &str = "request_id, day, cluster, business_unit_id, increase, create_time, release_time";

fn reservations(name: &str, min_increase: i32) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .col(string_len("request_id", 64).primary_key())
        .col(big_integer("day"))
        .col(string_len("cluster", 16))
        .col(string_len("business_unit_id", 64))
        .col(integer("increase").check(Expr::col("increase").gte(min_increase)))
        .col(big_integer("create_time"))
        .col(big_integer_null("release_time"))
        .to_owned()
}

/// Rebuilds the table with the check `increase >= min_increase`.
async fn recheck(m: &SchemaManager<'_>, min_increase: i32) -> Result<(), DbErr> {
    let db = m.get_connection();
    match m.get_database_backend() {
        DatabaseBackend::Postgres => {
            db.execute_unprepared(&format!(
                "ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {TABLE}_increase_check, \
                 ADD CONSTRAINT {TABLE}_increase_check CHECK (increase >= {min_increase})"
            ))
            .await?;
        }
        _ => {
            // SQLite cannot alter a check: copy into a new table (the documented procedure).
            let new = format!("{TABLE}_new");
            m.create_table(reservations(&new, min_increase)).await?;
            db.execute_unprepared(&format!("INSERT INTO {new} ({COLUMNS}) SELECT {COLUMNS} FROM {TABLE}"))
                .await?;
            m.drop_table(Table::drop().table(TABLE).to_owned()).await?;
            m.rename_table(Table::rename().table(Alias::new(new), TABLE).to_owned())
                .await?;
            m.create_index(
                Index::create()
                    .name("ix_reservations_day_cluster")
                    .table(TABLE)
                    .col("day")
                    .col("cluster")
                    .to_owned(),
            )
            .await?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        recheck(m, 0).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared(&format!("DELETE FROM {TABLE} WHERE increase = 0"))
            .await?;
        recheck(m, 1).await
    }
}
