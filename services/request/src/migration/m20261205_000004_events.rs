use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The event log (docs/EVENTS.md): `request_history` becomes `events`, which holds every
/// history entry (as the events `sspm.v1.request.*`) and the events that are not history
/// entries (`port_limits.changed`, `approval_task.*`), each numbered per business unit
/// (`sequence`, gap-free) and, once committed, in the feed (`position`). The entries
/// recorded so far keep their ids and order: their sequence is their rank in their
/// business unit, their position their id.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("events")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string_len("business_unit_id", 64))
                .col(big_integer("sequence"))
                .col(big_integer_null("position"))
                .col(string_len("type", 64))
                .col(string_len_null("request_id", 64))
                .col(string_len_null("kind", 16))
                .col(big_integer("time"))
                .col(string_len("actor", 128))
                .col(string_len_null("from_state", 32))
                .col(string_len_null("to_state", 32))
                .col(text("reason"))
                .col(blob_null("payload"))
                .to_owned(),
        )
        .await?;
        // Per business unit, gap-free (the feed's `sequence`).
        m.create_index(
            Index::create()
                .name("ux_events_sequence")
                .table("events")
                .col("business_unit_id")
                .col("sequence")
                .unique()
                .to_owned(),
        )
        .await?;
        // The feed's order.
        m.create_index(
            Index::create()
                .name("ux_events_position")
                .table("events")
                .col("position")
                .unique()
                .to_owned(),
        )
        .await?;
        // A request's history.
        m.create_index(
            Index::create()
                .name("ix_events_request")
                .table("events")
                .col("request_id")
                .col("id")
                .to_owned(),
        )
        .await?;
        // What the sequencer has yet to place in the feed (PostgreSQL).
        m.create_index(
            Index::create()
                .name("ix_events_unplaced")
                .table("events")
                .col("id")
                .and_where(Expr::col("position").is_null())
                .to_owned(),
        )
        .await?;
        // The last sequence number of each business unit (PostgreSQL takes the next one
        // here, under this row's lock; see `crate::events`).
        m.create_table(
            Table::create()
                .table("event_sequences")
                .if_not_exists()
                .col(string_len("business_unit_id", 64).primary_key())
                .col(big_integer("last"))
                .to_owned(),
        )
        .await?;

        let db = m.get_connection();
        let backend = db.get_database_backend();
        let copy = "INSERT INTO events (id, business_unit_id, sequence, position, type, request_id, kind, \
                    time, actor, from_state, to_state, reason) \
                    SELECT h.id, r.business_unit_id, \
                    ROW_NUMBER() OVER (PARTITION BY r.business_unit_id ORDER BY h.id), h.id, \
                    CASE WHEN h.kind = 'NOTE' THEN 'sspm.v1.request.noted' \
                    WHEN h.kind = 'REVERTED' THEN 'sspm.v1.request.reverted' \
                    WHEN h.from_state IS NULL THEN 'sspm.v1.request.created' \
                    WHEN h.to_state = 'PENDING_INFORMATION' THEN 'sspm.v1.request.needs_information' \
                    ELSE 'sspm.v1.request.' || LOWER(h.to_state) END, \
                    h.request_id, h.kind, h.time, h.actor, h.from_state, h.to_state, h.reason \
                    FROM request_history h JOIN port_change_requests r ON r.request_id = h.request_id";
        db.execute_raw(Statement::from_string(backend, copy)).await?;
        db.execute_raw(Statement::from_string(
            backend,
            "INSERT INTO event_sequences (business_unit_id, last) \
             SELECT business_unit_id, MAX(sequence) FROM events GROUP BY business_unit_id",
        ))
        .await?;
        if backend == DbBackend::Postgres {
            // Explicit ids were copied: the id sequence continues after them.
            db.execute_raw(Statement::from_string(
                backend,
                "SELECT setval(pg_get_serial_sequence('events', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM events",
            ))
            .await?;
        }
        m.drop_table(Table::drop().table("request_history").to_owned()).await
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the event log cannot be turned back into request_history: restore a backup".to_owned(),
        ))
    }
}
