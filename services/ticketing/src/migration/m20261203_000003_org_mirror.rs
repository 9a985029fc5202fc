use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// With the Salesforce backend, a case is the org's: it gets the org's record id, and the
/// writes the org has not taken yet wait in `org_writes` (the outbox), in order per case.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // NULL for cases kept only here (the local backend).
        m.alter_table(
            Table::alter()
                .table("cases")
                .add_column(string_len_null("org_id", 18))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_cases_org_id")
                .table("cases")
                .col("org_id")
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("org_writes")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(big_integer("case_id"))
                // COMMENT (the body as the org gets it), STATUS (an SSPM status name, mapped
                // through ticketing.salesforce.statuses when sent) or CLOSE (the resolution).
                .col(string_len("kind", 16))
                .col(text("argument"))
                .col(integer("attempts").default(0))
                .col(big_integer("next_attempt_time"))
                // A worker holds the write until then (one push at a time, across replicas).
                .col(big_integer_null("lease_until"))
                // A comment whose answer was lost: look for it before posting it again.
                .col(boolean("maybe_done").default(false))
                .col(text_null("last_error"))
                // The org refused it for good; later writes of the case go on.
                .col(big_integer_null("failed_time"))
                .col(big_integer("create_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("org_writes", "case_id")
                        .to("cases", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_org_writes_pending")
                .table("org_writes")
                .col("failed_time")
                .col("id")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("org_writes").if_exists().to_owned())
            .await?;
        m.drop_index(Index::drop().name("ux_cases_org_id").table("cases").to_owned())
            .await?;
        m.alter_table(Table::alter().table("cases").drop_column("org_id").to_owned())
            .await
    }
}
