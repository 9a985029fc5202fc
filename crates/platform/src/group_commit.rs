//! Group commit for SQLite's single writer (RELIABILITY.md, "Group commit").
//!
//! A durable SQLite commit costs an fsync (~440 µs on this project's machine), and a
//! database has one writer, so concurrent callers' transactions wait for each other's
//! syncs. Here they share them: a caller hands its transaction's work to one task, which
//! runs the work of every caller waiting at that moment inside one transaction, each in a
//! savepoint of its own, and commits once. A caller's work that fails (or asks to be
//! undone) is rolled back to its savepoint without touching the others'. Every caller is
//! answered only after the commit that holds its work has returned: if that commit fails,
//! every caller of the batch gets the error and none of their work is kept.
//!
//! PostgreSQL groups concurrent commits by itself; it does not need this.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::identity::CallContext;

/// What a caller's work asks for its savepoint.
#[derive(Debug)]
pub enum Savepoint<T> {
    /// Keep the work (release the savepoint) and answer this.
    Keep(T),
    /// Undo the work (roll back to the savepoint) and answer this.
    Undo(T),
}

/// The future of a caller's work, borrowing the transaction it runs in.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Erased = Box<dyn Any + Send>;
type Work = Box<dyn for<'a> FnOnce(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Savepoint<Erased>, DbErr>> + Send>;

struct Job {
    work: Work,
    answer: oneshot::Sender<Result<Erased, DbErr>>,
    call: Option<CallContext>,
    span: tracing::Span,
}

/// The writer's queue (see the module documentation). Cloned handles share one writer task,
/// which ends when the last handle is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// Callers' transactions per commit at most.
const MAX_BATCH: usize = 64;

impl GroupCommit {
    /// A writer task committing on `db`, with at most `queue` callers waiting for it.
    pub fn start(db: DatabaseConnection, queue: usize) -> Self {
        let (jobs, rx) = mpsc::channel(queue.max(1));
        let commits = std::sync::Arc::default();
        tokio::spawn(writer(db, rx, std::sync::Arc::clone(&commits)));
        Self { jobs, commits }
    }

    /// Commits made so far (each holding one or more callers' transactions).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` in a savepoint of the next group's transaction; its answer once that
    /// transaction has committed.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Savepoint<T>, DbErr>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |tx| {
            Box::pin(async move {
                Ok(match work(tx).await? {
                    Savepoint::Keep(v) => Savepoint::Keep(Box::new(v) as Erased),
                    Savepoint::Undo(v) => Savepoint::Undo(Box::new(v) as Erased),
                })
            })
        });
        let job = Job {
            work,
            answer,
            call: CallContext::current(),
            span: tracing::Span::current(),
        };
        let gone = || DbErr::Custom("the database writer has stopped".into());
        self.jobs.send(job).await.map_err(|_| gone())?;
        let value = answered.await.map_err(|_| gone())??;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| DbErr::Custom("the database writer answered with another type".into()))
    }
}

/// How a store commits its write transactions: each on its own, or through a
/// [`GroupCommit`] (SQLite; PostgreSQL groups commits by itself).
#[derive(Debug, Clone)]
pub struct Writer {
    db: DatabaseConnection,
    group: Option<GroupCommit>,
}

impl Writer {
    /// A writer on `db`: with group commit for SQLite when `queue` (the callers that may wait
    /// for it, `workflow.group_commit_queue`) is not 0, else a transaction per caller.
    pub fn new(db: DatabaseConnection, queue: usize) -> Self {
        let group = (db.get_database_backend() == sea_orm::DbBackend::Sqlite && queue > 0)
            .then(|| GroupCommit::start(db.clone(), queue));
        Self { db, group }
    }

    /// Runs `work` as one write transaction; its answer after the commit that holds it.
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Savepoint<T>, DbErr>> + Send + 'static,
    {
        if let Some(group) = &self.group {
            return group.run(work).await;
        }
        let tx = self.db.begin().await?;
        let done = work(&tx).await;
        settle(tx, done).await
    }
}

async fn writer(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<Job>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&db, batch).await;
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn commit_batch(db: &DatabaseConnection, batch: Vec<Job>) {
    let tx = match db.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            for job in batch {
                let _ = job.answer.send(Err(DbErr::Custom(e.to_string())));
            }
            return;
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = run_one(&tx, job.work, job.call).instrument(job.span).await;
        answers.push((job.answer, outcome));
    }
    match tx.commit().await {
        Ok(()) => {
            for (answer, outcome) in answers {
                let _ = answer.send(outcome);
            }
        }
        Err(e) => {
            // Nothing of the batch is kept: every caller hears so, none is told "done".
            for (answer, _) in answers {
                let _ = answer.send(Err(DbErr::Custom(format!("commit failed: {e}"))));
            }
        }
    }
}

async fn run_one(tx: &DatabaseTransaction, work: Work, call: Option<CallContext>) -> Result<Erased, DbErr> {
    let savepoint = tx.begin().await?;
    let done = match call {
        Some(call) => call.scope(work(&savepoint)).await,
        None => work(&savepoint).await,
    };
    settle(savepoint, done).await
}

/// Ends `tx` (a transaction or a savepoint) as its work asked: committed (released) when
/// kept, rolled back when undone or failed.
async fn settle<T>(tx: DatabaseTransaction, done: Result<Savepoint<T>, DbErr>) -> Result<T, DbErr> {
    match done {
        Ok(Savepoint::Keep(v)) => {
            tx.commit().await?;
            Ok(v)
        }
        Ok(Savepoint::Undo(v)) => {
            tx.rollback().await?;
            Ok(v)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    async fn db() -> (DatabaseConnection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
        let db = crate::db::connect(&url).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .await
            .unwrap();
        (db, dir)
    }

    fn insert(k: &str) -> Statement {
        Statement::from_string(sea_orm::DbBackend::Sqlite, format!("INSERT INTO t VALUES ('{k}', 1)"))
    }

    async fn keys(db: &DatabaseConnection) -> Vec<String> {
        db.query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT k FROM t ORDER BY k".to_owned(),
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
    }

    /// Concurrent callers share commits; each is answered after the commit holding its
    /// write (it can read it back at once, from another connection); one caller's failure
    /// or undo leaves the others' work in place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_share_commits_and_fail_alone() {
        let (db, _dir) = db().await;
        let reader = crate::db::connect_reader(&format!("sqlite://{}?mode=rwc", _dir.path().join("g.db").display()))
            .await
            .unwrap()
            .unwrap();
        db.execute_raw(insert("taken")).await.unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let group = GroupCommit::start(db.clone(), 64);
        let mut calls = Vec::new();
        for i in 0..200 {
            let group = group.clone();
            let reader = reader.clone();
            let answered = Arc::clone(&answered);
            calls.push(tokio::spawn(async move {
                let key = format!("k{i:03}");
                let k = key.clone();
                let answer = group
                    .run(move |tx| {
                        Box::pin(async move {
                            match i % 10 {
                                // A duplicate key: this caller's statement fails.
                                3 => tx.execute_raw(insert("taken")).await.map(|_| Savepoint::Keep(i)),
                                // This caller asks for its work to be undone.
                                7 => {
                                    tx.execute_raw(insert(&k)).await?;
                                    Ok(Savepoint::Undo(i))
                                }
                                _ => {
                                    tx.execute_raw(insert(&k)).await?;
                                    Ok(Savepoint::Keep(i))
                                }
                            }
                        })
                    })
                    .await;
                if answer.is_ok() && i % 10 != 7 {
                    // Answered: durable and visible to any other connection now.
                    let found = reader
                        .query_one_raw(Statement::from_string(
                            sea_orm::DbBackend::Sqlite,
                            format!("SELECT k FROM t WHERE k = '{key}'"),
                        ))
                        .await
                        .unwrap();
                    assert!(found.is_some(), "{key} answered before its commit");
                }
                answered.fetch_add(1, Ordering::Relaxed);
                (i, answer.map_err(|e| e.to_string()))
            }));
        }
        for call in calls {
            let (i, answer) = call.await.unwrap();
            match i % 10 {
                3 => assert!(answer.is_err(), "{i}"),
                _ => assert_eq!(answer, Ok(i)),
            }
        }
        let stored = keys(&db).await;
        let mut expected: Vec<String> = (0..200)
            .filter(|i| i % 10 != 3 && i % 10 != 7)
            .map(|i| format!("k{i:03}"))
            .collect();
        expected.push("taken".to_owned());
        assert_eq!(stored, expected);
        assert_eq!(answered.load(Ordering::Relaxed), 200);
        // 200 callers at once: they shared commits (each commit waits for its sync while the
        // next callers queue), so far fewer commits than callers.
        assert!(group.commits() <= 100, "{} commits for 200 callers", group.commits());
    }
}
