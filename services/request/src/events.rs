//! The event log (docs/EVENTS.md): every change of a business unit's limits, every step of
//! a request and every approval task, written in the transaction of the change it
//! describes, numbered per business unit (`sequence`, gap-free) and placed in one feed
//! order (`position`) that keeps each business unit's order. A request's history is its
//! events with a `kind`.

use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait, Value,
};
use sspm_platform::rpc::timestamp;
use sspm_proto::v1 as pb;
use sspm_rules::{PortLimits, RequestState};

use crate::convert::{limits_pb, request_pb, state_pb};
use crate::entities::request::State;
use crate::entities::{cursor, event, request};
use crate::model::ApprovalPath;
use crate::plan::{Entry, HistoryKind};

/// The CloudEvents `source` of every event.
pub const SOURCE: &str = "sspm://request";
/// A business unit's limits changed.
pub const LIMITS_CHANGED: &str = "sspm.v1.port_limits.changed";
const CREATED: &str = "sspm.v1.request.created";
const NOTED: &str = "sspm.v1.request.noted";
const REVERTED: &str = "sspm.v1.request.reverted";
const TASK_CREATED: &str = "sspm.v1.approval_task.created";
const TASK_DECIDED: &str = "sspm.v1.approval_task.decided";
const TASK_WITHDRAWN: &str = "sspm.v1.approval_task.withdrawn";
/// A partner's pool was set or cleared (subject: the partner's business unit).
pub const POOL_CHANGED: &str = "sspm.v1.partner_pool.changed";
/// A cluster's capacity was set or cleared (subject: the cluster).
pub const CAPACITY_CHANGED: &str = "sspm.v1.cluster_capacity.changed";

/// Every event type, as `ListEvents` filters take them.
pub const TYPES: [&str; 15] = [
    LIMITS_CHANGED,
    CREATED,
    "sspm.v1.request.needs_information",
    "sspm.v1.request.under_review",
    "sspm.v1.request.approved",
    "sspm.v1.request.rejected",
    "sspm.v1.request.cancelled",
    "sspm.v1.request.failed",
    REVERTED,
    NOTED,
    TASK_CREATED,
    TASK_DECIDED,
    TASK_WITHDRAWN,
    POOL_CHANGED,
    CAPACITY_CHANGED,
];

/// The type of the event of history entry `e`.
pub fn entry_type(e: &Entry) -> &'static str {
    match (e.kind, e.from, e.to) {
        (HistoryKind::Note, ..) => NOTED,
        (HistoryKind::Reverted, ..) => REVERTED,
        (_, None, _) | (_, _, RequestState::New) => CREATED,
        (_, _, RequestState::PendingInformation) => TYPES[2],
        (_, _, RequestState::UnderReview) => TYPES[3],
        (_, _, RequestState::Approved) => TYPES[4],
        (_, _, RequestState::Rejected) => TYPES[5],
        (_, _, RequestState::Cancelled) => TYPES[6],
        (_, _, RequestState::Failed) => TYPES[7],
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its type (one of [`TYPES`]).
    pub event_type: &'static str,
    /// The request it is about.
    pub request_id: Option<String>,
    /// For a history entry, its kind.
    pub kind: Option<HistoryKind>,
    /// When, Unix microseconds.
    pub time: i64,
    /// Who.
    pub actor: String,
    /// State before.
    pub from: Option<RequestState>,
    /// State after.
    pub to: Option<RequestState>,
    /// Why.
    pub reason: String,
    /// The payload, protobuf-encoded.
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// History entry `e` of request `r` (as it is after the entry) at `time`.
    pub fn of_entry(r: &request::Model, e: &Entry, time: i64) -> Self {
        let payload = pb::RequestEvent {
            request_id: r.request_id.clone(),
            business_unit_id: r.business_unit_id.clone(),
            from_state: e.from.map_or(pb::PortChangeRequestState::Unspecified, state_pb).into(),
            state: state_pb(e.to).into(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            request: Some(request_pb(r.clone(), Vec::new())),
        };
        Self {
            event_type: entry_type(e),
            request_id: Some(r.request_id.clone()),
            kind: Some(e.kind),
            time,
            actor: e.actor.clone(),
            from: e.from,
            to: Some(e.to),
            reason: e.reason.clone(),
            payload: payload.encode_to_vec(),
        }
    }

    /// The approval task's event when entry `e` of `r` (as it is after the entry) enters
    /// or leaves human review.
    pub fn of_task(r: &request::Model, e: &Entry, time: i64) -> Option<Self> {
        if e.kind != HistoryKind::Transition {
            return None;
        }
        let review = RequestState::UnderReview;
        let event_type = match (e.from, e.to) {
            (from, to) if to == review && from != Some(review) => TASK_CREATED,
            (Some(from), to) if from == review && to != review => {
                if r.decision_approved.is_some() && r.approval_path == Some(ApprovalPath::Review) {
                    TASK_DECIDED
                } else {
                    TASK_WITHDRAWN
                }
            }
            _ => return None,
        };
        let decision = match (event_type, &r.decided_by, r.decision_approved) {
            (TASK_DECIDED, Some(by), Some(approved)) => Some(pb::Decision {
                decided_by: by.clone(),
                decide_time: r.decide_time.map(timestamp),
                approved,
                reason: r.decision_reason.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let payload = pb::ApprovalTaskEvent {
            request_id: r.request_id.clone(),
            business_unit_id: r.business_unit_id.clone(),
            case_number: r.case_number.clone().unwrap_or_default(),
            decision,
            reason: e.reason.clone(),
        };
        Some(Self {
            event_type,
            request_id: Some(r.request_id.clone()),
            kind: None,
            time,
            actor: e.actor.clone(),
            from: e.from,
            to: Some(e.to),
            reason: e.reason.clone(),
            payload: payload.encode_to_vec(),
        })
    }

    /// Business unit `bu`'s limits changed from `before` to `after` at `time`, by
    /// `actor`, because of `cause` (applied or reverted `request`, or provisioned).
    pub fn limits_changed(
        bu: &str,
        (before, after): (PortLimits, PortLimits),
        request: Option<&request::Model>,
        actor: &str,
        cause: pb::PortLimitsChangeCause,
        reason: String,
        time: i64,
    ) -> Self {
        let payload = pb::PortLimitsChanged {
            business_unit_id: bu.to_owned(),
            before: Some(limits_pb(before)),
            after: Some(limits_pb(after)),
            request_id: request.map(|r| r.request_id.clone()).unwrap_or_default(),
            case_number: request.and_then(|r| r.case_number.clone()).unwrap_or_default(),
            actor: actor.to_owned(),
            time: Some(timestamp(time)),
            cause: cause.into(),
        };
        Self {
            event_type: LIMITS_CHANGED,
            request_id: request.map(|r| r.request_id.clone()),
            kind: None,
            time,
            actor: actor.to_owned(),
            from: None,
            to: None,
            reason,
            payload: payload.encode_to_vec(),
        }
    }

    /// A pool's or a cluster's size set or cleared (`payload.partner_id` or `cluster` says
    /// which).
    pub fn capacity_changed(payload: &pb::CapacityChanged, time: i64) -> Self {
        Self {
            event_type: if payload.partner_id.is_empty() {
                CAPACITY_CHANGED
            } else {
                POOL_CHANGED
            },
            request_id: None,
            kind: None,
            time,
            actor: payload.actor.clone(),
            from: None,
            to: None,
            reason: payload.reason.clone(),
            payload: payload.encode_to_vec(),
        }
    }

    /// The events of a request's step: its history entry `e`, the approval task's event
    /// if it enters or leaves review, and `limits`, the change of the business unit's
    /// limits it made, if any; `r` is the request as the step leaves it.
    pub fn of_step(r: &request::Model, e: &Entry, time: i64, limits: Option<NewEvent>) -> Vec<Self> {
        let mut out = vec![Self::of_entry(r, e, time)];
        out.extend(Self::of_task(r, e, time));
        out.extend(limits);
        out
    }
}

/// Appends `events`, all of business unit `bu`, in one statement in `db`'s transaction,
/// numbered after the business unit's last event. On SQLite, whose one writer no one can
/// race, the numbers are the business unit's highest plus one and the feed position the
/// highest plus one. On PostgreSQL, the business unit's counter row is bumped in the same
/// statement (its lock orders the business unit's writers by commit; a rollback gives the
/// numbers back) and the position is left for [`place`] to give after the commit.
pub async fn append<C: ConnectionTrait>(db: &C, bu: &str, events: &[NewEvent]) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    let count = events.len() as i64;
    let mut values: Vec<Value> = Vec::with_capacity(2 + events.len() * 10);
    values.push(bu.into());
    values.push(count.into());
    let mut rows = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let base = values.len();
        values.extend([
            Value::from(i as i64 + 1),
            e.event_type.into(),
            e.request_id.clone().into(),
            e.kind.map(|k| k.to_value()).into(),
            e.time.into(),
            e.actor.clone().into(),
            e.from.map(|s| State::from(s).to_value()).into(),
            e.to.map(|s| State::from(s).to_value()).into(),
            e.reason.clone().into(),
            e.payload.clone().into(),
        ]);
        rows.push(match backend {
            DbBackend::Postgres => {
                let casts = [
                    "bigint", "text", "text", "text", "bigint", "text", "text", "text", "text", "bytea",
                ];
                let cells: Vec<String> = casts
                    .iter()
                    .enumerate()
                    .map(|(j, t)| format!("${}::{t}", base + j + 1))
                    .collect();
                format!("({})", cells.join(", "))
            }
            _ => format!("({})", ["?"; 10].join(", ")),
        });
    }
    let columns = "type, request_id, kind, time, actor, from_state, to_state, reason, payload";
    let sql = match backend {
        DbBackend::Postgres => format!(
            "WITH s AS (INSERT INTO event_sequences (business_unit_id, last) VALUES ($1::text, $2::bigint) \
             ON CONFLICT (business_unit_id) DO UPDATE SET last = event_sequences.last + EXCLUDED.last \
             RETURNING last) \
             INSERT INTO events (business_unit_id, sequence, {columns}) \
             SELECT $1::text, s.last - $2::bigint + v.n, v.t, v.r, v.k, v.tm, v.a, v.f, v.s, v.re, v.p \
             FROM s, (VALUES {}) AS v(n, t, r, k, tm, a, f, s, re, p) ORDER BY v.n",
            rows.join(", ")
        ),
        _ => {
            // Positional parameters: the business unit twice, then the rows (no count).
            values[1] = bu.into();
            format!(
                "INSERT INTO events (business_unit_id, sequence, position, {columns}) \
                 SELECT ?, s.last + v.column1, p.last + v.column1, v.column2, v.column3, v.column4, \
                 v.column5, v.column6, v.column7, v.column8, v.column9, v.column10 \
                 FROM (SELECT COALESCE(MAX(sequence), 0) AS last FROM events WHERE business_unit_id = ?) AS s, \
                 (SELECT COALESCE(MAX(position), 0) AS last FROM events) AS p, \
                 (VALUES {}) AS v ORDER BY v.column1",
                rows.join(", ")
            )
        }
    };
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .map(|_| ())
}

/// Places committed events without a position in the feed, after the highest position,
/// in the order they were written (each business unit's in sequence order: its next
/// event cannot commit before this one, it waits on the counter row). PostgreSQL only
/// (SQLite places them when it writes them). At most `batch` at a time, under a
/// transaction-scoped advisory lock so that one replica places at a time; `Ok(None)` when
/// another replica holds it. Answers how many it placed.
pub async fn place(db: &sea_orm::DatabaseConnection, batch: u64) -> Result<Option<u64>, DbErr> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Ok(Some(0));
    }
    let tx = db.begin().await?;
    let locked = tx
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT pg_try_advisory_xact_lock({PLACE_LOCK}) AS locked"),
        ))
        .await?
        .and_then(|r| r.try_get::<bool>("", "locked").ok())
        .unwrap_or(false);
    if !locked {
        tx.rollback().await?;
        return Ok(None);
    }
    let placed = tx
        .execute_raw(Statement::from_sql_and_values(
            backend,
            "WITH m AS (SELECT COALESCE(MAX(position), 0) AS base FROM events), \
             u AS (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS n FROM \
             (SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT $1) AS w) \
             UPDATE events AS e SET position = m.base + u.n FROM m, u WHERE e.id = u.id",
            [Value::from(batch as i64)],
        ))
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some(placed))
}

/// The advisory lock key of [`place`] ("SSPMFEED").
const PLACE_LOCK: i64 = 0x5353_504D_4645_4544;

/// The feed: events after position `after`, oldest first, of business units `bus`
/// (`None`: all) and types `types` (empty: all), at most `limit`.
pub async fn feed<C: ConnectionTrait>(
    db: &C,
    after: i64,
    bus: Option<&[String]>,
    types: &[String],
    limit: u64,
) -> Result<Vec<event::Model>, DbErr> {
    let mut q = event::Entity::find().filter(event::Column::Position.gt(after));
    if let Some(bus) = bus {
        q = q.filter(event::Column::BusinessUnitId.is_in(bus.iter().cloned()));
    }
    if !types.is_empty() {
        q = q.filter(event::Column::EventType.is_in(types.iter().cloned()));
    }
    q.order_by_asc(event::Column::Position).limit(limit).all(db).await
}

/// The highest position in the feed (0 when it is empty).
pub async fn head<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    position_bound(db, Expr::col(event::Column::Position).max()).await
}

/// The lowest position still kept (0 when the feed is empty).
pub async fn oldest<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    position_bound(db, Expr::col(event::Column::Position).min()).await
}

/// `MAX(position)` or `MIN(position)` of the feed (0 when it is empty).
async fn position_bound<C: ConnectionTrait>(db: &C, bound: sea_orm::sea_query::SimpleExpr) -> Result<i64, DbErr> {
    let row: Option<Option<i64>> = event::Entity::find()
        .select_only()
        .expr(bound)
        .into_tuple()
        .one(db)
        .await?;
    Ok(row.flatten().unwrap_or(0))
}

/// The value of the `decision_cursor` row `name` (0 when there is none): the feed cursors
/// kept beside the decision feed's (what was pruned, what was published).
pub async fn cursor_row<C: ConnectionTrait>(db: &C, name: &str) -> Result<i64, DbErr> {
    Ok(cursor::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map_or(0, |c| c.cursor))
}

/// The `decision_cursor` row that holds the highest position pruned.
const PRUNED: &str = "events_pruned";

/// Deletes at most `batch` events placed in the feed before `before` (Unix microseconds)
/// and at or below `upto` (what the publisher has sent, when there is one), keeping each
/// business unit's newest event so that its numbering carries on, and every request's
/// history entry (the events of type `sspm.v1.request.*` are the history the API lists, kept
/// as long as the request), and records the highest position pruned ([`pruned_through`]) in
/// the same transaction. Answers how many.
pub async fn prune(db: &sea_orm::DatabaseConnection, before: i64, upto: i64, batch: u64) -> Result<u64, DbErr> {
    // Each business unit's newest is kept (its sequence number is the next one's base).
    let not_newest = || {
        Expr::cust(
            "sequence < (SELECT MAX(n.sequence) FROM events AS n WHERE n.business_unit_id = events.business_unit_id)",
        )
    };
    let old: Vec<(i64, Option<i64>)> = event::Entity::find()
        .select_only()
        .column(event::Column::Id)
        .column(event::Column::Position)
        .filter(event::Column::Position.lte(upto))
        .filter(event::Column::Time.lt(before))
        .filter(event::Column::Kind.is_null())
        .filter(not_newest())
        .order_by_asc(event::Column::Position)
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    let Some(through) = old.iter().filter_map(|(_, p)| *p).max() else {
        return Ok(0);
    };
    let tx = db.begin().await?;
    let deleted = event::Entity::delete_many()
        .filter(event::Column::Id.is_in(old.into_iter().map(|(id, _)| id)))
        .filter(Condition::all().add(not_newest()))
        .exec(&tx)
        .await?;
    cursor::Entity::insert(cursor::ActiveModel {
        feed: sea_orm::ActiveValue::Set(PRUNED.to_owned()),
        cursor: sea_orm::ActiveValue::Set(through),
    })
    .on_conflict(
        sea_orm::sea_query::OnConflict::column(cursor::Column::Feed)
            .update_column(cursor::Column::Cursor)
            .to_owned(),
    )
    .exec_without_returning(&tx)
    .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected)
}

/// The highest position pruned so far (0: none): a cursor below it may have missed events.
pub async fn pruned_through<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    cursor_row(db, PRUNED).await
}

/// A request's history entry, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The request.
    pub request_id: String,
    /// Its kind.
    pub kind: HistoryKind,
    /// Unix microseconds.
    pub time: i64,
    /// Who.
    pub actor: String,
    /// State before.
    pub from_state: Option<RequestState>,
    /// State after.
    pub to_state: RequestState,
    /// Why.
    pub reason: String,
}

impl HistoryEntry {
    /// Entry `e` of request `id` at `time`.
    pub fn of(id: &str, time: i64, e: &Entry) -> Self {
        Self {
            request_id: id.to_owned(),
            kind: e.kind,
            time,
            actor: e.actor.clone(),
            from_state: e.from,
            to_state: e.to,
            reason: e.reason.clone(),
        }
    }

    /// The entry an event row holds, if it is one.
    pub fn of_row(row: event::Model) -> Option<Self> {
        Some(Self {
            request_id: row.request_id?,
            kind: row.kind?,
            time: row.time,
            actor: row.actor,
            from_state: row.from_state.map(Into::into),
            to_state: row.to_state?.into(),
            reason: row.reason,
        })
    }
}

/// The condition that selects history entries among events.
pub fn is_history() -> sea_orm::sea_query::SimpleExpr {
    event::Column::Kind.is_not_null()
}

/// An event row as the feed shows it.
pub fn event_pb(row: event::Model) -> pb::Event {
    let position = row.position.unwrap_or_default();
    let payload = row.payload.as_deref().unwrap_or_default();
    let state = |s: Option<State>| s.map_or(pb::PortChangeRequestState::Unspecified, |s| state_pb(s.into()));
    let data = if row.event_type == LIMITS_CHANGED {
        pb::PortLimitsChanged::decode(payload)
            .ok()
            .map(pb::event::Data::PortLimitsChanged)
    } else if row.event_type == POOL_CHANGED || row.event_type == CAPACITY_CHANGED {
        pb::CapacityChanged::decode(payload)
            .ok()
            .map(pb::event::Data::CapacityChanged)
    } else if row.event_type.starts_with("sspm.v1.approval_task.") {
        pb::ApprovalTaskEvent::decode(payload)
            .ok()
            .map(pb::event::Data::ApprovalTask)
    } else if row.payload.is_some() {
        pb::RequestEvent::decode(payload).ok().map(pb::event::Data::Request)
    } else {
        // Recorded before the feed existed: what the history entry holds.
        Some(pb::event::Data::Request(pb::RequestEvent {
            request_id: row.request_id.clone().unwrap_or_default(),
            business_unit_id: row.business_unit_id.clone(),
            from_state: state(row.from_state).into(),
            state: state(row.to_state).into(),
            actor: row.actor.clone(),
            reason: row.reason.clone(),
            request: None,
        }))
    };
    pb::Event {
        id: event_id(&row.business_unit_id, row.sequence),
        source: SOURCE.to_owned(),
        r#type: row.event_type,
        subject: row.business_unit_id,
        time: Some(timestamp(row.time)),
        sequence: row.sequence,
        cursor: position.to_string(),
        data,
    }
}

/// The CloudEvents id of business unit `bu`'s event `sequence`: stable, unique within
/// [`SOURCE`] (numbers are never reused: pruning keeps each business unit's newest).
pub fn event_id(bu: &str, sequence: i64) -> String {
    format!("{bu}/{sequence}")
}
