use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Comments get an optional idempotency key, unique per case, so a retried AddCaseComment
/// (after a timeout or a crash of the caller) adds its comment once.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("case_comments")
                .add_column(string_len_null("comment_key", 128))
                .to_owned(),
        )
        .await?;
        // NULL keys (comments without one) never collide.
        m.create_index(
            Index::create()
                .name("ux_comments_case_key")
                .table("case_comments")
                .col("case_id")
                .col("comment_key")
                .unique()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ux_comments_case_key")
                .table("case_comments")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("case_comments")
                .drop_column("comment_key")
                .to_owned(),
        )
        .await
    }
}
