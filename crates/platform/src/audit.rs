//! The append-only audit trail every service keeps of its own changes
//! (docs/ARCHITECTURE.md, "The trust model"; README, "Audit trail").
//!
//! Each service's database has an `audit_events` table ([`Migration`]); the database itself
//! refuses UPDATE, DELETE (and on PostgreSQL TRUNCATE) on it. Stores call [`record`] inside
//! the transaction of the change, so a change and its event commit or fail together. Who
//! and which trace come from the call being served: [`AuthLayer`](crate::auth::AuthLayer)
//! runs every authenticated call inside a [`CallContext`]; background steps (the reconciler,
//! reverts) have none and are recorded as `system` unless the store names the actor.
//! [`AuditApi`] serves the trail as `sspm.v1.AuditService` to staff (never to a service token).
//!
//! Retention (`[audit] retention_days`, README "Audit trail"): the trail's oldest end may be
//! cut, nothing else. [`RetentionMigration`] adds a one-row `audit_retention` horizon that
//! only moves forward and never past the database's clock, and lets the database delete an
//! event only when it is older than the horizon; [`prune`] moves the horizon and deletes
//! behind it, recording the cut in the trail itself ([`spawn_pruner`] runs it in every
//! service).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_pk_auto, string_len, string_len_null, text};
use sspm_proto::v1 as pb;
use sspm_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use crate::error::db;
pub use crate::identity::SYSTEM;
use crate::identity::{CallContext, Principal, span_trace_id};
use crate::rpc::{invalid, next_page_token, page_number, page_size, timestamp};

/// Appends an event to the trail on `db` (the transaction of the change), made by the
/// caller of the call being served, or by `system` outside any call.
pub async fn record(
    db: &impl ConnectionTrait,
    action: &str,
    target: &str,
    detail: &str,
    now: i64,
) -> Result<(), DbErr> {
    record_as(db, None, action, target, detail, now).await
}

/// [`record`] with the actor named by the store (the requester of a transition, the
/// approver whose decision is applied); `None` for the caller.
pub async fn record_as(
    db: &impl ConnectionTrait,
    actor: Option<&str>,
    action: &str,
    target: &str,
    detail: &str,
    now: i64,
) -> Result<(), DbErr> {
    let call = CallContext::current();
    let (caller, on_behalf_of, trace_id) = match call {
        Some(c) => (c.actor, c.on_behalf_of, c.trace_id),
        None => (SYSTEM.to_owned(), None, span_trace_id().unwrap_or_default()),
    };
    let actor = actor.map_or(caller, str::to_owned);
    event::ActiveModel {
        event_id: sea_orm::NotSet,
        time: Set(now),
        actor: Set(actor),
        on_behalf_of: Set(on_behalf_of),
        action: Set(action.to_owned()),
        target: Set(target.to_owned()),
        detail: Set(detail.to_owned()),
        trace_id: Set(trace_id),
    }
    .insert(db)
    .await
    .map(|_| ())
}

/// One event of [`record_many`]: who (`None` for the caller), the action, the target and
/// the detail.
pub type Entry<'a> = (Option<&'a str>, &'a str, &'a str, String);

/// Appends several events in one statement (a step that records several changes at once),
/// each as [`record_as`] would.
pub async fn record_many(db: &impl ConnectionTrait, entries: &[Entry<'_>], now: i64) -> Result<(), DbErr> {
    if entries.is_empty() {
        return Ok(());
    }
    let (caller, on_behalf_of, trace_id) = match CallContext::current() {
        Some(c) => (c.actor, c.on_behalf_of, c.trace_id),
        None => (SYSTEM.to_owned(), None, span_trace_id().unwrap_or_default()),
    };
    let rows = entries
        .iter()
        .map(|(actor, action, target, detail)| event::ActiveModel {
            event_id: sea_orm::NotSet,
            time: Set(now),
            actor: Set(actor.map_or_else(|| caller.clone(), str::to_owned)),
            on_behalf_of: Set(on_behalf_of.clone()),
            action: Set((*action).to_owned()),
            target: Set((*target).to_owned()),
            detail: Set(detail.clone()),
            trace_id: Set(trace_id.clone()),
        });
    event::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// `audit_events`: the trail.
pub mod event {
    use sea_orm::entity::prelude::*;

    /// One event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        /// Position in the trail.
        #[sea_orm(primary_key)]
        pub event_id: i64,
        /// Unix microseconds.
        pub time: i64,
        /// Who.
        pub actor: String,
        /// For whom, when a service acted for a user.
        pub on_behalf_of: Option<String>,
        /// `<thing>.<verb>`.
        pub action: String,
        /// The id of the thing.
        pub target: String,
        /// The change in words.
        pub detail: String,
        /// W3C trace id or empty.
        pub trace_id: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates `audit_events` and the triggers that make it append-only. Each service's
/// migrator lists it.
#[derive(Debug)]
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261123_000001_audit_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("audit_events")
                .if_not_exists()
                .col(big_pk_auto("event_id"))
                .col(big_integer("time"))
                .col(string_len("actor", 128))
                .col(string_len_null("on_behalf_of", 128))
                .col(string_len("action", 64))
                .col(string_len("target", 160))
                .col(text("detail"))
                .col(string_len("trace_id", 32))
                .to_owned(),
        )
        .await?;
        for col in ["target", "actor"] {
            m.create_index(
                Index::create()
                    .name(format!("ix_audit_events_{col}"))
                    .table("audit_events")
                    .col(col)
                    .col("event_id")
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(
                    "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events \
                     FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events \
                     FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
                )
                .await?;
            }
            _ => {
                for (name, what) in [("no_update", "UPDATE"), ("no_delete", "DELETE")] {
                    db.execute_unprepared(&format!(
                        "CREATE TRIGGER audit_events_{name} BEFORE {what} ON audit_events \
                         BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END"
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("audit_events").to_owned()).await?;
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS audit_events_append_only()")
                .await?;
        }
        Ok(())
    }
}

/// Moves the retention horizon to `before` (Unix microseconds; never backwards) and deletes
/// up to `batch` of the oldest events older than it, in one transaction that also records
/// the cut (`audit.pruned`) when it deleted any; how many it deleted. Fewer than `batch`:
/// nothing older is left (or the next is behind a younger event, for the next round).
pub async fn prune(db: &sea_orm::DatabaseConnection, before: i64, batch: u64, now: i64) -> Result<u64, DbErr> {
    use sea_orm::TransactionTrait;
    let backend = db.get_database_backend();
    let tx = db.begin().await?;
    tx.execute_raw(
        backend.build(
            Query::update()
                .table("audit_retention")
                .value("horizon", before)
                .and_where(Expr::col("id").eq(1))
                .and_where(Expr::col("horizon").lt(before)),
        ),
    )
    .await?;
    // The oldest `batch` by position (a range of the primary key), of which those older than
    // the horizon: no index on `time` needed, and rarely a full batch not taken.
    let deleted = tx
        .execute_raw(
            backend.build(
                Query::delete()
                    .from_table("audit_events")
                    .and_where(
                        Expr::col("event_id").in_subquery(
                            Query::select()
                                .column("event_id")
                                .from("audit_events")
                                .order_by("event_id", Order::Asc)
                                .limit(batch)
                                .to_owned(),
                        ),
                    )
                    .and_where(Expr::col("time").lt(before)),
            ),
        )
        .await?
        .rows_affected();
    if deleted > 0 {
        let when = timestamp(before);
        record(
            &tx,
            "audit.pruned",
            "audit_events",
            &format!("{deleted} events older than {when} deleted (audit.retention_days)"),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Events deleted per transaction by [`spawn_pruner`].
pub const PRUNE_BATCH: u64 = 10_000;

/// Prunes the trail in `db` of events older than `retention_days` (0: never), at once and
/// then every `every` ([`crate::retention`]); a failure is logged and tried again at the
/// next round.
pub fn spawn_pruner(
    db: sea_orm::DatabaseConnection,
    service: &'static str,
    retention_days: u32,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    crate::retention::spawn(retention_days, every, move |before, now| {
        let db = db.clone();
        async move {
            let mut total = 0;
            loop {
                match prune(&db, before, PRUNE_BATCH, now).await {
                    Ok(n) => {
                        total += n;
                        if n < PRUNE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service, error = %e, "cannot prune the audit trail; trying again later");
                        break;
                    }
                }
            }
            if total > 0 {
                tracing::info!(
                    service,
                    pruned = total,
                    "old audit events pruned (audit.retention_days)"
                );
            }
        }
    })
}

/// Lets the trail's oldest end be pruned, and nothing else: `audit_retention` holds the
/// horizon (only forward, never past now), and the database deletes an event only when it
/// is older than the horizon. Each service's migrator lists it after [`Migration`].
#[derive(Debug)]
pub struct RetentionMigration;

impl MigrationName for RetentionMigration {
    fn name(&self) -> &'static str {
        "m20261206_000001_audit_retention"
    }
}

/// What the database answers to a deletion the retention horizon does not allow.
const REFUSED_DELETE: &str =
    "audit events are append-only: only events older than the retention horizon may be deleted";
/// What it answers to a horizon moved backwards or past now.
const REFUSED_HORIZON: &str = "the audit retention horizon only moves forward, and never past now";

#[async_trait::async_trait]
impl MigrationTrait for RetentionMigration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Postgres => {
                for sql in [
                    "CREATE TABLE audit_retention (id SMALLINT PRIMARY KEY CHECK (id = 1), horizon BIGINT NOT NULL)"
                        .to_owned(),
                    "INSERT INTO audit_retention (id, horizon) VALUES (1, 0)".to_owned(),
                    "DROP TRIGGER audit_events_no_change ON audit_events".to_owned(),
                    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events \
                     FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
                        .to_owned(),
                    format!(
                        "CREATE FUNCTION audit_events_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                         IF OLD.time >= COALESCE((SELECT horizon FROM audit_retention WHERE id = 1), 0) THEN \
                         RAISE EXCEPTION '{REFUSED_DELETE}'; END IF; RETURN OLD; END $$"
                    ),
                    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events \
                     FOR EACH ROW EXECUTE FUNCTION audit_events_prune_only()"
                        .to_owned(),
                    format!(
                        "CREATE FUNCTION audit_retention_forward() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                         IF TG_OP <> 'UPDATE' THEN RAISE EXCEPTION '{REFUSED_HORIZON}'; END IF; \
                         IF NEW.id <> OLD.id OR NEW.horizon < OLD.horizon \
                         OR NEW.horizon > (extract(epoch FROM clock_timestamp()) * 1000000)::bigint THEN \
                         RAISE EXCEPTION '{REFUSED_HORIZON}'; END IF; RETURN NEW; END $$"
                    ),
                    "CREATE TRIGGER audit_retention_forward BEFORE INSERT OR UPDATE OR DELETE ON audit_retention \
                     FOR EACH ROW EXECUTE FUNCTION audit_retention_forward()"
                        .to_owned(),
                    "CREATE TRIGGER audit_retention_no_truncate BEFORE TRUNCATE ON audit_retention \
                     FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
                        .to_owned(),
                ] {
                    db.execute_unprepared(&sql).await?;
                }
            }
            _ => {
                for sql in [
                    "CREATE TABLE audit_retention (id INTEGER PRIMARY KEY CHECK (id = 1), horizon BIGINT NOT NULL)"
                        .to_owned(),
                    "INSERT INTO audit_retention (id, horizon) VALUES (1, 0)".to_owned(),
                    "DROP TRIGGER audit_events_no_delete".to_owned(),
                    // No row (it cannot be deleted): horizon 0, nothing deletable.
                    format!(
                        "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events \
                         WHEN OLD.time >= COALESCE((SELECT horizon FROM audit_retention WHERE id = 1), 0) \
                         BEGIN SELECT RAISE(ABORT, '{REFUSED_DELETE}'); END"
                    ),
                    format!(
                        "CREATE TRIGGER audit_retention_forward BEFORE UPDATE ON audit_retention \
                         WHEN NEW.id <> OLD.id OR NEW.horizon < OLD.horizon \
                         OR NEW.horizon > CAST(strftime('%s', 'now') AS INTEGER) * 1000000 \
                         BEGIN SELECT RAISE(ABORT, '{REFUSED_HORIZON}'); END"
                    ),
                    format!(
                        "CREATE TRIGGER audit_retention_no_insert BEFORE INSERT ON audit_retention \
                         BEGIN SELECT RAISE(ABORT, '{REFUSED_HORIZON}'); END"
                    ),
                    format!(
                        "CREATE TRIGGER audit_retention_no_delete BEFORE DELETE ON audit_retention \
                         BEGIN SELECT RAISE(ABORT, '{REFUSED_HORIZON}'); END"
                    ),
                ] {
                    db.execute_unprepared(&sql).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DbBackend::Postgres => {
                for sql in [
                    "DROP TABLE audit_retention",
                    "DROP FUNCTION audit_retention_forward()",
                    "DROP TRIGGER audit_events_no_delete ON audit_events",
                    "DROP TRIGGER audit_events_no_update ON audit_events",
                    "DROP FUNCTION audit_events_prune_only()",
                    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events \
                     FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
                ] {
                    db.execute_unprepared(sql).await?;
                }
            }
            _ => {
                for sql in [
                    "DROP TABLE audit_retention",
                    "DROP TRIGGER audit_events_no_delete",
                    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events \
                     BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END",
                ] {
                    db.execute_unprepared(sql).await?;
                }
            }
        }
        Ok(())
    }
}

/// May this caller read the trail? Services may; users are asked about.
pub type StaffCheck = Arc<dyn Fn(Principal) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> + Send + Sync>;

/// `sspm.v1.AuditService` over one service's trail.
#[derive(Clone)]
pub struct AuditApi {
    db: sea_orm::DatabaseConnection,
    service: &'static str,
    staff: StaffCheck,
}

impl std::fmt::Debug for AuditApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditApi")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl AuditApi {
    /// The trail in `db` of `service`; users may read it if `staff` allows them.
    pub fn new(db: sea_orm::DatabaseConnection, service: &'static str, staff: StaffCheck) -> Self {
        Self { db, service, staff }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = crate::caller(&request)?;
        // Staff only: the caller table lets no service call it.
        (self.staff)(caller).await?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let before = page_number::<i64>(&req.page_token)?;
        for (field, value) in [("target", &req.target), ("actor", &req.actor)] {
            if value.chars().count() > 160 || value.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    "must be at most 160 characters, without control characters",
                ));
            }
        }
        let mut q = event::Entity::find();
        if !req.target.is_empty() {
            q = q.filter(event::Column::Target.eq(req.target.as_str()));
        }
        if !req.actor.is_empty() {
            q = q.filter(event::Column::Actor.eq(req.actor.as_str()));
        }
        if let Some(before) = before {
            q = q.filter(event::Column::EventId.lt(before));
        }
        let mut rows = q
            .order_by_desc(event::Column::EventId)
            .limit(size + 1)
            .all(&self.db)
            .await
            .map_err(db("listing audit events"))?;
        let next = next_page_token(&mut rows, size, |e| e.event_id.to_string());
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows
                .into_iter()
                .map(|e| pb::AuditEvent {
                    event_id: e.event_id,
                    time: Some(timestamp(e.time)),
                    service: self.service.to_owned(),
                    actor: e.actor,
                    on_behalf_of: e.on_behalf_of.unwrap_or_default(),
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                    trace_id: e.trace_id,
                })
                .collect(),
            next_page_token: next,
        }))
    }
}

impl crate::rpc::Authz {
    /// Who may read the audit trail: account representatives (ACTION_ADMINISTER).
    pub fn audit_readers(&self) -> StaffCheck {
        let authz = self.clone();
        Arc::new(move |caller: Principal| {
            let authz = authz.clone();
            Box::pin(async move { authz.require(&caller.id, pb::Action::Administer, "").await.map(|_| ()) })
        })
    }
}
