use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// One row counting the changes to authorization facts (business units, principals,
/// grants): every transaction that changes them adds one in the same transaction, so every
/// replica of the authorization service sees another replica's change by reading this
/// number (README, "Authorization answers are reused"). A counter updated in place, not the
/// largest id of a table: ids handed out by a sequence can commit out of order, a counter's
/// row lock cannot.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("authorization_generation")
                .if_not_exists()
                .col(integer("id").primary_key())
                .col(big_integer("generation"))
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table("authorization_generation")
                .columns(["id", "generation"])
                .values_panic([1.into(), 0i64.into()])
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("authorization_generation").to_owned())
            .await
    }
}
