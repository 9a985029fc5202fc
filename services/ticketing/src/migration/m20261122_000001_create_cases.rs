use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // `id` is the sequence the case number is formatted from (`00001027`).
        m.create_table(
            Table::create()
                .table("cases")
                .if_not_exists()
                .col(big_pk_auto("id"))
                // Set from `id` in the transaction that inserts the case (NULL until then).
                .col(string_len_null("case_number", 20).unique_key())
                .col(string_len_uniq("external_reference", 64))
                .col(string_len("subject", 255))
                .col(text("description"))
                .col(string_len("business_unit_id", 64))
                .col(string_len("requester", 128))
                .col(string_len("status", 32))
                .col(text_null("resolution"))
                .col(big_integer("create_time"))
                .col(big_integer("update_time"))
                .col(big_integer_null("close_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_cases_business_unit_created")
                .table("cases")
                .col("business_unit_id")
                .col("create_time")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("case_comments")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(big_integer("case_id"))
                .col(string_len("author", 128))
                .col(text("body"))
                .col(big_integer("create_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("case_comments", "case_id")
                        .to("cases", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_comments_case")
                .table("case_comments")
                .col("case_id")
                .col("id")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["case_comments", "cases"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
