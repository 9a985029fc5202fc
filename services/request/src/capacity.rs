//! Partner pools (R12) and cluster capacity (R13) in the request service's database
//! (docs/ARCHITECTURE.md, "Rules"): what a business unit draws on, the sizes, and the sums.
//!
//! Exact under concurrency and replicas, as the daily limit is. Every write of a business
//! unit's limits locks its `port_limits` row first (or writes it); a write that raises them
//! then reads the sizes of its cluster and pool with a statement that also locks the rows
//! of the sized ones in `port_capacities`, and, when one is sized, sums the other business
//! units' limits, in the transaction that writes the limits. Two increases on one
//! sized level therefore run one after the other, and the second sums what the first
//! committed (PostgreSQL's READ COMMITTED reads with a new snapshot per statement; SQLite has
//! one writer). Setting a size takes `port_limits` in EXCLUSIVE mode first (PostgreSQL),
//! which waits for every transaction holding a limits row and holds off new ones until it
//! commits: a size is never set while an increase that read none is still writing (and a
//! size read under a held limits row cannot change before the transaction ends). An
//! increase on unsized levels costs one statement and takes no lock; a decrease frees ports
//! and is never checked.

use sea_orm::{ActiveEnum, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, Value};
use sspm_platform::audit;
use sspm_proto::v1 as pb;
use sspm_rules::capacity::Ports;
use sspm_rules::{PortLimits, Violation, Violations};

use crate::entities::capacity::{self, Level};
use crate::entities::limits;
use crate::events::{self, NewEvent};

/// What a business unit draws on: its cluster, and its pool (its partner's; its own when it
/// has no partner, which is how a partner's own business unit draws on its pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The cluster.
    pub cluster: String,
    /// The pool's id: a partner's business unit id.
    pub pool: String,
}

impl Membership {
    /// The membership of a business unit as the authorization service describes it.
    pub fn of(bu: &pb::BusinessUnit) -> Self {
        Self {
            cluster: bu.cluster.clone(),
            pool: if bu.partner_id.is_empty() {
                bu.business_unit_id.clone()
            } else {
                bu.partner_id.clone()
            },
        }
    }

    /// Each level with its name, cluster first (the order locks are taken in).
    fn levels(&self) -> [(Level, &str); 2] {
        [(Level::Cluster, &self.cluster), (Level::Pool, &self.pool)]
    }
}

/// One level as a change of one business unit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelState {
    /// Pool or cluster.
    pub level: Level,
    /// The pool's or cluster's name.
    pub name: String,
    /// Its size; `None`: unbounded.
    pub size: Option<Ports>,
    /// What is allocated from it, the business unit's current limits included.
    pub allocated: Ports,
}

/// The levels a business unit draws on; none known, or none sized, is unbounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Room {
    /// Cluster first, then pool.
    pub levels: Vec<LevelState>,
}

impl Room {
    /// Whether changing the business unit's limits from `before` (counted in each level's
    /// allocation) to `after` fits every sized level (R13, then R12).
    pub fn check(&self, before: PortLimits, after: PortLimits) -> Result<(), Violation> {
        for l in &self.levels {
            if let Some(size) = l.size {
                sspm_rules::capacity::check_change(l.level.into(), &l.name, size, l.allocated, before, after)?;
            }
        }
        Ok(())
    }
}

/// Whether a change from `before` to `after` raises any kind (only then are levels locked).
pub fn grows(before: PortLimits, after: PortLimits) -> bool {
    sspm_rules::PortKind::ALL
        .into_iter()
        .any(|k| after.get(k) > before.get(k))
}

/// The size a stored row holds (`None`: unbounded).
fn size_of(c: Option<i32>, o: Option<i32>, a: Option<i32>) -> Option<Ports> {
    let n = |v: i32| u32::try_from(v).unwrap_or(0);
    match (c, o, a) {
        (Some(c), Some(o), Some(a)) => Some(Ports {
            concurrent: n(c),
            outbound: n(o),
            agentless: n(a),
        }),
        _ => None,
    }
}

/// Locks the row of level `level` `name` (creating it, without a size, when there is none)
/// and returns its size.
pub async fn lock_level<C: ConnectionTrait>(db: &C, level: Level, name: &str) -> Result<Option<Ports>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "INSERT INTO port_capacities (level, target, update_time) VALUES ($1, $2, 0) \
             ON CONFLICT (level, target) DO UPDATE SET update_time = port_capacities.update_time \
             RETURNING concurrent, outbound, agentless",
            [level.to_value().into(), name.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("the lock of {level:?} {name} answered no row")))?;
    Ok(size_of(
        row.try_get("", "concurrent")?,
        row.try_get("", "outbound")?,
        row.try_get("", "agentless")?,
    ))
}

/// The sizes of a business unit's levels: with `lock`, the rows of the sized ones locked by
/// the same statement (an `UPDATE … RETURNING` that touches only rows with a size; a level
/// without one takes no lock), else read as they are.
async fn sizes<C: ConnectionTrait>(db: &C, m: &Membership, lock: bool) -> Result<[Option<Ports>; 2], DbErr> {
    let sql = if lock {
        "UPDATE port_capacities SET update_time = update_time WHERE concurrent IS NOT NULL \
         AND ((level = $1 AND target = $2) OR (level = $3 AND target = $4)) \
         RETURNING level, concurrent, outbound, agentless"
    } else {
        "SELECT level, concurrent, outbound, agentless FROM port_capacities \
         WHERE (level = $1 AND target = $2) OR (level = $3 AND target = $4)"
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [
                Level::Cluster.to_value().into(),
                m.cluster.as_str().into(),
                Level::Pool.to_value().into(),
                m.pool.as_str().into(),
            ],
        ))
        .await?;
    let mut out = [None, None];
    for row in rows {
        let level = Level::try_from_value(&row.try_get::<String>("", "level")?)?;
        let slot = usize::from(level == Level::Pool);
        out[slot] = size_of(
            row.try_get("", "concurrent")?,
            row.try_get("", "outbound")?,
            row.try_get("", "agentless")?,
        );
    }
    Ok(out)
}

/// What the business units other than `bu` hold on `m`'s cluster and on its pool, in one
/// statement.
async fn others<C: ConnectionTrait>(db: &C, bu: &str, m: &Membership) -> Result<[Ports; 2], DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            format!(
                "SELECT {} FROM port_limits WHERE (cluster = $1 OR pool_id = $2) AND business_unit_id <> $3",
                SUMS
            ),
            [m.cluster.as_str().into(), m.pool.as_str().into(), bu.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("a sum answered no row".into()))?;
    sums_of(&row)
}

/// The six sums (cluster, then pool) of the rows of `port_limits` selected, over columns
/// `cluster = $1` and `pool_id = $2`.
const SUMS: &str = "COALESCE(SUM(CASE WHEN cluster = $1 THEN concurrent ELSE 0 END), 0) AS cc, \
    COALESCE(SUM(CASE WHEN cluster = $1 THEN outbound ELSE 0 END), 0) AS co, \
    COALESCE(SUM(CASE WHEN cluster = $1 THEN agentless ELSE 0 END), 0) AS ca, \
    COALESCE(SUM(CASE WHEN pool_id = $2 THEN concurrent ELSE 0 END), 0) AS pc, \
    COALESCE(SUM(CASE WHEN pool_id = $2 THEN outbound ELSE 0 END), 0) AS po, \
    COALESCE(SUM(CASE WHEN pool_id = $2 THEN agentless ELSE 0 END), 0) AS pa";

fn sums_of(row: &sea_orm::QueryResult) -> Result<[Ports; 2], DbErr> {
    let n = |col: &str| -> Result<u32, DbErr> { Ok(u32::try_from(row.try_get::<i64>("", col)?).unwrap_or(u32::MAX)) };
    Ok([
        Ports {
            concurrent: n("cc")?,
            outbound: n("co")?,
            agentless: n("ca")?,
        },
        Ports {
            concurrent: n("pc")?,
            outbound: n("po")?,
            agentless: n("pa")?,
        },
    ])
}

/// The room of the sized levels among `sizes`, with `others` held by the other business
/// units and `current` by this one.
fn room_of(m: &Membership, sizes: [Option<Ports>; 2], others: [Ports; 2], current: PortLimits) -> Room {
    let levels = m
        .levels()
        .into_iter()
        .zip(sizes)
        .zip(others)
        .filter_map(|(((level, name), size), others)| {
            size.map(|size| LevelState {
                level,
                name: name.to_owned(),
                size: Some(size),
                allocated: others.with_change(PortLimits::default(), current),
            })
        })
        .collect();
    Room { levels }
}

/// The limits summed over the business units recorded as drawing on level `level` `name`,
/// except `except` (empty: none excepted).
pub async fn allocated<C: ConnectionTrait>(db: &C, level: Level, name: &str, except: &str) -> Result<Ports, DbErr> {
    Ok(allocated_and_count(db, level, name, except).await?.0)
}

/// [`allocated`], with how many business units hold it.
async fn allocated_and_count<C: ConnectionTrait>(
    db: &C,
    level: Level,
    name: &str,
    except: &str,
) -> Result<(Ports, u32), DbErr> {
    let column = match level {
        Level::Cluster => "cluster",
        Level::Pool => "pool_id",
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            format!(
                "SELECT COALESCE(SUM(concurrent), 0) AS c, COALESCE(SUM(outbound), 0) AS o, \
                 COALESCE(SUM(agentless), 0) AS a, COUNT(*) AS n FROM port_limits \
                 WHERE {column} = $1 AND business_unit_id <> $2"
            ),
            [Value::from(name), Value::from(except)],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("a sum answered no row".into()))?;
    let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    let sum = Ports {
        concurrent: n(row.try_get("", "c")?),
        outbound: n(row.try_get("", "o")?),
        agentless: n(row.try_get("", "a")?),
    };
    Ok((sum, n(row.try_get("", "n")?)))
}

/// The room of business unit `bu` (`m`), whose limits are `current`: the sizes of its
/// levels and, for each sized one, what is allocated from it. With `lock` (inside a write
/// transaction that holds the business unit's limits row), the sized levels' rows are locked
/// by the statement that reads their sizes, before the sum; without, they are read as they
/// are. One statement when no level is sized, two when one is.
pub async fn room<C: ConnectionTrait>(
    db: &C,
    bu: &str,
    m: &Membership,
    current: PortLimits,
    lock: bool,
) -> Result<Room, DbErr> {
    let sizes = sizes(db, m, lock).await?;
    if sizes.iter().all(Option::is_none) {
        return Ok(Room::default());
    }
    Ok(room_of(m, sizes, others(db, bu, m).await?, current))
}

/// A business unit's limits (if SSPM has any on record) and its room (unlocked, as for
/// [`room`]), read in one statement (and one more for the sums when a level is sized): what a create checks
/// its change against before it writes anything.
pub async fn limits_and_room<C: ConnectionTrait>(
    db: &C,
    bu: &str,
    m: &Membership,
) -> Result<(Option<limits::Model>, Room), DbErr> {
    let sql = format!(
        "SELECT l.business_unit_id, l.concurrent, l.outbound, l.agentless, l.version, l.update_time, \
         l.cluster, l.pool_id, c.concurrent AS cc, c.outbound AS co, c.agentless AS ca, \
         p.concurrent AS pc, p.outbound AS po, p.agentless AS pa \
         FROM (SELECT 1 AS one) AS d \
         LEFT JOIN port_limits l ON l.business_unit_id = $1 \
         LEFT JOIN port_capacities c ON c.level = '{}' AND c.target = $2 \
         LEFT JOIN port_capacities p ON p.level = '{}' AND p.target = $3",
        Level::Cluster.to_value(),
        Level::Pool.to_value()
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [bu.into(), m.cluster.as_str().into(), m.pool.as_str().into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the limits query answered no row".into()))?;
    let limits = crate::store::limits_in(&row)?;
    let current = crate::model::limits_of(limits.as_ref());
    let sizes = [
        size_of(row.try_get("", "cc")?, row.try_get("", "co")?, row.try_get("", "ca")?),
        size_of(row.try_get("", "pc")?, row.try_get("", "po")?, row.try_get("", "pa")?),
    ];
    if sizes.iter().all(Option::is_none) {
        return Ok((limits, Room::default()));
    }
    let room = room_of(m, sizes, others(db, bu, m).await?, current);
    Ok((limits, room))
}

/// The most shares a pool's view lists, and the most clusters a list answers.
pub const MAX_LISTED: u64 = 1_000;

/// A pool or a cluster as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelView {
    /// Pool or cluster.
    pub level: Level,
    /// Its name.
    pub name: String,
    /// Its size; `None`: unbounded.
    pub size: Option<Ports>,
    /// What its business units hold together.
    pub allocated: Ports,
    /// How many business units hold it.
    pub units: u32,
    /// For a pool, each business unit's limits (at most [`MAX_LISTED`], by id).
    pub shares: Vec<limits::Model>,
    /// More business units than `shares` lists.
    pub truncated: bool,
    /// Who set the size last.
    pub updated_by: Option<String>,
    /// When (0: never).
    pub update_time: i64,
}

/// Level `level` `name` as it stands; with `shares`, its business units' limits too.
pub async fn view<C: ConnectionTrait>(db: &C, level: Level, name: &str, shares: bool) -> Result<LevelView, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    let row = capacity::Entity::find_by_id((level, name.to_owned())).one(db).await?;
    let (allocated, units) = allocated_and_count(db, level, name, "").await?;
    let (shares, truncated) = if shares {
        let column = match level {
            Level::Cluster => limits::Column::Cluster,
            Level::Pool => limits::Column::PoolId,
        };
        let mut rows = limits::Entity::find()
            .filter(column.eq(name))
            .order_by_asc(limits::Column::BusinessUnitId)
            .limit(MAX_LISTED + 1)
            .all(db)
            .await?;
        let truncated = rows.len() as u64 > MAX_LISTED;
        rows.truncate(MAX_LISTED as usize);
        (rows, truncated)
    } else {
        (Vec::new(), false)
    };
    Ok(LevelView {
        level,
        name: name.to_owned(),
        size: row
            .as_ref()
            .and_then(|r| size_of(r.concurrent, r.outbound, r.agentless)),
        allocated,
        units,
        shares,
        truncated,
        updated_by: row.as_ref().and_then(|r| r.updated_by.clone()),
        update_time: row.map_or(0, |r| r.update_time),
    })
}

/// Every cluster with a capacity set or limits on record, by name (at most [`MAX_LISTED`]).
pub async fn clusters<C: ConnectionTrait>(db: &C) -> Result<Vec<LevelView>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT target AS name FROM port_capacities WHERE level = $1 AND concurrent IS NOT NULL \
             UNION SELECT cluster AS name FROM port_limits WHERE cluster IS NOT NULL \
             ORDER BY name LIMIT $2",
            [Level::Cluster.to_value().into(), (MAX_LISTED as i64).into()],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("", "name")?;
        out.push(view(db, Level::Cluster, &name, false).await?);
    }
    Ok(out)
}

/// What [`set_size`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeSet {
    /// The size before (`None`: there was none).
    pub before: Option<Ports>,
    /// The level as it is now.
    pub after: LevelView,
}

/// Sets (`Some`) or clears (`None`) the size of level `level` `name` in `tx`, on behalf of
/// `actor` for `reason`, with its audit event and its feed event; refused (nothing written)
/// below what is allocated (R12, R13). `None` when a clear found no size. On PostgreSQL the
/// limits table is taken in EXCLUSIVE mode first (see the module's documentation).
#[allow(clippy::too_many_arguments)]
pub async fn set_size(
    tx: &DatabaseTransaction,
    level: Level,
    name: &str,
    size: Option<Ports>,
    actor: &str,
    reason: &str,
    now: i64,
) -> Result<Result<Option<SizeSet>, Violations>, DbErr> {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    if tx.get_database_backend() == DbBackend::Postgres {
        tx.execute_unprepared("LOCK TABLE port_limits IN EXCLUSIVE MODE")
            .await?;
    }
    let before = lock_level(tx, level, name).await?;
    if size.is_none() && before.is_none() {
        return Ok(Ok(None));
    }
    let allocated = allocated(tx, level, name, "").await?;
    let prefix = "size";
    if let Some(size) = size
        && let Err(v) = sspm_rules::capacity::check_resize(level.into(), name, size, allocated, prefix)
    {
        return Ok(Err(v));
    }
    let n = |f: fn(&Ports) -> u32| size.map(|s| i32::try_from(f(&s)).unwrap_or(i32::MAX));
    capacity::Entity::update_many()
        .col_expr(capacity::Column::Concurrent, Expr::val(n(|s| s.concurrent)))
        .col_expr(capacity::Column::Outbound, Expr::val(n(|s| s.outbound)))
        .col_expr(capacity::Column::Agentless, Expr::val(n(|s| s.agentless)))
        .col_expr(capacity::Column::UpdatedBy, Expr::val(actor))
        .col_expr(capacity::Column::UpdateTime, Expr::val(now))
        .filter(capacity::Column::Level.eq(level))
        .filter(capacity::Column::Target.eq(name))
        .exec(tx)
        .await?;
    let (noun, pool) = match level {
        Level::Pool => ("partner_pool", true),
        Level::Cluster => ("cluster_capacity", false),
    };
    let show = |p: Option<Ports>| p.map_or_else(|| "none".to_owned(), |p| p.to_string());
    let detail = format!("{} -> {}: {reason}", show(before), show(size));
    let action = if size.is_some() {
        format!("{noun}.set")
    } else {
        format!("{noun}.cleared")
    };
    audit::record_as(tx, Some(actor), &action, name, &detail, now).await?;
    let payload = pb::CapacityChanged {
        partner_id: if pool { name.to_owned() } else { String::new() },
        cluster: if pool { String::new() } else { name.to_owned() },
        size_before: before.map(counts_pb),
        size_after: size.map(counts_pb),
        allocated: Some(counts_pb(allocated)),
        actor: actor.to_owned(),
        reason: reason.to_owned(),
    };
    events::append(tx, name, &[NewEvent::capacity_changed(&payload, now)]).await?;
    let after = view(tx, level, name, level == Level::Pool).await?;
    Ok(Ok(Some(SizeSet { before, after })))
}

/// Ports as the API shows them.
pub fn counts_pb(p: Ports) -> pb::PortCounts {
    let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    pb::PortCounts {
        concurrent: n(p.concurrent),
        outbound: n(p.outbound),
        agentless: n(p.agentless),
    }
}
