//! SQLite reads on the hot path without a thread hop (BENCHMARKS.md, "SQLite's thread hop
//! per statement, measured"): sqlx runs each SQLite statement on a thread of its own per
//! connection, reached through channels, so a one-statement read costs two context
//! switches besides SQLite's own few microseconds. The few reads every call makes (a
//! business unit's limits, a principal's grants) run here instead, on connections of
//! their own, on the calling task's thread.
//!
//! What makes running them inline acceptable: each is one indexed lookup of a few rows in
//! a database read through a memory map, in WAL mode, where a reader never waits for the
//! writer; it takes microseconds, less than the hop it replaces. A read that has to wait
//! (all connections busy) waits for the first to come free, as briefly. Writes never go
//! through here: they keep sqlx, its transactions and the group commit.
//!
//! Statements are counted with the service's other statements (`sspm_db_statements_total`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags};
use sea_orm::{DbErr, RuntimeErr};

use crate::db::{SQLITE_MMAP_BYTES, StatementCount, sqlite_path};

/// How long a read may wait for SQLite's locks. In WAL mode a reader waits only in rare
/// moments (the WAL's index being rebuilt); it waits on a runtime thread here, so briefly,
/// and the call fails (to be retried) rather than hold the thread for long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Read-only SQLite connections for the hot path's reads.
pub struct LiteReader {
    connections: Box<[Mutex<Connection>]>,
    next: AtomicUsize,
    statements: Arc<StatementCount>,
}

impl std::fmt::Debug for LiteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteReader")
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

fn error(e: rusqlite::Error) -> DbErr {
    DbErr::Query(RuntimeErr::Internal(format!("SQLite: {e}")))
}

impl LiteReader {
    /// `n` read-only connections to the SQLite database of `url`, counting their statements
    /// in `statements`; `None` when `url` is not a SQLite file.
    pub fn open(url: &str, n: usize, statements: Arc<StatementCount>) -> Result<Option<Arc<Self>>, DbErr> {
        let Some(path) = sqlite_path(url) else {
            return Ok(None);
        };
        let connections = (0..n.max(1))
            .map(|_| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(error)?;
                c.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
                c.pragma_update(None, "query_only", "ON").map_err(error)?;
                c.pragma_update(None, "mmap_size", SQLITE_MMAP_BYTES).map_err(error)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, DbErr>>()?;
        Ok(Some(Arc::new(Self {
            connections: connections.into(),
            next: AtomicUsize::new(0),
            statements,
        })))
    }

    /// Runs `read` (one statement) on a free connection, on this thread.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, DbErr> {
        self.statements.add(1);
        let n = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(c) = self.connections[(start + i) % n].try_lock() {
                return read(&c).map_err(error);
            }
        }
        let c = self.connections[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        read(&c).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_what_the_writer_committed_and_counts_each_read() {
        use sea_orm::ConnectionTrait;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = crate::db::connect(&url).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .await
            .unwrap();
        let count = Arc::new(StatementCount::default());
        let lite = LiteReader::open(&url, 2, Arc::clone(&count)).unwrap().unwrap();
        let get = |k: &str| {
            lite.read(|c| {
                use rusqlite::OptionalExtension;
                c.prepare_cached("SELECT v FROM t WHERE k = ?1")?
                    .query_row([k], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .unwrap()
        };
        assert_eq!(get("a"), None);
        db.execute_unprepared("INSERT INTO t VALUES ('a', 1)").await.unwrap();
        assert_eq!(get("a"), Some(1));
        db.execute_unprepared("UPDATE t SET v = 2 WHERE k = 'a'").await.unwrap();
        assert_eq!(get("a"), Some(2));
        assert_eq!(count.get(), 3);
        // Read-only: a write through it is refused.
        let refused = lite.read(|c| c.execute("INSERT INTO t VALUES ('b', 1)", []));
        assert!(refused.is_err(), "{refused:?}");
        assert!(LiteReader::open("postgres://x@y/z", 2, count).unwrap().is_none());
    }
}
