//! One SQLite write transaction shaped like the request service's first step (read the
//! request, update it, update the limits, insert history, audit and outbox rows: 8
//! statements), run `N` times one after another, through
//!
//! - `sqlx`: sea-orm over sqlx's SQLite driver, as the services run it, which hands every
//!   statement to the connection's own thread and each answer back through channels;
//! - `rusqlite`: the same statements through rusqlite, the whole transaction on one
//!   `spawn_blocking` task (one hop per transaction).
//!
//! Prints the wall time and the process's CPU time per transaction for each, with
//! `synchronous` as given (`NORMAL` isolates CPU from fsync; `FULL` is what SSPM runs).
//! Usage: `cargo run --release -- [N] [NORMAL|FULL]`.

use std::time::Instant;

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};

const SCHEMA: &str =
    "CREATE TABLE requests (id TEXT PRIMARY KEY, bu TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TABLE limits (bu TEXT PRIMARY KEY, concurrent INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE history (id INTEGER PRIMARY KEY, request TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY, target TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE effects (id INTEGER PRIMARY KEY, request TEXT NOT NULL, kind TEXT NOT NULL);";

/// The statements of one transaction on request `i`, with their parameters.
fn statements(i: usize) -> Vec<(&'static str, Vec<String>)> {
    let id = format!("r-{i}");
    let bu = format!("bu-{}", i % 100);
    vec![
        (
            "INSERT INTO requests (id, bu, state, n) VALUES (?1, ?2, 'NEW', 0)",
            vec![id.clone(), bu.clone()],
        ),
        ("SELECT id, bu, state, n FROM requests WHERE id = ?1", vec![id.clone()]),
        (
            "UPDATE requests SET state = 'APPROVED', n = n + 1 WHERE id = ?1 AND state = 'NEW'",
            vec![id.clone()],
        ),
        (
            "INSERT INTO limits (bu, concurrent, version) VALUES (?1, 1, 1) ON CONFLICT (bu) DO UPDATE SET concurrent = concurrent + 1, version = version + 1",
            vec![bu.clone()],
        ),
        (
            "INSERT INTO history (request, reason) VALUES (?1, 'approved automatically')",
            vec![id.clone()],
        ),
        (
            "INSERT INTO audit (target, detail) VALUES (?1, 'request.transition'), (?1, 'request.decided'), (?2, 'limits.changed')",
            vec![id.clone(), bu],
        ),
        (
            "INSERT INTO effects (request, kind) VALUES (?1, 'CLOSE_CASE') RETURNING id",
            vec![id.clone()],
        ),
        ("SELECT count(*) FROM effects WHERE request = ?1", vec![id]),
    ]
}

/// User + system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn report(name: &str, n: usize, wall: f64, cpu: f64) {
    println!(
        "{name:9} {n} transactions: {:.1} µs wall, {:.1} µs CPU per transaction ({:.0}/s)",
        wall * 1e6 / n as f64,
        cpu * 1e6 / n as f64,
        n as f64 / wall
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(5_000, |a| a.parse().expect("N"));
    let sync = args.next().unwrap_or_else(|| "NORMAL".to_owned());
    let dir = std::env::temp_dir().join(format!("sqlite-hop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // sqlx, through sea-orm, one connection (the services' single writer).
    let path = dir.join("sqlx.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut opts = sea_orm::ConnectOptions::new(url);
    opts.max_connections(1).min_connections(1).sqlx_logging(false);
    let db = Database::connect(opts).await.unwrap();
    db.execute_unprepared(&format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"))
        .await
        .unwrap();
    db.execute_unprepared(SCHEMA).await.unwrap();
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let tx = db.begin().await.unwrap();
        for (sql, params) in statements(i) {
            let values: Vec<sea_orm::Value> = params.into_iter().map(Into::into).collect();
            let stmt =
                Statement::from_sql_and_values(DbBackend::Sqlite, sql.replace("?1", "$1").replace("?2", "$2"), values);
            if sql.starts_with("SELECT") || sql.contains("RETURNING") {
                tx.query_all_raw(stmt).await.unwrap();
            } else {
                tx.execute_raw(stmt).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    report("sqlx", n, wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);

    // rusqlite, the whole transaction on one blocking task.
    let path = dir.join("rusqlite.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"))
        .unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    let conn = std::sync::Arc::new(std::sync::Mutex::new(conn));
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap();
            let tx = conn.transaction().unwrap();
            for (sql, params) in statements(i) {
                let mut stmt = tx.prepare_cached(sql).unwrap();
                let params = rusqlite::params_from_iter(params.iter());
                if sql.starts_with("SELECT") || sql.contains("RETURNING") {
                    let mut rows = stmt.query(params).unwrap();
                    while rows.next().unwrap().is_some() {}
                } else {
                    stmt.execute(params).unwrap();
                }
            }
            tx.commit().unwrap();
        })
        .await
        .unwrap();
    }
    report("rusqlite", n, wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    std::fs::remove_dir_all(&dir).ok();
}
