//! What only the load harness writes (`sspm-load history`): requests that are over, in
//! bulk, straight into the request service's database, for measuring with a long history.
//! The service itself never writes this way: it is here, in the program that needs it, on
//! the service's public entities and event log.

use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use sspm_platform::audit;
use sspm_rules::RequestState;

use sspm_request::entities::request;
use sspm_request::events::{self, NewEvent};
use sspm_request::plan::Entry;

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
    if let Some((r, _)) = requests.iter().find(|(r, _)| RequestState::from(r.state).is_open()) {
        return Err(DbErr::Custom(format!(
            "request {} is {}: only requests that are over can be imported",
            r.request_id,
            RequestState::from(r.state)
        )));
    }
    let count = requests.len();
    let mut rows = Vec::with_capacity(count);
    // Each business unit's events, in the order given (numbered after its last).
    let mut by_unit: std::collections::BTreeMap<String, Vec<NewEvent>> = std::collections::BTreeMap::new();
    for (r, history) in requests {
        let unit = by_unit.entry(r.business_unit_id.clone()).or_default();
        unit.extend(history.iter().map(|(time, e)| NewEvent::of_entry(&r, e, *time)));
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
    for (bu, unit) in &by_unit {
        for chunk in unit.chunks(IMPORT_CHUNK) {
            events::append(&tx, bu, chunk).await?;
        }
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
        sea_orm::DbBackend::Postgres => "ANALYZE port_change_requests, events",
        _ => "ANALYZE port_change_requests; ANALYZE events",
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
