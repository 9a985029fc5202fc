//! `sspm-load history`: a long history of requests, written straight into the request
//! service's database. Through the public API a request costs the whole create path (about
//! 150 a second here), so a million would take hours; this writes tens of thousands a
//! second. For benchmarks only: the requests are synthetic.
//!
//! Each request `hist-NNNNNNNN` is an automatically approved +1 concurrent port on a load
//! business unit, decided and over long ago (dated from 2025-01-01, 20 s apart, so never in
//! today's daily budget), with the two history entries a real one has. Its case number
//! (`H…`) is not a case of the ticketing service. The business units' current limits are
//! not touched. Ids are deterministic: a second run with a larger `--requests` adds the
//! rest, and a run stopped half-way resumes after the last whole batch.

use std::time::Instant;

use sspm_platform::rpc::now_micros;
use sspm_request::entities::request::{self, ApprovalPath};
use sspm_request::plan::{Entry, HistoryKind};
use sspm_rules::RequestState;

use crate::{bulk, tenancy};

/// Requests written per transaction.
const BATCH: usize = 5_000;
/// 2025-01-01T00:00:00Z in Unix microseconds: the first request's creation.
const FIRST: i64 = 1_735_689_600_000_000;
/// Between two requests' creations.
const SPACING_MICROS: i64 = 20_000_000;
/// The id prefix of the synthetic requests.
const PREFIX: &str = "hist-";

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPlan {
    /// Synthetic requests there should be in all.
    pub requests: usize,
    /// Spread round robin over the first `units` load business units.
    pub units: usize,
    /// Their clusters, as `sspm-load seed --clusters`.
    pub clusters: usize,
    /// Requesters, round robin over the load users.
    pub principals: usize,
}

/// Writes the synthetic requests that are missing, in batches; how many it wrote.
pub async fn write(database_url: &str, plan: HistoryPlan) -> anyhow::Result<usize> {
    anyhow::ensure!(plan.units > 0, "--business-units must be at least 1");
    let db = sspm_platform::db::connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the request service's database {database_url}: {e}"))?;
    let have = bulk::count_with_prefix(&db, PREFIX).await.map_err(|e| {
        anyhow::anyhow!("cannot read the requests of {database_url} (has the request service started on it once, creating its tables?): {e}")
    })?;
    let have = usize::try_from(have)?;
    if have >= plan.requests {
        eprintln!("history: {have} synthetic requests already, nothing to add");
        return Ok(0);
    }
    let start = Instant::now();
    let mut next = have;
    while next < plan.requests {
        let end = (next + BATCH).min(plan.requests);
        let batch = (next..end).map(|i| synthetic(i, plan)).collect();
        bulk::import_history(&db, batch, tenancy::NETOPS, now_micros())
            .await
            .map_err(|e| anyhow::anyhow!("writing requests {next}..{end}: {e}"))?;
        next = end;
        let rate = (next - have) as f64 / start.elapsed().as_secs_f64().max(1e-3);
        eprint!("\r  {next} of {} ({rate:.0}/s)", plan.requests);
    }
    bulk::analyze(&db)
        .await
        .map_err(|e| anyhow::anyhow!("refreshing the planner's statistics: {e}"))?;
    let written = plan.requests - have;
    eprintln!(
        "\nhistory: {written} synthetic requests written in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(written)
}

/// The `i`-th synthetic request and its history.
fn synthetic(i: usize, plan: HistoryPlan) -> (request::Model, Vec<(i64, Entry)>) {
    let unit = i % plan.units;
    // The k-th request of its business unit took it from k to k + 1 concurrent ports.
    let before = i32::try_from((i / plan.units) % 9_000).unwrap_or(0);
    let created = FIRST + i64::try_from(i).unwrap_or(i64::MAX / SPACING_MICROS) * SPACING_MICROS;
    let decided = created + 50_000;
    let requester = tenancy::user(i % plan.principals.max(1));
    let cluster = tenancy::cluster(unit, plan.clusters);
    let reason = format!("approved automatically: +1 concurrent ports fit the daily limit (cluster {cluster})");
    let model = request::Model {
        request_id: format!("{PREFIX}{i:08}"),
        business_unit_id: tenancy::unit(unit),
        cluster,
        requester: requester.clone(),
        state: RequestState::Approved.into(),
        case_number: Some(format!("H{i:08}")),
        before_concurrent: before,
        before_outbound: 0,
        before_agentless: 0,
        target_concurrent: Some(before + 1),
        target_outbound: None,
        target_agentless: None,
        cost_change_micros: 12_500_000,
        currency: "USD".to_owned(),
        justification: None,
        approval_path: Some(ApprovalPath::Automatic),
        decided_by: Some("system".to_owned()),
        decision_approved: Some(true),
        decision_reason: Some(reason.clone()),
        decide_time: Some(decided),
        failure_reason: None,
        revert_at: None,
        reverted_time: None,
        reverted_concurrent: None,
        reverted_outbound: None,
        reverted_agentless: None,
        next_attempt_at: None,
        attempts: 0,
        create_time: created,
        update_time: decided,
    };
    let history = vec![
        (
            created,
            Entry {
                kind: HistoryKind::Transition,
                actor: requester,
                from: None,
                to: RequestState::New,
                reason: format!("requested: concurrent {before} -> {}", before + 1),
            },
        ),
        (
            decided,
            Entry {
                kind: HistoryKind::Transition,
                actor: "system".to_owned(),
                from: Some(RequestState::New),
                to: RequestState::Approved,
                reason: format!(
                    "{reason}; applied: concurrent {before}, outbound 0, agentless 0 -> concurrent {}, outbound 0, agentless 0",
                    before + 1
                ),
            },
        ),
    ];
    (model, history)
}

#[cfg(test)]
mod tests {
    use sspm_platform::testing;
    use sspm_request::migration::Migrator;

    use super::*;

    /// The synthetic requests land whole, are listed newest first with their history like
    /// real ones, and a second run adds only what is missing.
    #[tokio::test]
    async fn writes_what_is_missing_and_lists_like_real_requests() {
        let db = testing::fresh_sqlite();
        sspm_platform::db::connect_and_migrate::<Migrator>(&db.url)
            .await
            .unwrap();
        let plan = HistoryPlan {
            requests: 7,
            units: 3,
            clusters: 2,
            principals: 2,
        };
        assert_eq!(write(&db.url, plan).await.unwrap(), 7);
        assert_eq!(write(&db.url, plan).await.unwrap(), 0);
        assert_eq!(write(&db.url, HistoryPlan { requests: 12, ..plan }).await.unwrap(), 5);

        let conn = sspm_platform::db::connect(&db.url).await.unwrap();
        let store = sspm_request::store::Store::new(conn.clone());
        let unit1 = store.list(Some(&[tenancy::unit(1)]), &[], None, 50).await.unwrap();
        let ids: Vec<_> = unit1.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(
            ids,
            ["hist-00000010", "hist-00000007", "hist-00000004", "hist-00000001"]
        );
        assert_eq!(unit1[0].before_concurrent, 3);
        assert_eq!(unit1[0].target_concurrent, Some(4));
        let history = store.history("hist-00000010").await.unwrap();
        let states: Vec<_> = history.iter().map(|h| h.to_state.as_str()).collect();
        assert_eq!(states, ["NEW", "APPROVED"]);
        assert!(history[0].time < history[1].time);
        assert_eq!(store.open_request_of(&tenancy::unit(1)).await.unwrap(), None);

        // An open request is refused, and nothing of its batch is written.
        let (mut open, entries) = synthetic(13, plan);
        open.state = RequestState::New.into();
        let err = bulk::import_history(&conn, vec![synthetic(12, plan), (open, entries)], tenancy::NETOPS, 0)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only requests that are over"), "{err}");
        assert_eq!(bulk::count_with_prefix(&conn, PREFIX).await.unwrap(), 12);
    }
}
