use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // scope: DEFAULT (target ''), CLUSTER (target = cluster), BUSINESS_UNIT (target = id).
        m.create_table(
            Table::create()
                .table("daily_limits")
                .if_not_exists()
                .col(string_len("scope", 16))
                .col(string_len("target", 64).default(""))
                .col(integer("max_daily_increase").check(Expr::col("max_daily_increase").between(0, 9999)))
                .col(string_len("updated_by", 128))
                .col(big_integer("update_time"))
                .primary_key(Index::create().col("scope").col("target"))
                .to_owned(),
        )
        .await?;

        // One reservation per request: evaluating twice never counts an increase twice.
        m.create_table(
            Table::create()
                .table("ledger_reservations")
                .if_not_exists()
                .col(string_len("request_id", 64).primary_key())
                .col(big_integer("day"))
                .col(string_len("cluster", 16))
                .col(string_len("business_unit_id", 64))
                .col(integer("increase").check(Expr::col("increase").gt(0)))
                .col(big_integer("create_time"))
                .col(big_integer_null("release_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_reservations_day_cluster")
                .table("ledger_reservations")
                .col("day")
                .col("cluster")
                .to_owned(),
        )
        .await?;

        // Running totals per (day, scope, target), updated with a guarded UPDATE
        // (`used + n <= max`) so concurrent evaluations on any replica cannot overrun.
        m.create_table(
            Table::create()
                .table("ledger_totals")
                .if_not_exists()
                .col(big_integer("day"))
                .col(string_len("scope", 16))
                .col(string_len("target", 64))
                .col(integer("used").default(0).check(Expr::col("used").gte(0)))
                .primary_key(Index::create().col("day").col("scope").col("target"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("approval_tasks")
                .if_not_exists()
                .col(string_len("task_id", 80).primary_key())
                .col(string_len_uniq("request_id", 64))
                .col(string_len("business_unit_id", 64))
                .col(string_len("cluster", 16))
                .col(string_len("requester", 128))
                .col(string_len("case_number", 20))
                .col(integer("before_concurrent"))
                .col(integer("before_outbound"))
                .col(integer("before_agentless"))
                .col(integer_null("target_concurrent"))
                .col(integer_null("target_outbound"))
                .col(integer_null("target_agentless"))
                .col(text("justification"))
                .col(big_integer("cost_change_micros"))
                .col(string_len("currency", 3))
                .col(string_len("state", 16))
                .col(string_len_null("decided_by", 128))
                .col(text_null("decision_reason"))
                .col(big_integer("create_time"))
                .col(big_integer_null("decide_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_tasks_state_created")
                .table("approval_tasks")
                .col("state")
                .col("create_time")
                .to_owned(),
        )
        .await?;

        // The decision log: `cursor` orders it; one decision per task.
        m.create_table(
            Table::create()
                .table("decision_events")
                .if_not_exists()
                .col(big_pk_auto("cursor"))
                .col(string_len_uniq("task_id", 80))
                .col(string_len("request_id", 64))
                .col(boolean("approved"))
                .col(string_len("decided_by", 128))
                .col(text("reason"))
                .col(big_integer("decide_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("decision_events", "task_id")
                        .to("approval_tasks", "task_id"),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "decision_events",
            "approval_tasks",
            "ledger_totals",
            "ledger_reservations",
            "daily_limits",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
