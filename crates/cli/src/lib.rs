//! `sspm up`: the four services in one process. Also used by the end-to-end test harness,
//! so tests run the system exactly as operators do.

use std::collections::HashMap;
use std::future::Future;

use sspm_platform::{ServiceApp, ServiceKind, SspmConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Builds the four services: each connects and migrates its database and binds the given
/// listener, or its configured address when none is given.
pub async fn build_all(
    config: &SspmConfig,
    mut listeners: HashMap<ServiceKind, TcpListener>,
) -> anyhow::Result<Vec<ServiceApp>> {
    let mut take = |k| listeners.remove(&k);
    Ok(vec![
        sspm_authorization::build(config.clone(), take(ServiceKind::Authorization)).await?,
        sspm_ticketing::build(config.clone(), take(ServiceKind::Ticketing)).await?,
        sspm_approval::build(config.clone(), take(ServiceKind::Approval)).await?,
        sspm_request::build(config.clone(), take(ServiceKind::Request)).await?,
    ])
}

/// Serves `apps` until `shutdown` completes, then stops them all and waits for in-flight
/// calls. If one service stops or fails, the others are stopped too: a partial system is
/// no system.
pub async fn run_all(apps: Vec<ServiceApp>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for app in apps {
        let mut rx = stop_rx.clone();
        let name = app.kind.name();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            (name, app.run_until_stopped(stopped).await)
        });
    }
    let stop_all = stop_tx.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_all.send(true);
    });
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined?;
        let _ = stop_tx.send(true);
        if let Err(e) = result {
            tracing::error!(service = name, error = %e, "service failed");
            first_error.get_or_insert(e.context(format!("{name} service failed")));
        }
    }
    signal.abort();
    first_error.map_or(Ok(()), Err)
}

/// `sspm up`: builds the four services on their configured addresses and runs them until
/// `shutdown`.
pub async fn up(config: SspmConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let apps = build_all(&config, HashMap::new()).await?;
    run_all(apps, shutdown).await
}
