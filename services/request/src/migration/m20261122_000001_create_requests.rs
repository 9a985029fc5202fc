use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// States in which a request is open (R5); must match `RequestState::is_open`.
pub const OPEN_STATES: [&str; 3] = ["NEW", "PENDING_INFORMATION", "UNDER_REVIEW"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Times are Unix microseconds (BIGINT): identical on SQLite and PostgreSQL.
        m.create_table(
            Table::create()
                .table("port_limits")
                .if_not_exists()
                .col(string_len("business_unit_id", 64).primary_key())
                .col(integer("concurrent").check(Expr::col("concurrent").between(0, 9999)))
                .col(integer("outbound").check(Expr::col("outbound").between(0, 9999)))
                .col(integer("agentless").check(Expr::col("agentless").between(0, 9999)))
                .col(big_integer("version").default(0))
                .col(big_integer("update_time"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("port_change_requests")
                .if_not_exists()
                .col(string_len("request_id", 64).primary_key())
                .col(string_len("business_unit_id", 64))
                .col(string_len("cluster", 16))
                .col(string_len("requester", 128))
                .col(string_len("state", 32))
                .col(string_len_null("case_number", 20))
                .col(integer("before_concurrent"))
                .col(integer("before_outbound"))
                .col(integer("before_agentless"))
                .col(integer_null("target_concurrent"))
                .col(integer_null("target_outbound"))
                .col(integer_null("target_agentless"))
                .col(big_integer("cost_change_micros"))
                .col(string_len("currency", 3))
                .col(text_null("justification"))
                .col(string_len_null("approval_path", 16))
                .col(string_len_null("decided_by", 128))
                .col(boolean_null("decision_approved"))
                .col(text_null("decision_reason"))
                .col(big_integer_null("decide_time"))
                .col(text_null("failure_reason"))
                .col(big_integer_null("revert_at"))
                .col(big_integer_null("reverted_time"))
                .col(integer_null("reverted_concurrent"))
                .col(integer_null("reverted_outbound"))
                .col(integer_null("reverted_agentless"))
                // The reconciler: when the next step is due, and how often it was tried.
                .col(big_integer_null("next_attempt_at"))
                .col(integer("attempts").default(0))
                .col(big_integer("create_time"))
                .col(big_integer("update_time"))
                .to_owned(),
        )
        .await?;

        // R5: at most one open request per business unit, in the database.
        m.create_index(
            Index::create()
                .name("ux_requests_one_open_per_business_unit")
                .table("port_change_requests")
                .col("business_unit_id")
                .unique()
                .and_where(Expr::col("state").is_in(OPEN_STATES))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_requests_business_unit_created")
                .table("port_change_requests")
                .col("business_unit_id")
                .col("create_time")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_requests_next_attempt")
                .table("port_change_requests")
                .col("next_attempt_at")
                .and_where(Expr::col("next_attempt_at").is_not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_requests_pending_revert")
                .table("port_change_requests")
                .col("revert_at")
                .and_where(
                    Expr::col("revert_at")
                        .is_not_null()
                        .and(Expr::col("reverted_time").is_null()),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("request_history")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string_len("request_id", 64))
                .col(string_len("kind", 16))
                .col(big_integer("time"))
                .col(string_len("actor", 128))
                .col(string_len_null("from_state", 32))
                .col(string_len("to_state", 32))
                .col(text("reason"))
                .foreign_key(
                    ForeignKey::create()
                        .from("request_history", "request_id")
                        .to("port_change_requests", "request_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_history_request")
                .table("request_history")
                .col("request_id")
                .col("id")
                .to_owned(),
        )
        .await?;

        // The outbox: calls to other services decided by a transition, written in the same
        // transaction and carried out (idempotently, with retries) by the reconciler.
        m.create_table(
            Table::create()
                .table("request_effects")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string_len("request_id", 64))
                .col(string_len("kind", 32))
                .col(text("argument"))
                .col(string_len("actor", 128))
                .col(big_integer_null("done_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("request_effects", "request_id")
                        .to("port_change_requests", "request_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_effects_pending")
                .table("request_effects")
                .col("request_id")
                .col("id")
                .and_where(Expr::col("done_time").is_null())
                .to_owned(),
        )
        .await?;
        // Where the subscription to the approval service's decision log resumes.
        m.create_table(
            Table::create()
                .table("decision_cursor")
                .if_not_exists()
                .col(string_len("feed", 32).primary_key())
                .col(big_integer("cursor"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "decision_cursor",
            "request_effects",
            "request_history",
            "port_change_requests",
            "port_limits",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
