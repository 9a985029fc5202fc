use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("business_units")
                .if_not_exists()
                .col(string_len("business_unit_id", 64).primary_key())
                .col(string_len("display_name", 255))
                .col(string_len("cluster", 16))
                .col(string_len_null("partner_id", 64))
                .col(boolean("monitoring_gateway_enabled"))
                .col(boolean("personal_connection_enabled"))
                .col(big_integer("create_time"))
                .col(big_integer("update_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("business_units", "partner_id")
                        .to("business_units", "business_unit_id"),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_business_units_partner")
                .table("business_units")
                .col("partner_id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("principals")
                .if_not_exists()
                .col(string_len("principal_id", 128).primary_key())
                .col(string_len("display_name", 255))
                .col(string_len_null("home_business_unit_id", 64))
                .col(string_len("kind", 16))
                .col(big_integer("create_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("principals", "home_business_unit_id")
                        .to("business_units", "business_unit_id"),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("permission_grants")
                .if_not_exists()
                .col(string_len("principal_id", 128))
                .col(string_len("business_unit_id", 64).default(""))
                .col(string_len("permission", 48))
                .col(string_len("granted_by", 128))
                .col(big_integer("grant_time"))
                .primary_key(
                    Index::create()
                        .col("principal_id")
                        .col("business_unit_id")
                        .col("permission"),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from("permission_grants", "principal_id")
                        .to("principals", "principal_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_grants_business_unit")
                .table("permission_grants")
                .col("business_unit_id")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["permission_grants", "principals", "business_units"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
