//! Every query of the request service. State changes are guarded by the state they start
//! from (`UPDATE ... WHERE state = $from`), and write the history entry and the effects
//! (the outbox) in the same transaction, so a crash never leaves half a transition.

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveEnum, ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, ExprTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use sspm_platform::audit;
use sspm_platform::db::{DbErrorKind, SelectUnique, classify};
use sspm_platform::group_commit::{BoxFuture, Savepoint, Writer};
use sspm_platform::lite::LiteReader;
use sspm_proto::v1 as pb;
use sspm_rules::{RequestState, Rule, Violation};

use crate::capacity::{self, Membership, Room};
use crate::entities::{cursor, effect, event, limits, request};
use crate::events::{self, HistoryEntry, NewEvent};
use crate::model::Request;
use crate::plan::{self, Entry, HistoryKind, Step};

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The request is stored.
    Done,
    /// Nothing is stored: the business unit's limits changed since the request was computed.
    LimitsMoved,
}

/// What [`Store::first_step`] and [`Store::step`] did.
#[derive(Debug)]
pub enum Stepped {
    /// Written.
    Done(Box<Written>),
    /// Nothing written: the step does not apply to the request as it is now (another
    /// worker, replica or caller moved it), as the transition table says.
    Refused(Violation),
    /// Nothing written: there is no such request.
    Gone,
    /// Nothing written: another request, named, holds the case number.
    HeldByAnother(String),
}

/// A request after a step.
#[derive(Debug, Clone)]
pub struct Written {
    /// The request as stored now.
    pub request: request::Model,
    /// The history entry written.
    pub history: HistoryEntry,
    /// The effects enqueued, with their ids.
    pub effects: Vec<effect::Model>,
}

/// What [`Store::set_case_number`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseLink {
    /// The request has the number (now, or it had it already).
    Linked,
    /// Another request, named, has that number: nothing was recorded.
    HeldByAnother(String),
}

/// The request service's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Plain reads outside transactions (see [`Store::with_reader`]).
    read: DatabaseConnection,
    /// On SQLite, the hottest reads without a thread hop (see [`Store::with_lite`]).
    lite: Option<Arc<LiteReader>>,
    /// Write transactions begun (explicit ones, and single writing statements).
    writes: Arc<std::sync::atomic::AtomicU64>,
    /// How the hot path's write transactions commit.
    writer: Writer,
}

impl Store {
    /// A store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            read: db.clone(),
            lite: None,
            writer: Writer::new(db.clone(), 0),
            db,
            writes: Arc::default(),
        }
    }

    /// Write transactions this store (and its clones) has begun: explicit transactions and
    /// single writing statements, each one commit (`sspm_db_write_transactions_total`).
    pub fn write_transactions(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Begins a write transaction.
    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.autocommit();
        self.db.begin().await
    }

    /// Runs `work` as one write transaction (see [`Store::with_group_commit`]); the answer
    /// comes after the commit that holds it.
    async fn write<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Savepoint<T>, DbErr>> + Send + 'static,
    {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writer.write(work).await
    }

    /// The same store, with the hot path's writes (create, its first steps, its outbox
    /// done) committed in groups on SQLite (`sspm_platform::group_commit`), whose one writer
    /// otherwise makes each caller wait for every other caller's sync. At most `queue`
    /// callers wait for it; 0 commits each on its own.
    pub fn with_group_commit(mut self, queue: usize) -> Self {
        self.writer = Writer::new(self.db.clone(), queue);
        self
    }

    /// Counts a single writing statement outside a transaction (its own commit).
    fn autocommit(&self) -> &DatabaseConnection {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.db
    }

    /// The same store, reading outside transactions from `read` (the service's reader
    /// pool: `ServiceApp::read_db`).
    pub fn with_reader(mut self, read: DatabaseConnection) -> Self {
        self.read = read;
        self
    }

    /// The same store, answering GetPortLimits's read through `lite` (SQLite:
    /// `ServiceApp::lite_reader`, [`sspm_platform::lite`]).
    pub fn with_lite(mut self, lite: Option<Arc<LiteReader>>) -> Self {
        self.lite = lite;
        self
    }

    /// The reader pool (plain reads outside transactions).
    pub fn reader(&self) -> &DatabaseConnection {
        &self.read
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A business unit's limits (if SSPM has any on record) and the room its pool and
    /// cluster leave it (R12, R13), read as they are.
    pub async fn limits_and_room(&self, bu: &str, m: &Membership) -> Result<(Option<limits::Model>, Room), DbErr> {
        capacity::limits_and_room(&self.read, bu, m).await
    }

    /// Sets (`Some`) or clears (`None`) a pool's or a cluster's size in one transaction
    /// ([`capacity::set_size`]); refused (nothing written) below what is allocated.
    pub async fn set_size(
        &self,
        level: crate::entities::capacity::Level,
        name: &str,
        size: Option<sspm_rules::capacity::Ports>,
        actor: &str,
        reason: &str,
        now: i64,
    ) -> Result<Result<Option<capacity::SizeSet>, sspm_rules::Violations>, DbErr> {
        let tx = self.begin().await?;
        let done = capacity::set_size(&tx, level, name, size, actor, reason, now).await?;
        if matches!(done, Ok(Some(_))) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(done)
    }

    /// A pool or a cluster as it stands (with its business units' shares: `shares`).
    pub async fn level_view(
        &self,
        level: crate::entities::capacity::Level,
        name: &str,
        shares: bool,
    ) -> Result<capacity::LevelView, DbErr> {
        capacity::view(&self.read, level, name, shares).await
    }

    /// Every cluster with a capacity or limits on record.
    pub async fn clusters(&self) -> Result<Vec<capacity::LevelView>, DbErr> {
        capacity::clusters(&self.read).await
    }

    /// A business unit's limits and its open request, in one query (GetPortLimits, a hot
    /// path: each query is a round trip, to the server or to SQLite's thread).
    pub async fn limits_and_open_request(&self, bu: &str) -> Result<(Option<limits::Model>, Option<String>), DbErr> {
        let sql = format!(
            "SELECT l.business_unit_id, l.concurrent, l.outbound, l.agentless, l.version, l.update_time, \
             l.cluster, l.pool_id, (SELECT r.request_id FROM port_change_requests r \
              WHERE r.business_unit_id = $1 AND r.{} LIMIT 1) AS open_request_id \
             FROM (SELECT 1 AS one) AS d LEFT JOIN port_limits l ON l.business_unit_id = $1",
            open_state_sql()
        );
        if let Some(lite) = &self.lite {
            // SQLite: on this thread (sspm_platform::lite); `$1` is SQLite's `?1` too.
            return lite.read(|c| {
                c.prepare_cached(&sql)?.query_row([bu], |row| {
                    let limits = match row.get::<_, Option<String>>(0)? {
                        None => None,
                        Some(business_unit_id) => Some(limits::Model {
                            business_unit_id,
                            concurrent: row.get(1)?,
                            outbound: row.get(2)?,
                            agentless: row.get(3)?,
                            version: row.get(4)?,
                            update_time: row.get(5)?,
                            cluster: row.get(6)?,
                            pool_id: row.get(7)?,
                        }),
                    };
                    Ok((limits, row.get(8)?))
                })
            });
        }
        let row = self
            .read
            .query_one_raw(Statement::from_sql_and_values(
                self.read.get_database_backend(),
                sql,
                [bu.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("the limits query answered no row".into()))?;
        let open_request: Option<String> = row.try_get("", "open_request_id")?;
        Ok((limits_in(&row)?, open_request))
    }

    /// The open request of a business unit (R5: at most one).
    pub async fn open_request_of(&self, bu: &str) -> Result<Option<String>, DbErr> {
        Ok(request::Entity::find()
            .filter(request::Column::BusinessUnitId.eq(bu))
            .filter(Expr::cust(open_state_sql()))
            .unique(&self.read)
            .await?
            .map(|r| r.request_id))
    }

    /// The `update_time` of each of the requests `ids` that exists (the watch poller).
    pub async fn update_times(&self, ids: &[String]) -> Result<Vec<(String, i64)>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        request::Entity::find()
            .select_only()
            .column(request::Column::RequestId)
            .column(request::Column::UpdateTime)
            .filter(request::Column::RequestId.is_in(ids.iter().cloned()))
            .into_tuple::<(String, i64)>()
            .all(&self.read)
            .await
    }

    /// One request.
    pub async fn request(&self, id: &str) -> Result<Option<request::Model>, DbErr> {
        request::Entity::find_by_id(id.to_owned()).unique(&self.read).await
    }

    /// A request's history, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, DbErr> {
        let rows = event::Entity::find()
            .filter(event::Column::RequestId.eq(id))
            .filter(events::is_history())
            .order_by_asc(event::Column::Id)
            .all(&self.read)
            .await?;
        Ok(rows.into_iter().filter_map(HistoryEntry::of_row).collect())
    }

    /// The histories of several requests (one page of a list), each oldest first.
    pub async fn histories(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<HistoryEntry>>, DbErr> {
        let mut out: std::collections::HashMap<String, Vec<HistoryEntry>> = std::collections::HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = event::Entity::find()
            .filter(event::Column::RequestId.is_in(ids.iter().cloned()))
            .filter(events::is_history())
            .order_by_asc(event::Column::Id)
            .all(&self.read)
            .await?;
        for h in rows.into_iter().filter_map(HistoryEntry::of_row) {
            out.entry(h.request_id.clone()).or_default().push(h);
        }
        Ok(out)
    }

    /// Inserts a new request with its first history entry. A unique violation means the id
    /// exists or the business unit has an open request (R5). The request was computed from
    /// the limits in its `before_*` columns: if a change was applied since they were read,
    /// nothing is inserted and the caller computes it again.
    pub async fn insert(&self, r: request::Model, entry: Entry) -> Result<Inserted, DbErr> {
        self.write(move |tx| {
            Box::pin(async move {
                let id = r.request_id.clone();
                let time = r.create_time;
                let bu = r.business_unit_id.clone();
                let before = (r.before_concurrent, r.before_outbound, r.before_agentless);
                let created = NewEvent::of_entry(&r, &entry, time);
                request::Entity::insert(request::ActiveModel::from(r))
                    .exec_without_returning(tx)
                    .await?;
                // Read after the insert: the R5 index has waited for any request of the
                // business unit still being applied, so this sees the limits that request left.
                let now = limits::Entity::find_by_id(bu.clone())
                    .lock_exclusive()
                    .unique(tx)
                    .await?
                    .map_or((0, 0, 0), |l| (l.concurrent, l.outbound, l.agentless));
                if now != before {
                    return Ok(Savepoint::Undo(Inserted::LimitsMoved));
                }
                audit::record_as(
                    tx,
                    Some(&entry.actor),
                    audit_action(&entry),
                    &id,
                    &audit_detail(&entry),
                    time,
                )
                .await?;
                events::append(tx, &bu, &[created]).await?;
                Ok(Savepoint::Keep(Inserted::Done))
            })
        })
        .await
    }

    /// The request that holds case `number` (empty if none does).
    async fn holder_of_case(&self, number: &str) -> Result<String, DbErr> {
        Ok(request::Entity::find()
            .filter(request::Column::CaseNumber.eq(number))
            .unique(&self.db)
            .await?
            .map(|r| r.request_id)
            .unwrap_or_default())
    }

    /// Records the case number of a request that has none; [`CaseLink::HeldByAnother`] (and
    /// nothing recorded) when another request already has that number, which the unique
    /// index on `case_number` enforces whatever the replicas.
    pub async fn set_case_number(&self, id: &str, number: &str, now: i64) -> Result<CaseLink, DbErr> {
        let tx = self.begin().await?;
        let updated = request::Entity::update_many()
            .col_expr(request::Column::CaseNumber, Expr::val(number))
            .col_expr(request::Column::UpdateTime, Expr::val(now))
            .filter(request::Column::RequestId.eq(id))
            .filter(request::Column::CaseNumber.is_null())
            .exec(&tx)
            .await;
        let set = match updated {
            Ok(r) => r.rows_affected == 1,
            Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
                tx.rollback().await?;
                return Ok(CaseLink::HeldByAnother(self.holder_of_case(number).await?));
            }
            Err(e) => return Err(e),
        };
        if set {
            audit::record(&tx, "request.case_linked", id, &format!("case {number}"), now).await?;
        }
        tx.commit().await?;
        Ok(CaseLink::Linked)
    }

    /// The first steps of a new request in one transaction (see `Workflow::first_steps`):
    /// its case number, the decision and what follows from it, the step `plan` makes from
    /// the business unit's limits. The limits are assumed to be `before`, those the request
    /// was computed from (checked in the insert's transaction): the write is guarded by them
    /// (compare and set), and only when they moved since (a revert, an onboarding) are they
    /// read and the step planned again. Nothing is written when the request is no longer
    /// new and undecided ([`Stepped::Refused`]) or another request holds the case number.
    /// An increase is assumed to fit its pool and cluster (R12, R13): checked under their
    /// locks when written, and planned again with their room only when it does not.
    pub async fn first_step(
        &self,
        old: &request::Model,
        before: sspm_rules::PortLimits,
        membership: Option<&Membership>,
        now: i64,
        lease_until: i64,
        plan: impl Fn(sspm_rules::PortLimits, &Room) -> Result<Step, Violation>,
    ) -> Result<Stepped, DbErr> {
        let mut assumed = before;
        let mut room = Room::default();
        for _ in 0..5 {
            let step = match plan(assumed, &room) {
                Ok(step) => step,
                Err(v) => return Ok(Stepped::Refused(v)),
            };
            let (old, membership) = (old.clone(), membership.cloned());
            let wrote = self
                .write(move |tx| {
                    Box::pin(async move {
                        first_step_in(tx, old, assumed, membership.as_ref(), step, now, lease_until).await
                    })
                })
                .await?;
            match wrote {
                StepWrite::Done(written) => return Ok(Stepped::Done(written)),
                StepWrite::Moved(v) => return Ok(Stepped::Refused(v)),
                StepWrite::LimitsAre(current) => assumed = current,
                StepWrite::RoomIs(now) => room = now,
                StepWrite::CaseHeld(number) => {
                    return Ok(Stepped::HeldByAnother(self.holder_of_case(&number).await?));
                }
            }
        }
        Err(DbErr::Custom(format!(
            "the limits of {} keep changing while request {} is applied; it is retried",
            old.business_unit_id, old.request_id
        )))
    }

    /// Marks effects carried out and sets when the reconciler looks at the request next,
    /// in one transaction.
    pub async fn effects_done(&self, id: &str, effect_ids: &[i64], next: Option<i64>, now: i64) -> Result<(), DbErr> {
        let (id, effect_ids) = (id.to_owned(), effect_ids.to_vec());
        self.write(move |tx| {
            Box::pin(async move {
                if !effect_ids.is_empty() {
                    effect::Entity::update_many()
                        .col_expr(effect::Column::DoneTime, Expr::val(now))
                        .filter(effect::Column::Id.is_in(effect_ids))
                        .exec(tx)
                        .await?;
                }
                request::Entity::update_many()
                    .col_expr(request::Column::NextAttemptAt, Expr::val(next))
                    .col_expr(request::Column::Attempts, Expr::val(0))
                    .filter(request::Column::RequestId.eq(id))
                    .exec(tx)
                    .await?;
                Ok(Savepoint::Keep(()))
            })
        })
        .await
    }

    /// One step of request `id` in one transaction: the request (and, `with_limits`, its
    /// business unit's limits) read and locked, the step `plan` makes from them (the
    /// transition table, `crate::plan::next_step`) written: the request's state and columns,
    /// the limits, history, audit and outbox. A step that queues effects leaves the request
    /// leased until `lease_until`, so that the worker carries them out if the caller dies.
    /// With the limits and the business unit's `membership`, its pool and cluster are
    /// locked too, and the plan sees their room (R12, R13; see [`crate::capacity`]).
    pub async fn step<P>(
        &self,
        id: &str,
        with_limits: bool,
        membership: Option<Membership>,
        now: i64,
        lease_until: i64,
        plan: P,
    ) -> Result<Stepped, DbErr>
    where
        P: FnOnce(&Request, sspm_rules::PortLimits, &Room) -> Result<Step, Violation> + Send + 'static,
    {
        let id = id.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let Some(old) = request::Entity::find_by_id(id.clone())
                    .lock_exclusive()
                    .unique(tx)
                    .await?
                else {
                    return Ok(Savepoint::Undo(Stepped::Gone));
                };
                let current = if with_limits {
                    limits::Entity::find_by_id(old.business_unit_id.clone())
                        .lock_exclusive()
                        .unique(tx)
                        .await?
                } else {
                    None
                };
                let model = Request::from_row(&old)?;
                let limits_now = stored_limits(current.as_ref())?;
                let room = match (&membership, with_limits) {
                    (Some(m), true) => capacity::room(tx, &old.business_unit_id, m, limits_now, true).await?,
                    _ => Room::default(),
                };
                let step = match plan(&model, limits_now, &room) {
                    Ok(step) => step,
                    Err(v) => return Ok(Savepoint::Undo(Stepped::Refused(v))),
                };
                let mut changed = None;
                if let Some(after) = step.limits {
                    let cause = if step.entry.kind == HistoryKind::Reverted {
                        "reverted"
                    } else {
                        "applied"
                    };
                    let new = limits_row(&old.business_unit_id, after);
                    write_limits(
                        tx,
                        current.as_ref(),
                        new,
                        membership.as_ref(),
                        &format!("{cause} by {id}"),
                        now,
                    )
                    .await?;
                    changed = Some((stored_limits(current.as_ref())?, after));
                }
                let guard = Condition::all().add(request::Column::State.eq(step.from.as_str()));
                match write_step_in(tx, old, step, Vec::new(), changed, guard, now, lease_until).await? {
                    Some(written) => Ok(Savepoint::Keep(Stepped::Done(Box::new(written)))),
                    None => Ok(Savepoint::Undo(Stepped::Refused(Violation::new(
                        Rule::Lifecycle,
                        "request_id",
                        "the request changed meanwhile; retry",
                    )))),
                }
            })
        })
        .await
    }

    /// Business figures: the number of requests by state and approval path, and of effects
    /// (calls to other services) not yet carried out.
    #[allow(clippy::type_complexity)]
    pub async fn figures(&self) -> Result<(Vec<(request::State, Option<request::ApprovalPath>, i64)>, u64), DbErr> {
        use sea_orm::PaginatorTrait;
        let by_state = request::Entity::find()
            .select_only()
            .column(request::Column::State)
            .column(request::Column::ApprovalPath)
            .column_as(request::Column::RequestId.count(), "n")
            .group_by(request::Column::State)
            .group_by(request::Column::ApprovalPath)
            .into_tuple()
            .all(&self.read)
            .await?;
        let pending = effect::Entity::find()
            .filter(effect::Column::DoneTime.is_null())
            .count(&self.read)
            .await?;
        Ok((by_state, pending))
    }

    /// A request's effects not yet carried out, in order.
    pub async fn pending_effects(&self, id: &str) -> Result<Vec<effect::Model>, DbErr> {
        effect::Entity::find()
            .filter(effect::Column::RequestId.eq(id))
            .filter(effect::Column::DoneTime.is_null())
            .order_by_asc(effect::Column::Id)
            .all(&self.read)
            .await
    }

    /// Marks an effect carried out.
    pub async fn effect_done(&self, effect_id: i64, now: i64) -> Result<(), DbErr> {
        effect::Entity::update_many()
            .col_expr(effect::Column::DoneTime, Expr::val(now))
            .filter(effect::Column::Id.eq(effect_id))
            .exec(self.autocommit())
            .await
            .map(|_| ())
    }

    /// Adds a note to request `r`'s history (`sspm.v1.request.noted`).
    pub async fn note(&self, r: &request::Model, actor: &str, reason: &str, now: i64) -> Result<(), DbErr> {
        let state = crate::model::state_of(r);
        let entry = Entry {
            kind: HistoryKind::Note,
            actor: actor.to_owned(),
            from: Some(state),
            to: state,
            reason: reason.to_owned(),
        };
        let tx = self.begin().await?;
        audit::record_as(
            &tx,
            Some(actor),
            audit_action(&entry),
            &r.request_id,
            &audit_detail(&entry),
            now,
        )
        .await?;
        events::append(&tx, &r.business_unit_id, &[NewEvent::of_entry(r, &entry, now)]).await?;
        tx.commit().await
    }

    /// Sets when the reconciler looks at a request next, and its failed attempts.
    pub async fn schedule(&self, id: &str, next: Option<i64>, attempts: i32) -> Result<(), DbErr> {
        request::Entity::update_many()
            .col_expr(request::Column::NextAttemptAt, Expr::val(next))
            .col_expr(request::Column::Attempts, Expr::val(attempts))
            .filter(request::Column::RequestId.eq(id))
            .exec(self.autocommit())
            .await
            .map(|_| ())
    }

    /// Requests due for the reconciler, with their scheduled time.
    pub async fn due(&self, now: i64, limit: u64) -> Result<Vec<(String, i64)>, DbErr> {
        Ok(request::Entity::find()
            .filter(request::Column::NextAttemptAt.lte(now))
            .order_by_asc(request::Column::NextAttemptAt)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .filter_map(|r| r.next_attempt_at.map(|t| (r.request_id, t)))
            .collect())
    }

    /// Claims a due request for `lease_until` if no other worker did (compare and set on the
    /// scheduled time): safe with any number of replicas.
    pub async fn claim(&self, id: &str, scheduled: i64, lease_until: i64) -> Result<bool, DbErr> {
        let r = request::Entity::update_many()
            .col_expr(request::Column::NextAttemptAt, Expr::val(lease_until))
            .filter(request::Column::RequestId.eq(id))
            .filter(request::Column::NextAttemptAt.eq(scheduled))
            .exec(self.autocommit())
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// Requests under review without a decision on record.
    pub async fn awaiting_decision(&self, limit: u64) -> Result<Vec<String>, DbErr> {
        Ok(request::Entity::find()
            .filter(request::Column::State.eq(RequestState::UnderReview.as_str()))
            .filter(request::Column::DecidedBy.is_null())
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| r.request_id)
            .collect())
    }

    /// Where the decision feed resumes.
    pub async fn cursor(&self) -> Result<i64, DbErr> {
        Ok(cursor::Entity::find_by_id("decisions".to_owned())
            .unique(&self.read)
            .await?
            .map_or(0, |c| c.cursor))
    }

    /// Stores the decision feed's position (never backwards).
    pub async fn set_cursor(&self, value: i64) -> Result<(), DbErr> {
        use sea_orm::sea_query::OnConflict;
        cursor::Entity::insert(cursor::ActiveModel {
            feed: Set("decisions".to_owned()),
            cursor: Set(value),
        })
        .on_conflict(
            OnConflict::column(cursor::Column::Feed)
                .update_column(cursor::Column::Cursor)
                .to_owned(),
        )
        .exec_without_returning(self.autocommit())
        .await
        .map(|_| ())
    }

    /// Requests newest first, of the given business units (all when `None`) and states,
    /// after `after` (create time, request id).
    pub async fn list(
        &self,
        bus: Option<&[String]>,
        states: &[request::State],
        after: Option<(i64, String)>,
        limit: u64,
    ) -> Result<Vec<request::Model>, DbErr> {
        let mut q = request::Entity::find();
        if let Some(bus) = bus {
            q = q.filter(request::Column::BusinessUnitId.is_in(bus.iter().cloned()));
        }
        if !states.is_empty() {
            q = q.filter(request::Column::State.is_in(states.iter().copied()));
        }
        if let Some((t, id)) = after {
            q = q.filter(
                Condition::any().add(request::Column::CreateTime.lt(t)).add(
                    Condition::all()
                        .add(request::Column::CreateTime.eq(t))
                        .add(request::Column::RequestId.lt(id)),
                ),
            );
        }
        q.order_by_desc(request::Column::CreateTime)
            .order_by_desc(request::Column::RequestId)
            .limit(limit)
            .all(&self.read)
            .await
    }

    /// Sets a business unit's provisioned limits (onboarding, a contract change, the demo
    /// tenancy) in one transaction: its limits are locked, it must have no open request
    /// (R5: that request was computed from the limits it has), `validate` computes the new
    /// limits from the current ones (R1, R2), an increase must fit the business unit's
    /// pool and cluster (R12, R13, under their locks), and the change is written with two audit
    /// events on the business unit: the limits changed, and who provisioned them and why.
    pub async fn provision(
        &self,
        bu: &str,
        membership: &Membership,
        actor: &str,
        reason: &str,
        now: i64,
        validate: impl FnOnce(sspm_rules::PortLimits) -> Result<sspm_rules::PortLimits, sspm_rules::Violations>,
    ) -> Result<Provisioned, DbErr> {
        let tx = self.begin().await?;
        let current = limits::Entity::find_by_id(bu.to_owned())
            .lock_exclusive()
            .unique(&tx)
            .await?;
        let open = request::Entity::find()
            .filter(request::Column::BusinessUnitId.eq(bu))
            .filter(Expr::cust(open_state_sql()))
            .unique(&tx)
            .await?;
        if let Some(open) = open {
            tx.rollback().await?;
            return Ok(Provisioned::OpenRequest(open.request_id));
        }
        let before = stored_limits(current.as_ref())?;
        let after = match validate(before) {
            Ok(after) => after,
            Err(v) => {
                tx.rollback().await?;
                return Ok(Provisioned::Invalid(v));
            }
        };
        if current.is_some() && after == before {
            tx.rollback().await?;
            return Ok(Provisioned::Unchanged(before));
        }
        if capacity::grows(before, after) {
            let room = capacity::room(&tx, bu, membership, before, true).await?;
            if let Err(v) = room.check(before, after) {
                tx.rollback().await?;
                return Ok(Provisioned::Invalid(v.into()));
            }
        }
        write_limits(
            &tx,
            current.as_ref(),
            limits_row(bu, after),
            Some(membership),
            &format!("provisioned by {actor}"),
            now,
        )
        .await?;
        audit::record_as(
            &tx,
            Some(actor),
            "limits.provisioned",
            bu,
            &format!("{before} -> {after}: {reason}"),
            now,
        )
        .await?;
        let event = NewEvent::limits_changed(
            bu,
            (before, after),
            None,
            actor,
            pb::PortLimitsChangeCause::Provisioned,
            reason.to_owned(),
            now,
        );
        events::append(&tx, bu, &[event]).await?;
        tx.commit().await?;
        Ok(Provisioned::Set { before, after })
    }
}

/// What [`Store::provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// Set now.
    Set {
        /// The limits before (zero when none were on record).
        before: sspm_rules::PortLimits,
        /// The limits now.
        after: sspm_rules::PortLimits,
    },
    /// The business unit had these limits already: nothing written.
    Unchanged(sspm_rules::PortLimits),
    /// Refused: the business unit has this open request (R5).
    OpenRequest(String),
    /// Refused: the limits break these rules.
    Invalid(sspm_rules::Violations),
}

/// What one attempt of [`Store::first_step`] wrote.
enum StepWrite {
    /// Everything.
    Done(Box<Written>),
    /// Nothing: the request is no longer new and undecided.
    Moved(Violation),
    /// Nothing: the limits are these, not those assumed; plan again.
    LimitsAre(sspm_rules::PortLimits),
    /// Nothing: the increase does not fit this room (R12, R13); plan again.
    RoomIs(Room),
    /// Nothing: another request holds this case number.
    CaseHeld(String),
}

/// One attempt of [`Store::first_step`] in `tx`, with `step` planned from the limits `assumed`.
async fn first_step_in(
    tx: &DatabaseTransaction,
    old: request::Model,
    assumed: sspm_rules::PortLimits,
    membership: Option<&Membership>,
    step: Step,
    now: i64,
    lease_until: i64,
) -> Result<Savepoint<StepWrite>, DbErr> {
    let id = old.request_id.clone();
    let bu = old.business_unit_id.clone();
    let mut audit = Vec::new();
    let changed = step.limits.map(|after| (assumed, after));
    if let Some(after) = step.limits {
        let was = (
            i32::from(assumed.concurrent.get()),
            i32::from(assumed.outbound.get()),
            i32::from(assumed.agentless.get()),
        );
        let (c, o, a) = (
            i32::from(after.concurrent.get()),
            i32::from(after.outbound.get()),
            i32::from(after.agentless.get()),
        );
        let mut update = limits::Entity::update_many()
            .col_expr(limits::Column::Concurrent, Expr::val(c))
            .col_expr(limits::Column::Outbound, Expr::val(o))
            .col_expr(limits::Column::Agentless, Expr::val(a))
            .col_expr(limits::Column::Version, Expr::col(limits::Column::Version).add(1))
            .col_expr(limits::Column::UpdateTime, Expr::val(now));
        if let Some(m) = membership {
            update = update
                .col_expr(limits::Column::Cluster, Expr::val(m.cluster.as_str()))
                .col_expr(limits::Column::PoolId, Expr::val(m.pool.as_str()));
        }
        let mut written = update
            .filter(limits::Column::BusinessUnitId.eq(bu.as_str()))
            .filter(limits::Column::Concurrent.eq(was.0))
            .filter(limits::Column::Outbound.eq(was.1))
            .filter(limits::Column::Agentless.eq(was.2))
            .exec(tx)
            .await?
            .rows_affected
            == 1;
        if !written && was == (0, 0, 0) {
            // No limits on record yet (zero): the first ones.
            let inserted = limits::Entity::insert(limits::ActiveModel {
                business_unit_id: Set(bu.clone()),
                concurrent: Set(c),
                outbound: Set(o),
                agentless: Set(a),
                version: Set(1),
                update_time: Set(now),
                cluster: Set(membership.map(|m| m.cluster.clone())),
                pool_id: Set(membership.map(|m| m.pool.clone())),
            })
            .on_conflict_do_nothing()
            .exec_without_returning(tx)
            .await?;
            written = matches!(inserted, sea_orm::TryInsertResult::Inserted(1));
        }
        if !written {
            let current = limits::Entity::find_by_id(bu.clone()).unique(tx).await?;
            let current = stored_limits(current.as_ref())?;
            return Ok(Savepoint::Undo(StepWrite::LimitsAre(current)));
        }
        // An increase locks its cluster and pool (after the limits row, as every writer
        // does) and is checked against them; it is planned again when it does not fit.
        if let Some(m) = membership.filter(|_| capacity::grows(assumed, after)) {
            let room = capacity::room(tx, &bu, m, assumed, true).await?;
            if room.check(assumed, after).is_err() {
                return Ok(Savepoint::Undo(StepWrite::RoomIs(room)));
            }
        }
        let before = format!("{}/{}/{}", was.0, was.1, was.2);
        let detail = limits_changed(&before, (c, o, a), &format!("applied by {id}"));
        audit.push((None, "limits.changed", bu.clone(), detail));
    }
    // Still new and undecided, and unlinked or linked to this very case (a request an
    // earlier version linked first).
    let case = step.set.iter().find_map(|s| match s {
        plan::Set::CaseNumber(c) => Some(c.clone()),
        _ => None,
    });
    let linked = match &old.case_number {
        Some(mine) => request::Column::CaseNumber.eq(mine.as_str()),
        None => request::Column::CaseNumber.is_null(),
    };
    let guard = Condition::all()
        .add(request::Column::State.eq(RequestState::New.as_str()))
        .add(request::Column::DecidedBy.is_null())
        .add(linked);
    match write_step_in(tx, old, step, audit, changed, guard, now, lease_until).await {
        Ok(Some(written)) => Ok(Savepoint::Keep(StepWrite::Done(Box::new(written)))),
        Ok(None) => Ok(Savepoint::Undo(StepWrite::Moved(Violation::new(
            Rule::Lifecycle,
            "request_id",
            format!("request {id} is no longer new and undecided"),
        )))),
        Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
            Ok(Savepoint::Undo(StepWrite::CaseHeld(case.unwrap_or_default())))
        }
        Err(e) => Err(e),
    }
}

/// `old` with what `step` sets, as it is after the step at `now`.
fn patched(mut r: request::Model, step: &Step, now: i64, lease_until: i64) -> request::Model {
    r.state = step.to().into();
    r.update_time = now;
    for set in &step.set {
        match set {
            plan::Set::CaseNumber(number) => r.case_number = Some(number.clone()),
            plan::Set::Decision(d) => {
                r.decided_by = Some(d.by.clone());
                r.decision_approved = Some(d.approved);
                r.decision_reason = Some(d.reason.clone());
                r.decide_time = Some(d.time);
                r.approval_path = Some(d.path);
            }
            plan::Set::Path(path) => r.approval_path = Some(*path),
            plan::Set::Justification(text) => r.justification = Some(text.clone()),
            plan::Set::FailureReason(why) => r.failure_reason = Some(why.clone()),
            plan::Set::Reverted(l) => {
                r.reverted_time = Some(now);
                r.reverted_concurrent = Some(l.concurrent.get().into());
                r.reverted_outbound = Some(l.outbound.get().into());
                r.reverted_agentless = Some(l.agentless.get().into());
            }
        }
    }
    if !step.effects.is_empty() {
        // Leased: whoever made the step carries the effects out; the worker once the
        // lease ends, if it could not.
        r.next_attempt_at = Some(lease_until);
        r.attempts = 0;
    }
    r
}

/// Writes `step` of request `old` in `tx` where `guard` still holds of its row: the row as
/// the step leaves it, one multi-row audit insert (`audit`, besides the step's own and its
/// history entry's), its events in one statement (the history entry, the approval task's,
/// and `port_limits.changed` when it changed the limits from `changed.0` to `changed.1`)
/// and the effects (their ids returned). `None`, and nothing written, when the guard no
/// longer holds.
#[allow(clippy::too_many_arguments)]
async fn write_step_in(
    tx: &DatabaseTransaction,
    old: request::Model,
    step: Step,
    mut audit: Vec<(Option<String>, &'static str, String, String)>,
    changed: Option<(sspm_rules::PortLimits, sspm_rules::PortLimits)>,
    guard: Condition,
    now: i64,
    lease_until: i64,
) -> Result<Option<Written>, DbErr> {
    let id = old.request_id.clone();
    let new = patched(old, &step, now, lease_until);
    let mut row = request::ActiveModel::from(new.clone()).reset_all();
    row.request_id = NotSet;
    let updated = request::Entity::update_many()
        .set(row)
        .filter(request::Column::RequestId.eq(id.as_str()))
        .filter(guard)
        .exec(tx)
        .await?;
    if updated.rows_affected != 1 {
        return Ok(None);
    }
    let Step {
        entry,
        audit: step_audit,
        effects,
        ..
    } = step;
    audit.extend(
        step_audit
            .into_iter()
            .map(|(actor, action, detail)| (actor, action, id.clone(), detail)),
    );
    audit.push((
        Some(entry.actor.clone()),
        audit_action(&entry),
        id.clone(),
        audit_detail(&entry),
    ));
    let rows: Vec<audit::Entry<'_>> = audit
        .iter()
        .map(|(actor, action, target, detail)| (actor.as_deref(), *action, target.as_str(), detail.clone()))
        .collect();
    audit::record_many(tx, &rows, now).await?;
    let limits_event = changed.map(|change| {
        let cause = if entry.kind == HistoryKind::Reverted {
            pb::PortLimitsChangeCause::Reverted
        } else {
            pb::PortLimitsChangeCause::Applied
        };
        let reason = format!(
            "{} by {id}",
            if entry.kind == HistoryKind::Reverted {
                "reverted"
            } else {
                "applied"
            }
        );
        NewEvent::limits_changed(
            &new.business_unit_id,
            change,
            Some(&new),
            &entry.actor,
            cause,
            reason,
            now,
        )
    });
    events::append(
        tx,
        &new.business_unit_id,
        &NewEvent::of_step(&new, &entry, now, limits_event),
    )
    .await?;
    let effects = if effects.is_empty() {
        Vec::new()
    } else {
        effect::Entity::insert_many(effects.iter().map(|e| effect::ActiveModel {
            id: NotSet,
            request_id: Set(id.clone()),
            kind: Set(e.kind),
            argument: Set(e.argument.clone()),
            actor: Set(e.actor.clone()),
            done_time: Set(None),
        }))
        .exec_with_returning(tx)
        .await?
    };
    Ok(Some(Written {
        history: HistoryEntry::of(&id, now, &entry),
        request: new,
        effects,
    }))
}

/// `state IN ('NEW', ...)` with the open states as literals, exactly as the partial index
/// of R5 (`ux_requests_one_open_per_business_unit`) is defined: with bound parameters
/// instead, neither SQLite nor a generic PostgreSQL plan can prove the index applies, and
/// they scan every request of the business unit.
pub(crate) fn open_state_sql() -> String {
    let open: Vec<String> = open_states().iter().map(|s| format!("'{s}'")).collect();
    format!("state IN ({})", open.join(", "))
}

fn open_states() -> Vec<String> {
    RequestState::ALL
        .into_iter()
        .filter(|s| s.is_open())
        .map(|s| request::State::from(s).to_value())
        .collect()
}

/// What the audit trail says of a business unit's limits going from `before` to `after`
/// (concurrent, outbound, agentless) because of `cause`.
fn limits_changed(before: &str, (c, o, a): (i32, i32, i32), cause: &str) -> String {
    format!("concurrent/outbound/agentless {before} -> {c}/{o}/{a} ({cause})")
}

/// Writes a business unit's limits (and, when known, what it draws on: `membership`).
async fn write_limits(
    tx: &DatabaseTransaction,
    current: Option<&limits::Model>,
    new: limits::Model,
    membership: Option<&Membership>,
    cause: &str,
    now: i64,
) -> Result<(), DbErr> {
    let before = current.map_or_else(
        || "none".to_owned(),
        |c| format!("{}/{}/{}", c.concurrent, c.outbound, c.agentless),
    );
    let detail = limits_changed(&before, (new.concurrent, new.outbound, new.agentless), cause);
    audit::record(tx, "limits.changed", &new.business_unit_id, &detail, now).await?;
    match current {
        Some(c) => {
            let mut update = limits::Entity::update_many()
                .col_expr(limits::Column::Concurrent, Expr::val(new.concurrent))
                .col_expr(limits::Column::Outbound, Expr::val(new.outbound))
                .col_expr(limits::Column::Agentless, Expr::val(new.agentless))
                .col_expr(limits::Column::Version, Expr::val(c.version + 1))
                .col_expr(limits::Column::UpdateTime, Expr::val(now));
            if let Some(m) = membership {
                update = update
                    .col_expr(limits::Column::Cluster, Expr::val(m.cluster.as_str()))
                    .col_expr(limits::Column::PoolId, Expr::val(m.pool.as_str()));
            }
            update
                .filter(limits::Column::BusinessUnitId.eq(c.business_unit_id.clone()))
                .exec(tx)
                .await
                .map(|_| ())
        }
        None => limits::Entity::insert(limits::ActiveModel {
            business_unit_id: Set(new.business_unit_id),
            concurrent: Set(new.concurrent),
            outbound: Set(new.outbound),
            agentless: Set(new.agentless),
            version: Set(1),
            update_time: Set(now),
            cluster: Set(membership.map(|m| m.cluster.clone())),
            pool_id: Set(membership.map(|m| m.pool.clone())),
        })
        .exec_without_returning(tx)
        .await
        .map(|_| ()),
    }
}

/// The audit action of history entry `e`.
fn audit_action(e: &Entry) -> &'static str {
    match (e.kind, e.from) {
        (HistoryKind::Transition, None) => "request.created",
        (HistoryKind::Transition, Some(_)) => "request.transition",
        (HistoryKind::Reverted, _) => "request.reverted",
        (HistoryKind::Note, _) => "request.note",
    }
}

/// What the audit trail says of history entry `e`.
fn audit_detail(e: &Entry) -> String {
    match e.from {
        Some(from) if from != e.to => format!("{} -> {}: {}", from.as_str(), e.to.as_str(), e.reason),
        _ => format!("{}: {}", e.to.as_str(), e.reason),
    }
}

/// The limits a raw query's row holds in `port_limits`' column names, when its
/// `business_unit_id` is not NULL (a `LEFT JOIN port_limits` that found none).
pub(crate) fn limits_in(row: &sea_orm::QueryResult) -> Result<Option<limits::Model>, DbErr> {
    let Some(business_unit_id) = row.try_get::<Option<String>>("", "business_unit_id")? else {
        return Ok(None);
    };
    Ok(Some(limits::Model {
        business_unit_id,
        concurrent: row.try_get("", "concurrent")?,
        outbound: row.try_get("", "outbound")?,
        agentless: row.try_get("", "agentless")?,
        version: row.try_get("", "version")?,
        update_time: row.try_get("", "update_time")?,
        cluster: row.try_get("", "cluster")?,
        pool_id: row.try_get("", "pool_id")?,
    }))
}

/// The row of `limits` for business unit `bu` (version and time are set when written).
pub(crate) fn limits_row(bu: &str, l: sspm_rules::PortLimits) -> limits::Model {
    limits::Model {
        business_unit_id: bu.to_owned(),
        concurrent: l.concurrent.get().into(),
        outbound: l.outbound.get().into(),
        agentless: l.agentless.get().into(),
        version: 0,
        update_time: 0,
        cluster: None,
        pool_id: None,
    }
}

/// A business unit's stored limits (zero when none are on record).
fn stored_limits(l: Option<&limits::Model>) -> Result<sspm_rules::PortLimits, DbErr> {
    l.map_or(Ok(sspm_rules::PortLimits::default()), |l| {
        sspm_rules::PortLimits::parse(l.concurrent.into(), l.outbound.into(), l.agentless.into(), "")
            .map_err(|e| DbErr::Custom(format!("stored limits of {} are invalid: {e}", l.business_unit_id)))
    })
}
