//! What only the load harness writes (`sspm-load history`): requests that are over, in
//! bulk, straight into the request service's database, for measuring with a long history.
//! Nothing of the service calls it.

use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use sspm_platform::audit;
use sspm_rules::RequestState;

use crate::entities::{history, request};
use crate::plan::Entry;
use crate::store::history_row;

/// Requests per INSERT statement of [`import_history`] (31 columns each).
const IMPORT_CHUNK: usize = 1000;

/// Writes requests that are already over, each with its history (entries with their
/// times), in one transaction, and one audit event for them all
/// (`request.history_imported`). Nothing is written when any of them cannot be (an id
/// that exists, an open state).
pub async fn import_history(
    db: &DatabaseConnection,
    requests: Vec<(request::Model, Vec<(i64, Entry)>)>,
    actor: &str,
    now: i64,
) -> Result<(), DbErr> {
    if let Some((r, _)) = requests
        .iter()
        .find(|(r, _)| RequestState::from_name(&r.state).is_none_or(|s| s.is_open()))
    {
        return Err(DbErr::Custom(format!(
            "request {} is {}: only requests that are over can be imported",
            r.request_id, r.state
        )));
    }
    let count = requests.len();
    let mut rows = Vec::with_capacity(count);
    let mut entries = Vec::with_capacity(count * 2);
    for (r, history) in requests {
        entries.extend(history.into_iter().map(|(time, e)| history_row(&r.request_id, time, e)));
        rows.push(request::ActiveModel::from(r));
    }
    let tx = db.begin().await?;
    // Chunks keep each statement under SQLite's limit of bound parameters (32,766).
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        request::Entity::insert_many(rows.by_ref().take(IMPORT_CHUNK))
            .exec_without_returning(&tx)
            .await?;
    }
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        history::Entity::insert_many(entries.by_ref().take(IMPORT_CHUNK * 4))
            .exec_without_returning(&tx)
            .await?;
    }
    let detail = format!("{count} requests that are over, with their history");
    audit::record_as(
        &tx,
        Some(actor),
        "request.history_imported",
        "port_change_requests",
        &detail,
        now,
    )
    .await?;
    tx.commit().await
}

/// Refreshes the query planner's statistics of the requests and their history, as after
/// any bulk load ([`import_history`]): until autovacuum gets to it, PostgreSQL would plan
/// for the table as it was.
pub async fn analyze(db: &DatabaseConnection) -> Result<(), DbErr> {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => "ANALYZE port_change_requests, request_history",
        _ => "ANALYZE port_change_requests; ANALYZE request_history",
    };
    db.execute_unprepared(sql).await.map(|_| ())
}

/// How many requests have an id starting with `prefix` (`sspm-load history` resumes after them).
pub async fn count_with_prefix(db: &DatabaseConnection, prefix: &str) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    request::Entity::find()
        .filter(request::Column::RequestId.starts_with(prefix))
        .count(db)
        .await
}
