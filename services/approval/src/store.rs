//! Every query of the approval service, including the exact daily-limit ledger (R8).
//!
//! The ledger keeps one running total per (day, cluster) and per (day, business unit). An
//! evaluation locks both totals, decides with `sspm_rules::daily::evaluate` (the arithmetic
//! of R8, the same the dry run uses), adds the increase and records a reservation keyed by
//! the request id, in one transaction. Row locks (PostgreSQL) or the single writer (SQLite)
//! serialise concurrent evaluations on the same totals, so no number of replicas can
//! overrun a limit; the reservation's primary key makes a repeated evaluation of one
//! request count once.

use sea_orm::ActiveEnum;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, ExprTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait, TryInsertResult,
};
use sspm_platform::audit;
use sspm_platform::db::SelectUnique;
use sspm_platform::db::{DbErrorKind, classify};

use sspm_platform::group_commit::{Savepoint, Writer};
use sspm_rules::daily::{self, Budget};

use crate::entities::{daily_limit, decision, reservation, task, total};

use crate::entities::daily_limit::Scope;

/// One limit that applies to an increase, with the ledger total it is counted against.
#[derive(Debug, Clone)]
pub struct Applicable {
    /// The limit (for the default: as stored, or from config).
    pub limit: daily_limit::Model,
    /// Ledger scope (`Cluster` or `BusinessUnit`).
    pub ledger_scope: Scope,
    /// Ledger target (the cluster or business unit).
    pub ledger_target: String,
}

/// A limit with the day's usage.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The limit.
    pub limit: daily_limit::Model,
    /// Ports used that day.
    pub used: i32,
}

/// Result of an evaluation.
#[derive(Debug, Clone)]
pub enum Evaluated {
    /// Reserved now; the usage with it counted.
    Fits(Vec<Usage>),
    /// Reserved earlier by the same request.
    AlreadyReserved(reservation::Model),
    /// Does not fit; nothing reserved. The usage as it is.
    Exceeds(Vec<Usage>),
}

/// Result of a decision.
#[derive(Debug, Clone)]
pub enum Decided {
    /// Decided now.
    Now(task::Model),
    /// No such task.
    NotFound,
    /// Decided or withdrawn before.
    Already(task::Model),
}

/// The approval service's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Plain reads outside transactions (see [`Store::with_reader`]).
    read: DatabaseConnection,
    default_max: i32,
    /// How evaluations commit (group commit on SQLite: see [`Store::with_group_commit`]).
    writer: Writer,
}

impl Store {
    /// A store on `db`; `default_max` is the default daily limit until one is set.
    pub fn new(db: DatabaseConnection, default_max: u32) -> Self {
        Self {
            read: db.clone(),
            writer: Writer::new(db.clone(), 0),
            db,
            default_max: i32::try_from(default_max).unwrap_or(i32::MAX),
        }
    }

    /// The same store, with evaluations (one per create) committed in groups on SQLite
    /// (`sspm_platform::group_commit`); at most `queue` callers wait; 0 commits each alone.
    pub fn with_group_commit(mut self, queue: usize) -> Self {
        self.writer = Writer::new(self.db.clone(), queue);
        self
    }

    /// The same store, reading outside transactions from `read` (the service's reader
    /// pool: `ServiceApp::read_db`).
    pub fn with_reader(mut self, read: DatabaseConnection) -> Self {
        self.read = read;
        self
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The limits that apply to an increase of `business_unit_id` on `cluster`: the
    /// cluster's own limit or else the default, and the business unit's own limit if set.
    pub async fn applicable(
        &self,
        db: &impl ConnectionTrait,
        cluster: &str,
        business_unit_id: &str,
    ) -> Result<Vec<Applicable>, DbErr> {
        let rows = daily_limit::Entity::find()
            .filter(
                Condition::any()
                    .add(daily_limit::Column::Scope.eq(Scope::Default))
                    .add(
                        Condition::all()
                            .add(daily_limit::Column::Scope.eq(Scope::Cluster))
                            .add(daily_limit::Column::Target.eq(cluster)),
                    )
                    .add(
                        Condition::all()
                            .add(daily_limit::Column::Scope.eq(Scope::BusinessUnit))
                            .add(daily_limit::Column::Target.eq(business_unit_id)),
                    ),
            )
            .all(db)
            .await?;
        let find = |scope: Scope| rows.iter().find(|r| r.scope == scope).cloned();
        let cluster_limit =
            find(Scope::Cluster).unwrap_or_else(|| find(Scope::Default).unwrap_or_else(|| self.config_default()));
        let mut out = vec![Applicable {
            limit: cluster_limit,
            ledger_scope: Scope::Cluster,
            ledger_target: cluster.to_owned(),
        }];
        if let Some(bu) = find(Scope::BusinessUnit) {
            out.push(Applicable {
                limit: bu,
                ledger_scope: Scope::BusinessUnit,
                ledger_target: business_unit_id.to_owned(),
            });
        }
        Ok(out)
    }

    /// The default limit from config, until Network Operations sets one.
    pub fn config_default(&self) -> daily_limit::Model {
        daily_limit::Model {
            scope: Scope::Default,
            target: String::new(),
            max_daily_increase: self.default_max,
            updated_by: "config".to_owned(),
            update_time: 0,
        }
    }

    /// The day's usage under each applicable limit.
    pub async fn usage(&self, day: i64, cluster: &str, business_unit_id: &str) -> Result<Vec<Usage>, DbErr> {
        let limits = self.applicable(&self.db, cluster, business_unit_id).await?;
        let mut out = Vec::with_capacity(limits.len());
        for a in limits {
            let used = total::Entity::find_by_id((day, a.ledger_scope, a.ledger_target.clone()))
                .unique(&self.read)
                .await?
                .map_or(0, |t| t.used);
            out.push(Usage { limit: a.limit, used });
        }
        Ok(out)
    }

    /// Evaluates an increase and reserves it when it fits every applicable limit, with the
    /// usage under each limit after the evaluation.
    ///
    /// The arithmetic is `sspm_rules::daily::evaluate`, the one the dry run uses too. What
    /// makes it exact is the first statement: an upsert that creates the day's two totals at
    /// zero if needed and returns them, which on PostgreSQL locks both rows until commit
    /// (a concurrent evaluation waits there, then reads the committed totals) and on SQLite
    /// takes the database's write lock. Five statements in all when it fits.
    pub async fn evaluate(
        &self,
        request_id: &str,
        business_unit_id: &str,
        cluster: &str,
        increase: i32,
        day: i64,
        now: i64,
    ) -> Result<Evaluated, DbErr> {
        let store = self.clone();
        let (request_id, business_unit_id, cluster) =
            (request_id.to_owned(), business_unit_id.to_owned(), cluster.to_owned());
        let id = request_id.clone();
        let evaluated = self
            .writer
            .write(move |tx| {
                Box::pin(async move {
                    store
                        .evaluate_in(tx, &request_id, &business_unit_id, &cluster, increase, day, now)
                        .await
                })
            })
            .await?;
        match evaluated {
            // Evaluated before (a retry), concurrently, or released before it was evaluated:
            // the reservation on record is the answer, and nothing more is counted.
            None => reservation::Entity::find_by_id(id.clone())
                .unique(&self.db)
                .await?
                .map(Evaluated::AlreadyReserved)
                .ok_or_else(|| DbErr::Custom(format!("the reservation of {id} vanished"))),
            Some(e) => Ok(e),
        }
    }

    /// [`Store::evaluate`] in `tx`: `None` (and undone) when the request has a reservation.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_in(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        request_id: &str,
        business_unit_id: &str,
        cluster: &str,
        increase: i32,
        day: i64,
        now: i64,
    ) -> Result<Savepoint<Option<Evaluated>>, DbErr> {
        let backend = tx.get_database_backend();
        let totals = tx
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                "INSERT INTO ledger_totals (day, scope, target, used) VALUES ($1, $2, $3, 0), ($1, $4, $5, 0) \
                 ON CONFLICT (day, scope, target) DO UPDATE SET used = ledger_totals.used RETURNING scope, used",
                [
                    day.into(),
                    Scope::Cluster.into(),
                    cluster.into(),
                    Scope::BusinessUnit.into(),
                    business_unit_id.into(),
                ],
            ))
            .await?;
        let mut used = std::collections::HashMap::new();
        for row in totals {
            let scope = Scope::try_from_value(&row.try_get::<String>("", "scope")?)?;
            used.insert(scope, row.try_get::<i32>("", "used")?);
        }
        let limits = self.applicable(tx, cluster, business_unit_id).await?;
        let budgets: Vec<Budget> = limits
            .iter()
            .map(|a| Budget {
                scope: a.limit.scope.into(),
                max: u32::try_from(a.limit.max_daily_increase).unwrap_or(0),
                used: u32::try_from(used.get(&a.ledger_scope).copied().unwrap_or(0)).unwrap_or(0),
            })
            .collect();
        let evaluation = daily::evaluate(&budgets, u32::try_from(increase).unwrap_or(u32::MAX));
        let usage = limits
            .into_iter()
            .zip(&evaluation.budgets)
            .map(|(a, b)| Usage {
                limit: a.limit,
                used: i32::try_from(b.used).unwrap_or(i32::MAX),
            })
            .collect();
        if !evaluation.fits {
            // A retry of an evaluation that fitted: the totals include its own reservation,
            // which must not count against it a second time. Only this path looks (a
            // fitting one finds out from its insert below).
            let reserved = reservation::Entity::find_by_id(request_id.to_owned())
                .unique(tx)
                .await?
                .is_some();
            if reserved {
                return Ok(Savepoint::Undo(None));
            }
            return Ok(Savepoint::Undo(Some(Evaluated::Exceeds(usage))));
        }
        // The business unit's total counts every increase, limited or not: a limit set on
        // it later in the day starts from what it already received.
        total::Entity::update_many()
            .col_expr(total::Column::Used, Expr::col(total::Column::Used).add(increase))
            .filter(total::Column::Day.eq(day))
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(total::Column::Scope.eq(Scope::Cluster))
                            .add(total::Column::Target.eq(cluster)),
                    )
                    .add(
                        Condition::all()
                            .add(total::Column::Scope.eq(Scope::BusinessUnit))
                            .add(total::Column::Target.eq(business_unit_id)),
                    ),
            )
            .exec(tx)
            .await?;
        let inserted = reservation::Entity::insert(reservation::ActiveModel {
            request_id: Set(request_id.to_owned()),
            day: Set(day),
            cluster: Set(cluster.to_owned()),
            business_unit_id: Set(business_unit_id.to_owned()),
            increase: Set(increase),
            create_time: Set(now),
            release_time: Set(None),
        })
        .exec_without_returning(tx)
        .await;
        match inserted {
            Ok(_) => {
                let detail = format!(
                    "+{increase} concurrent ports on {business_unit_id} (cluster {cluster}) reserved in day {day}'s budget"
                );
                audit::record(tx, "reservation.made", request_id, &detail, now).await?;
                Ok(Savepoint::Keep(Some(Evaluated::Fits(usage))))
            }
            Err(e) if classify(&e) == DbErrorKind::UniqueViolation => Ok(Savepoint::Undo(None)),
            Err(e) => Err(e),
        }
    }

    /// Releases a request's reservation; whether there was one to release.
    ///
    /// A request with no reservation yet gets a released, empty one: an evaluation still in
    /// flight (a request cancelled while the request service was evaluating it) then finds
    /// it and reserves nothing, so a release always wins over an evaluation whatever order
    /// they arrive in.
    pub async fn release(&self, request_id: &str, day: i64, now: i64) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        // Waits for an evaluation of the same request that is committing (PostgreSQL's
        // unique index), then either leaves the tombstone or finds the reservation.
        let tombstone = reservation::Entity::insert(reservation::ActiveModel {
            request_id: Set(request_id.to_owned()),
            day: Set(day),
            cluster: Set(String::new()),
            business_unit_id: Set(String::new()),
            increase: Set(0),
            create_time: Set(now),
            release_time: Set(Some(now)),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(&tx)
        .await?;
        if matches!(tombstone, TryInsertResult::Inserted(1)) {
            audit::record(
                &tx,
                "reservation.refused",
                request_id,
                "released before any evaluation: nothing reserved, and nothing will be",
                now,
            )
            .await?;
            tx.commit().await?;
            return Ok(false);
        }
        let released = reservation::Entity::update_many()
            .col_expr(reservation::Column::ReleaseTime, Expr::val(now))
            .filter(reservation::Column::RequestId.eq(request_id))
            .filter(reservation::Column::ReleaseTime.is_null())
            .exec(&tx)
            .await?
            .rows_affected
            == 1;
        if released
            && let Some(r) = reservation::Entity::find_by_id(request_id.to_owned())
                .unique(&tx)
                .await?
        {
            for (scope, target) in [(Scope::Cluster, &r.cluster), (Scope::BusinessUnit, &r.business_unit_id)] {
                total::Entity::update_many()
                    .col_expr(total::Column::Used, Expr::col(total::Column::Used).sub(r.increase))
                    .filter(total::Column::Day.eq(r.day))
                    .filter(total::Column::Scope.eq(scope))
                    .filter(total::Column::Target.eq(target.as_str()))
                    .exec(&tx)
                    .await?;
            }
            let detail = format!("+{} concurrent ports returned to day {}'s budget", r.increase, r.day);
            audit::record(&tx, "reservation.released", request_id, &detail, now).await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    /// Creates a request's task unless it has one; the task.
    pub async fn submit(&self, t: task::Model) -> Result<task::Model, DbErr> {
        let request_id = t.request_id.clone();
        let tx = self.db.begin().await?;
        let existing = task::Entity::find()
            .filter(task::Column::RequestId.eq(request_id.as_str()))
            .unique(&tx)
            .await?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
        let detail = format!(
            "review of {} on {}: concurrent {} -> {}",
            t.request_id,
            t.business_unit_id,
            t.before_concurrent,
            t.target_concurrent
                .map_or_else(|| "unchanged".to_owned(), |c| c.to_string())
        );
        let (task_id, now) = (t.task_id.clone(), t.create_time);
        let inserted = task::Entity::insert(task::ActiveModel::from(t))
            .exec_without_returning(&tx)
            .await;
        match inserted {
            Ok(_) => {
                audit::record(&tx, "task.submitted", &task_id, &detail, now).await?;
                tx.commit().await?;
            }
            // Submitted concurrently by another call: that one is the task.
            Err(e) if classify(&e) == DbErrorKind::UniqueViolation => tx.rollback().await?,
            Err(e) => return Err(e),
        }
        self.task_of_request(&request_id)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("task of {request_id} after insert")))
    }

    /// A task by id.
    pub async fn task(&self, task_id: &str) -> Result<Option<task::Model>, DbErr> {
        task::Entity::find_by_id(task_id.to_owned()).unique(&self.read).await
    }

    /// A request's task.
    pub async fn task_of_request(&self, request_id: &str) -> Result<Option<task::Model>, DbErr> {
        task::Entity::find()
            .filter(task::Column::RequestId.eq(request_id))
            .unique(&self.read)
            .await
    }

    /// Withdraws a request's pending task; the task as it is now.
    pub async fn withdraw(&self, request_id: &str, reason: &str, now: i64) -> Result<Option<task::Model>, DbErr> {
        let tx = self.db.begin().await?;
        let withdrawn = task::Entity::update_many()
            .col_expr(task::Column::State, Expr::val(task::State::Withdrawn.to_value()))
            .col_expr(task::Column::DecisionReason, Expr::val(reason))
            .col_expr(task::Column::DecideTime, Expr::val(now))
            .filter(task::Column::RequestId.eq(request_id))
            .filter(task::Column::State.eq(task::State::Pending))
            .exec(&tx)
            .await?
            .rows_affected
            == 1;
        if withdrawn {
            let task_id = format!("{TASK_PREFIX}{request_id}");
            audit::record(&tx, "task.withdrawn", &task_id, &format!("withdrawn: {reason}"), now).await?;
        }
        tx.commit().await?;
        self.task_of_request(request_id).await
    }

    /// Decides a pending task and appends the decision to the log, atomically.
    pub async fn decide(
        &self,
        task_id: &str,
        approved: bool,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<Decided, DbErr> {
        let tx = self.db.begin().await?;
        let state = if approved {
            task::State::Approved
        } else {
            task::State::Rejected
        };
        let changed = task::Entity::update_many()
            .col_expr(task::Column::State, Expr::val(state.to_value()))
            .col_expr(task::Column::DecidedBy, Expr::val(by))
            .col_expr(task::Column::DecisionReason, Expr::val(reason))
            .col_expr(task::Column::DecideTime, Expr::val(now))
            .filter(task::Column::TaskId.eq(task_id))
            .filter(task::Column::State.eq(task::State::Pending))
            .exec(&tx)
            .await?
            .rows_affected
            == 1;
        let Some(t) = task::Entity::find_by_id(task_id.to_owned()).unique(&tx).await? else {
            tx.rollback().await?;
            return Ok(Decided::NotFound);
        };
        if !changed {
            tx.rollback().await?;
            return Ok(Decided::Already(t));
        }
        decision::Entity::insert(decision::ActiveModel {
            cursor: sea_orm::ActiveValue::NotSet,
            task_id: Set(t.task_id.clone()),
            request_id: Set(t.request_id.clone()),
            approved: Set(approved),
            decided_by: Set(by.to_owned()),
            reason: Set(reason.to_owned()),
            decide_time: Set(now),
        })
        .exec(&tx)
        .await?;
        let verdict = if approved { "approved" } else { "rejected" };
        audit::record_as(
            &tx,
            Some(by),
            "task.decided",
            task_id,
            &format!("{verdict}: {reason}"),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Decided::Now(t))
    }

    /// Decisions after `cursor`, in log order.
    pub async fn decisions_after(&self, cursor: i64, limit: u64) -> Result<Vec<(decision::Model, task::Model)>, DbErr> {
        let events = decision::Entity::find()
            .filter(decision::Column::Cursor.gt(cursor))
            .order_by_asc(decision::Column::Cursor)
            .limit(limit)
            .all(&self.read)
            .await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if let Some(t) = self.task(&e.task_id).await? {
                out.push((e, t));
            }
        }
        Ok(out)
    }

    /// Tasks oldest first after `after` (create time, task id), filtered.
    pub async fn tasks(
        &self,
        states: &[task::State],
        cluster: Option<&str>,
        after: Option<(i64, String)>,
        limit: u64,
    ) -> Result<Vec<task::Model>, DbErr> {
        let mut q = task::Entity::find();
        if !states.is_empty() {
            q = q.filter(task::Column::State.is_in(states.iter().copied()));
        }
        if let Some(c) = cluster {
            q = q.filter(task::Column::Cluster.eq(c));
        }
        if let Some((t, id)) = after {
            q = q.filter(
                Condition::any().add(task::Column::CreateTime.gt(t)).add(
                    Condition::all()
                        .add(task::Column::CreateTime.eq(t))
                        .add(task::Column::TaskId.gt(id)),
                ),
            );
        }
        q.order_by_asc(task::Column::CreateTime)
            .order_by_asc(task::Column::TaskId)
            .limit(limit)
            .all(&self.read)
            .await
    }

    /// Sets a limit (insert or replace).
    pub async fn set_limit(&self, l: daily_limit::Model) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        let before = daily_limit::Entity::find()
            .filter(daily_limit::Column::Scope.eq(l.scope))
            .filter(daily_limit::Column::Target.eq(l.target.as_str()))
            .unique(&tx)
            .await?
            .map_or_else(|| "none".to_owned(), |b| b.max_daily_increase.to_string());
        let target = limit_target(l.scope, &l.target);
        let detail = format!("max daily increase {before} -> {}", l.max_daily_increase);
        let (by, now) = (l.updated_by.clone(), l.update_time);
        daily_limit::Entity::insert(daily_limit::ActiveModel::from(l))
            .on_conflict(
                OnConflict::columns([daily_limit::Column::Scope, daily_limit::Column::Target])
                    .update_columns([
                        daily_limit::Column::MaxDailyIncrease,
                        daily_limit::Column::UpdatedBy,
                        daily_limit::Column::UpdateTime,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&tx)
            .await?;
        audit::record_as(&tx, Some(&by), "daily_limit.set", &target, &detail, now).await?;
        tx.commit().await
    }

    /// Removes a limit; whether there was one.
    pub async fn clear_limit(&self, scope: Scope, target: &str, now: i64) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        let cleared = daily_limit::Entity::delete_many()
            .filter(daily_limit::Column::Scope.eq(scope))
            .filter(daily_limit::Column::Target.eq(target))
            .exec(&tx)
            .await?
            .rows_affected
            > 0;
        if cleared {
            audit::record(&tx, "daily_limit.cleared", &limit_target(scope, target), "cleared", now).await?;
        }
        tx.commit().await?;
        Ok(cleared)
    }

    /// Every limit that is set, the default first (from config when not set).
    pub async fn limits(&self) -> Result<Vec<daily_limit::Model>, DbErr> {
        let mut rows = daily_limit::Entity::find().all(&self.read).await?;
        if !rows.iter().any(|r| r.scope == Scope::Default) {
            rows.push(self.config_default());
        }
        rows.sort_by(|a, b| (a.scope, &a.target).cmp(&(b.scope, &b.target)));
        Ok(rows)
    }

    /// Business figures: for each cluster with a limit of its own or usage on `day`, its
    /// daily limit and the ports used; and the number of approval tasks by state.
    pub async fn figures(&self, day: i64) -> Result<(Vec<(String, i32, i32)>, Vec<(String, i64)>), DbErr> {
        // Only the default and the clusters' limits (the key's first column): a scrape does
        // not read every business unit's limit.
        let limits = daily_limit::Entity::find()
            .filter(daily_limit::Column::Scope.is_in([Scope::Default, Scope::Cluster]))
            .all(&self.read)
            .await?;
        let default = limits
            .iter()
            .find(|l| l.scope == Scope::Default)
            .map_or(self.default_max, |l| l.max_daily_increase);
        let used: Vec<(String, i32)> = total::Entity::find()
            .select_only()
            .column(total::Column::Target)
            .column(total::Column::Used)
            .filter(total::Column::Day.eq(day))
            .filter(total::Column::Scope.eq(Scope::Cluster))
            .into_tuple()
            .all(&self.read)
            .await?;
        let mut clusters: Vec<(String, i32, i32)> = limits
            .iter()
            .filter(|l| l.scope == Scope::Cluster)
            .map(|l| (l.target.clone(), l.max_daily_increase, 0))
            .collect();
        for (cluster, n) in used {
            match clusters.iter_mut().find(|(c, _, _)| *c == cluster) {
                Some(entry) => entry.2 = n,
                None => clusters.push((cluster, default, n)),
            }
        }
        let tasks = task::Entity::find()
            .select_only()
            .column(task::Column::State)
            .column_as(task::Column::TaskId.count(), "n")
            .group_by(task::Column::State)
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok((clusters, tasks))
    }
}

/// A task's id is this prefix and its request's id.
pub const TASK_PREFIX: &str = "task-";

/// A limit as an audit target: `DEFAULT`, `CLUSTER/C14`, `BUSINESS_UNIT/bu-1042`.
fn limit_target(scope: Scope, target: &str) -> String {
    if target.is_empty() {
        scope.to_string()
    } else {
        format!("{scope}/{target}")
    }
}
