//! Test helpers: every test gets its own database.
//!
//! SQLite by default (a file in a temporary directory). PostgreSQL variants of tests call
//! [`fresh_postgres`], which creates a new database on the server named by
//! `SSPM_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`) and fails
//! loudly when it is not set: those tests are `#[ignore]`d with a reason and run by
//! `.ci/run` with `--ignored`.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database};

/// Environment variable naming the PostgreSQL server for the PostgreSQL test variants.
pub const POSTGRES_ENV: &str = "SSPM_TEST_POSTGRES_URL";

/// Reason attached to `#[ignore]` on PostgreSQL variants.
pub const POSTGRES_IGNORE_REASON: &str = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored";

/// A database for one test; a SQLite file lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to connect to.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite database file.
pub fn fresh_sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    TestDatabase { url, _dir: Some(dir) }
}

/// A fresh, empty PostgreSQL database on the `SSPM_TEST_POSTGRES_URL` server. Panics with
/// instructions when the variable is not set or the server cannot be reached.
pub async fn fresh_postgres(prefix: &str) -> TestDatabase {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!("{POSTGRES_ENV} is not set: this PostgreSQL variant needs a server, e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/postgres")
    });
    let admin = Database::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!(
        "sspm_test_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = admin.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
    TestDatabase {
        url: format!("{base}/{name}"),
        _dir: None,
    }
}
