//! `sspm-load seed`: a large tenancy through the public API, as an account representative
//! would build it. Idempotent: what exists already is kept, so an interrupted seed is
//! finished by running it again, and a bigger one extends a smaller one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sspm_proto::v1 as pb;
use tokio::time::Instant;

use crate::scenario::{Tenancy, Worker};
use crate::target::{Target, Token, authed, code_name};
use crate::tenancy;

/// What to seed.
#[derive(Debug, Clone, Copy)]
pub struct SeedPlan {
    /// The size of the tenancy.
    pub tenancy: Tenancy,
    /// Clusters the customer business units are spread over.
    pub clusters: usize,
    /// Load users (partner administrators).
    pub principals: usize,
    /// Historical requests to create (each +1 concurrent port, approved automatically).
    pub requests: usize,
    /// Calls in flight.
    pub concurrency: usize,
}

/// Calls `f` until it succeeds or fails for good; ALREADY_EXISTS counts as done (the seed is
/// idempotent). Rate limits and shed load are waited out.
async fn call<F, Fut, T>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) && attempt < 50 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
            }
            Err(s) => anyhow::bail!("{what}: {}: {}", code_name(s.code()), s.message()),
        }
    }
}

/// Runs `n` jobs, `concurrency` at a time, with a progress line.
async fn in_parallel<F, Fut>(what: &str, n: usize, concurrency: usize, job: F) -> anyhow::Result<()>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    if n == 0 {
        return Ok(());
    }
    let job = Arc::new(job);
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers = concurrency.clamp(1, n);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (job, done) = (job.clone(), done.clone());
            tokio::spawn(async move {
                for i in (w..n).step_by(workers) {
                    job(w, i).await?;
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d.is_multiple_of(1000) {
                        eprintln!("  {d} of {n}");
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{what}: {n} in {secs:.1} s ({:.0}/s)", n as f64 / secs.max(1e-9));
    Ok(())
}

fn business_unit(id: &str, cluster: &str, partner: &str) -> pb::CreateBusinessUnitRequest {
    pb::CreateBusinessUnitRequest {
        business_unit: Some(pb::BusinessUnit {
            business_unit_id: id.to_owned(),
            display_name: format!("Load {id}"),
            cluster: cluster.to_owned(),
            partner_id: partner.to_owned(),
            monitoring_gateway_enabled: true,
            personal_connection_enabled: true,
            ..Default::default()
        }),
    }
}

/// Seeds the load tenancy, with `rep` (an account representative) doing the administration.
pub async fn seed(target: &Target, rep: &str, plan: SeedPlan) -> anyhow::Result<()> {
    let rep = target.token(rep)?;
    let c = target.clients(0);

    // The partner, its users and Network Operations.
    call("the partner", || {
        let mut a = c.authorization.clone();
        let r = authed(&rep, business_unit(tenancy::PARTNER, &tenancy::cluster(0, 1), ""));
        async move { a.create_business_unit(r).await }
    })
    .await?;
    let staff = [(tenancy::NETOPS.to_owned(), String::new())];
    let users = (0..plan.principals.max(1)).map(|i| (tenancy::user(i), tenancy::PARTNER.to_owned()));
    for (id, home) in staff.into_iter().chain(users) {
        call(&id, || {
            let mut a = c.authorization.clone();
            let r = authed(
                &rep,
                pb::CreatePrincipalRequest {
                    principal: Some(pb::Principal {
                        principal_id: id.clone(),
                        display_name: id.clone(),
                        home_business_unit_id: home.clone(),
                        kind: pb::PrincipalKind::User.into(),
                        ..Default::default()
                    }),
                },
            );
            async move { a.create_principal(r).await }
        })
        .await?;
        let grants: &[(pb::Permission, &str)] = if home.is_empty() {
            &[
                (pb::Permission::NetworkOperationsDailyLimits, ""),
                (pb::Permission::NetworkOperationsApprove, ""),
            ]
        } else {
            &[
                (pb::Permission::MonitoringGatewayView, tenancy::PARTNER),
                (pb::Permission::PortManagementView, tenancy::PARTNER),
                (pb::Permission::PortManagementCreate, tenancy::PARTNER),
            ]
        };
        for (permission, bu) in grants {
            call("a grant", || {
                let mut a = c.authorization.clone();
                let r = authed(
                    &rep,
                    pb::GrantPermissionRequest {
                        principal_id: id.clone(),
                        business_unit_id: (*bu).to_owned(),
                        permission: (*permission).into(),
                    },
                );
                async move { a.grant_permission(r).await }
            })
            .await?;
        }
    }
    eprintln!(
        "partner {}, {} users and {}",
        tenancy::PARTNER,
        plan.principals.max(1),
        tenancy::NETOPS
    );

    // Daily limits: creates approve automatically (the default), reviews never do.
    let netops = target.token(tenancy::NETOPS)?;
    for (scope, target_name, max) in [
        (pb::LimitScope::Default, "", tenancy::DAILY_LIMIT),
        (pb::LimitScope::Cluster, tenancy::REVIEW_CLUSTER, 0),
    ] {
        call("a daily limit", || {
            let mut a = c.approval.clone();
            let r = authed(
                &netops,
                pb::SetDailyLimitRequest {
                    limit: Some(pb::DailyLimit {
                        scope: scope.into(),
                        target: target_name.to_owned(),
                        max_daily_increase: max,
                        ..Default::default()
                    }),
                },
            );
            async move { a.set_daily_limit(r).await }
        })
        .await?;
    }
    eprintln!(
        "daily limits: default {}, cluster {} 0",
        tenancy::DAILY_LIMIT,
        tenancy::REVIEW_CLUSTER
    );

    // The business units: customers spread over the clusters, then the review units.
    let clusters = plan.clusters;
    type Naming = fn(usize, usize) -> (String, String);
    let kinds: [(&str, usize, Naming); 2] = [
        ("business units", plan.tenancy.units, |i, clusters| {
            (tenancy::unit(i), tenancy::cluster(i, clusters))
        }),
        ("review business units", plan.tenancy.review_units, |i, _| {
            (tenancy::review_unit(i), tenancy::REVIEW_CLUSTER.to_owned())
        }),
    ];
    for (what, n, name) in kinds {
        let (t, r) = (target.clone(), rep.clone());
        in_parallel(what, n, plan.concurrency, move |w, i| {
            let (a, r) = (t.clients(w).authorization, r.clone());
            let (id, cluster) = name(i, clusters);
            let message = business_unit(&id, &cluster, tenancy::PARTNER);
            async move {
                call(&id, || {
                    let (mut a, req) = (a.clone(), authed(&r, message.clone()));
                    async move { a.create_business_unit(req).await }
                })
                .await
            }
        })
        .await?;
    }

    // The history: requests approved automatically, spread over the business units; each
    // worker owns a share of them, so no two of its requests meet on one (R5).
    if plan.requests > 0 {
        history(target, netops, plan).await?;
    }
    Ok(())
}

async fn history(target: &Target, netops: Token, plan: SeedPlan) -> anyhow::Result<()> {
    let workers = plan.concurrency.clamp(1, plan.tenancy.units.max(1));
    let users = target.user_tokens(plan.principals)?;
    let run_id = format!("seed{:x}", std::process::id());
    let start = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let mut worker = Worker::new(
                w,
                workers,
                target.clients(w),
                users[w % users.len()].clone(),
                netops.clone(),
                Tenancy {
                    review_units: 0,
                    ..plan.tenancy
                },
                w as u64,
                &run_id,
            );
            let n = (w..plan.requests).step_by(workers).count();
            let done = done.clone();
            let total = plan.requests;
            tokio::spawn(async move {
                let mut made = 0;
                let mut failures = 0;
                while made < n {
                    match worker.run(crate::scenario::Scenario::Create).await {
                        Ok(()) => {
                            made += 1;
                            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if d.is_multiple_of(5000) {
                                eprintln!("  {d} of {total} requests");
                            }
                        }
                        // Rate limits, shed load: wait and go on.
                        Err(f) if failures < 1000 => {
                            failures += 1;
                            if f.label == "RESOURCE_EXHAUSTED" || f.label == "UNAVAILABLE" {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        Err(f) => anyhow::bail!("historical requests: {}: {}", f.label, f.message),
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "historical requests: {} in {secs:.1} s ({:.0}/s)",
        plan.requests,
        plan.requests as f64 / secs.max(1e-9)
    );
    Ok(())
}
