//! The retention loop shared by what SSPM keeps for a configured number of days (the
//! request service's events, every service's audit trail): a round at start, then one every
//! `every`, each given the cut-off (now minus the retention) to prune before.

use std::future::Future;
use std::time::Duration;

/// Runs `prune(before, now)` (Unix microseconds) at once and then every `every`, `before`
/// being `retention_days` before `now`; never when `retention_days` is 0 (kept forever).
/// `prune` logs its own failures: the next round tries again.
pub fn spawn<F, Fut>(retention_days: u32, every: Duration, mut prune: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut(i64, i64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        if retention_days == 0 {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = crate::rpc::now_micros();
            prune(cutoff(now, retention_days), now).await;
        }
    })
}

/// `retention_days` before `now` (Unix microseconds).
pub fn cutoff(now: i64, retention_days: u32) -> i64 {
    now.saturating_sub(i64::from(retention_days).saturating_mul(86_400_000_000))
}
