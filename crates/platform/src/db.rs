//! Database connection by URL (SQLite file or PostgreSQL), migrations at start-up, and the
//! one place where database error codes are translated.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, RuntimeErr, Select, SqlErr,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// The database error of every SSPM database call.
pub use sea_orm::DbErr;

/// Connects to `url`: `sqlite://path/file.db?mode=rwc` (the directory is created, WAL and a
/// busy timeout are enabled) or `postgres://user@host/db`.
///
/// SQLite runs with `synchronous=FULL`: in WAL mode every commit syncs the WAL before it
/// returns, so a transaction a caller was told about survives a power loss or an OS crash
/// (with `NORMAL` the last commits may roll back; RELIABILITY.md, "Durability").
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10));
    if let Some(path) = sqlite_path(url) {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbErr::Custom(format!("cannot create database directory {}: {e}", dir.display())))?;
        }
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .pragma("mmap_size", SQLITE_MMAP_BYTES)
        });
        opts.map_sqlx_sqlite_pool_opts(|o| o.after_release(|conn, _| Box::pin(release_clean(conn))));
        opts.test_before_acquire(false);
    } else {
        opts.max_connections(16)
            .min_connections(1)
            .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR);
    }
    Database::connect(opts).await
}

/// Whether a SQLite connection handed back to the pool may serve again: only outside any
/// transaction. A transaction whose COMMIT failed (a disk error: RELIABILITY.md,
/// "Durability") is rolled back when dropped; if that ROLLBACK fails too, the connection is
/// left inside the transaction, and sqlx would run every later transaction as a savepoint
/// within it: "committed", answered, and never written. Such a connection is closed instead
/// (which discards the transaction) and the pool opens a new one.
async fn release_clean(conn: &mut sea_orm::sqlx::SqliteConnection) -> Result<bool, sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // A dropped transaction's rollback is queued on the connection's thread: let it run.
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::error!(
            "a SQLite transaction could be neither committed nor rolled back (a disk error?): its connection is closed and a new one opened"
        );
    }
    Ok(clean)
}

/// SQLite reads the database through a memory map of up to this size: a connection whose
/// page cache another connection's write made stale reads the pages from the map instead of
/// copying them again from the file.
pub(crate) const SQLITE_MMAP_BYTES: &str = "268435456";

/// A pooled PostgreSQL connection idle this long is pinged (one round trip) before it is
/// handed out, to replace one the server or a proxy closed meanwhile (as HikariCP checks a
/// connection idle for more than 500 ms). sqlx pings at every checkout by default: one more
/// round trip for each statement outside a transaction and each transaction, paid by both
/// sides (BENCHMARKS.md, "Pings at every checkout"). A connection busy under load is not
/// pinged; one a restarted server closed while it was busy fails its next statement, which
/// the caller or the reconciler retries (tested: `postgres_restart_under_load_on_postgres`
/// in RELIABILITY.md's table of faults). A SQLite connection is a file: it is never pinged
/// (a ping is one more hop to its thread).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connections of a SQLite reader pool (see [`connect_reader`]).
pub const SQLITE_READERS: u32 = 4;

/// A second pool for plain reads outside transactions, where the main pool cannot serve
/// them in parallel: SQLite, whose main pool is one connection (one writer; sea-orm's
/// default, and what keeps read-then-write transactions free of SQLITE_BUSY). In WAL mode
/// readers do not block the writer nor each other, and each read sees every transaction
/// committed before it began. The connections are `query_only`: they cannot write.
/// `None` for PostgreSQL, whose main pool already serves reads in parallel.
pub async fn connect_reader(url: &str) -> Result<Option<DatabaseConnection>, DbErr> {
    if sqlite_path(url).is_none() {
        return Ok(None);
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(SQLITE_READERS)
        .min_connections(1)
        .test_before_acquire(false);
    opts.map_sqlx_sqlite_opts(|o| {
        o.busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("query_only", "ON")
            .pragma("mmap_size", SQLITE_MMAP_BYTES)
    });
    Database::connect(opts).await.map(Some)
}

/// Statements a service's connections have run since it started, counted by sea-orm's
/// metric callback (every query and command, inside transactions or not; `BEGIN`/`COMMIT`
/// are not statements of ours and are not counted). `sspm_db_statements_total` shows it,
/// and the request path's budget test reads it (BENCHMARKS.md, "Statements per create").
#[derive(Debug, Default)]
pub struct StatementCount(std::sync::atomic::AtomicU64);

impl StatementCount {
    /// Counts `n` statements run outside sea-orm ([`crate::lite`]).
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Statements so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts the statements of `db` (and of the clones made from it afterwards).
    pub fn attach(self: &std::sync::Arc<Self>, db: &mut DatabaseConnection) {
        let count = std::sync::Arc::clone(self);
        db.set_metric_callback(move |_| {
            count.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// PostgreSQL advisory lock key held while migrating ("SSPMMIGR").
const MIGRATION_LOCK_KEY: i64 = 0x5353_504d_4d49_4752;

/// Connects and applies every pending migration of `M` (see [`migrate`]).
pub async fn connect_and_migrate<M: MigratorTrait>(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    migrate::<M>(&db).await?;
    Ok(db)
}

/// Applies every pending migration of `M`, all or nothing, in one transaction that first
/// takes a lock, so replicas starting together migrate one after the other (the later ones
/// find nothing left to do).
pub async fn migrate<M: MigratorTrait>(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        // The transaction's first statement writes, so it waits (busy timeout) for any
        // other writer and then holds SQLite's write lock until it commits.
        db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS sspm_migration_lock (id INTEGER PRIMARY KEY, locked_at TEXT NOT NULL)",
        )
        .await?;
    }
    let txn = db.begin().await?;
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            txn.execute_unprepared("INSERT OR REPLACE INTO sspm_migration_lock VALUES (1, datetime('now'))")
                .await?;
        }
        // Released when the transaction ends.
        _ => {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
                .await?;
        }
    }
    M::up(&txn, None).await?;
    txn.commit().await?;
    if db.get_database_backend() == DbBackend::Postgres {
        warn_unless_durable(db).await;
    }
    Ok(())
}

/// Says loudly when the PostgreSQL server may acknowledge commits it could lose on a crash
/// (`fsync` or `synchronous_commit` off): SSPM answers callers only after their commits,
/// and that is durable only if the server's commits are (RELIABILITY.md, "Durability").
async fn warn_unless_durable(db: &DatabaseConnection) {
    for setting in ["fsync", "synchronous_commit"] {
        let value = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                format!("SHOW {setting}"),
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<String>(0).ok());
        if value.as_deref() == Some("off") {
            tracing::error!(
                setting,
                "PostgreSQL runs with {setting} = off: commits SSPM acknowledges can be lost if the database server crashes"
            );
        }
    }
}

/// What a service's database held when the service started (before its migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// SSPM's schema: the service's data.
    Initialised,
    /// No database yet (SQLite: no file).
    Nothing,
    /// A database without SSPM's schema: a SQLite file that exists but holds nothing (cut
    /// to zero bytes, or its WAL lost before a checkpoint), or an empty PostgreSQL
    /// database (new, or emptied).
    Empty,
}

/// Connects to `url` and reads what the database held before this start (SQLite: whether
/// the file was there), so the caller can refuse it before migrating; one connection for
/// both.
pub async fn connect_and_inspect(url: &str) -> Result<(DatabaseConnection, Found), DbErr> {
    let existed = sqlite_path(url).is_none_or(|path| std::path::Path::new(path).exists());
    let db = connect(url).await?;
    let sql = match db.get_database_backend() {
        DbBackend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'"
        }
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'seaql_migrations' AND table_schema = current_schema()"
        }
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let n: i64 = row.map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0);
    let found = match (n > 0, existed) {
        (true, _) => Found::Initialised,
        (false, true) => Found::Empty,
        (false, false) => Found::Nothing,
    };
    Ok((db, found))
}

/// The file path of a SQLite URL; `None` for other URLs and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// What a database error means to the code that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A unique constraint (or unique index) rejected the write.
    UniqueViolation,
    /// A foreign key rejected the write.
    ForeignKeyViolation,
    /// The transaction lost a race (serialization failure, deadlock, SQLite busy/locked):
    /// retrying it can succeed.
    Conflict,
    /// The database is unreachable (connection refused, pool timeout).
    Unavailable,
    /// Anything else: a bug or a broken database.
    Other,
}

/// Translates a database error, the same way for SQLite and PostgreSQL.
pub fn classify(err: &DbErr) -> DbErrorKind {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => return DbErrorKind::UniqueViolation,
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => return DbErrorKind::ForeignKeyViolation,
        _ => {}
    }
    let sqlx = match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return DbErrorKind::Unavailable,
        _ => return DbErrorKind::Other,
    };
    use sea_orm::sqlx::Error as E;
    match sqlx.as_ref() {
        E::Database(db) => match db.code().as_deref() {
            // PostgreSQL: serialization_failure, deadlock_detected
            Some("40001" | "40P01") => DbErrorKind::Conflict,
            // PostgreSQL: admin_shutdown, crash_shutdown, cannot_connect_now
            Some("57P01" | "57P02" | "57P03") => DbErrorKind::Unavailable,
            // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes
            Some(c) if c == "5" || c == "6" || c.parse::<u32>().is_ok_and(|n| n & 0xff == 5 || n & 0xff == 6) => {
                DbErrorKind::Conflict
            }
            _ => DbErrorKind::Other,
        },
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) => DbErrorKind::Unavailable,
        _ => DbErrorKind::Other,
    }
}

/// Lookups by a unique key (a primary key or a unique index) without the `LIMIT ?` of
/// `Select::one`. SQLite (since 3.46) may optimise a statement for the value bound to its
/// LIMIT, so it prepares such a statement again at every execution: a cached statement
/// was parsed and planned anew on every call, an eighth of the request service's CPU under
/// `create`. A unique key selects one row at most, so the LIMIT says nothing.
pub trait SelectUnique<M> {
    /// The row the key selects, if any; an error if it selects more than one.
    fn unique<C>(self, db: &C) -> impl Future<Output = Result<Option<M>, DbErr>> + Send
    where
        C: ConnectionTrait + Sync;
}

impl<E: EntityTrait> SelectUnique<E::Model> for Select<E> {
    async fn unique<C>(self, db: &C) -> Result<Option<E::Model>, DbErr>
    where
        C: ConnectionTrait + Sync,
    {
        let mut rows = self.all(db).await?;
        if rows.len() > 1 {
            return Err(DbErr::Custom(format!(
                "{} rows of {} for one unique key",
                rows.len(),
                E::default().table_name()
            )));
        }
        Ok(rows.pop())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    mod pair {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "pairs")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub k: String,
            pub v: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    /// `unique` finds the row of a key or none, with no LIMIT in its SQL, and refuses a
    /// filter that is not a unique key rather than pick one of the rows.
    #[tokio::test]
    async fn unique_lookups_have_no_limit_and_refuse_several_rows() {
        use sea_orm::{ColumnTrait, QueryFilter, QueryTrait};
        let db = connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared(
            "CREATE TABLE pairs (k TEXT PRIMARY KEY, v TEXT NOT NULL); INSERT INTO pairs VALUES ('a', 'x'), ('b', 'x')",
        )
        .await
        .unwrap();
        let by_key = pair::Entity::find_by_id("a".to_owned());
        assert!(!by_key.build(DbBackend::Sqlite).to_string().contains("LIMIT"));
        assert_eq!(by_key.unique(&db).await.unwrap().map(|p| p.v), Some("x".to_owned()));
        assert_eq!(
            pair::Entity::find_by_id("z".to_owned()).unique(&db).await.unwrap(),
            None
        );
        let err = pair::Entity::find()
            .filter(pair::Column::V.eq("x"))
            .unique(&db)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("2 rows of pairs"), "{err}");
    }

    #[test]
    fn sqlite_paths_are_found_in_urls() {
        assert_eq!(
            sqlite_path("sqlite://data/request.db?mode=rwc"),
            Some("data/request.db")
        );
        assert_eq!(sqlite_path("sqlite:/tmp/x.db"), Some("/tmp/x.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://localhost/request"), None);
    }

    #[tokio::test]
    async fn sqlite_files_are_created_in_wal_mode_and_unique_violations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/dir/t.db?mode=rwc", dir.path().display());
        let db = connect(&url).await.unwrap();
        assert!(dir.path().join("nested/dir/t.db").exists());
        let mode = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), "PRAGMA journal_mode"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mode.try_get_by_index::<String>(0).unwrap(), "wal");
        db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO t VALUES ('a')").await.unwrap();
        let err = db.execute_unprepared("INSERT INTO t VALUES ('a')").await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::UniqueViolation);
        let err = db.execute_unprepared("SELECT * FROM missing").await.unwrap_err();
        assert_eq!(classify(&err), DbErrorKind::Other);
    }
}
