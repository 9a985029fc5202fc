//! The scenarios: what one operation of each is, and the worker state that makes them valid
//! requests (each worker owns a disjoint share of the business units, so its creates never
//! meet another worker's open request: R5).

use std::collections::HashMap;
use std::time::Duration;

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sspm_proto::v1 as pb;
use tonic_health::pb::HealthCheckRequest;

use crate::target::{Clients, Token, authed, code_name};
use crate::tenancy;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Scenario {
    /// The health check of the request service: the cost of a bare RPC through our stack.
    Baseline,
    /// GetPortLimits of a random business unit.
    Limits,
    /// The first page (50) of a random business unit's requests, newest first.
    List,
    /// The first page (50) of the requests of every business unit the user may see (up to
    /// 500 of them), newest first.
    ListAll,
    /// +1 concurrent port on a business unit, approved automatically: the full path through
    /// all four services (case opened, daily limit reserved, limits applied, case closed).
    Create,
    /// +1 port on a business unit whose cluster has a daily limit of 0, with a justification:
    /// to review, decided by Network Operations, applied. One operation is the whole cycle.
    Review,
    /// A blend: 70% limits, 15% list, 12% create, 3% review.
    Mixed,
}

impl Scenario {
    /// Its name in reports (as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Limits => "limits",
            Scenario::List => "list",
            Scenario::ListAll => "list-all",
            Scenario::Create => "create",
            Scenario::Review => "review",
            Scenario::Mixed => "mixed",
        }
    }

    /// The single-operation scenarios it runs.
    pub fn ops(self) -> &'static [Scenario] {
        match self {
            Scenario::Mixed => &[Scenario::Limits, Scenario::List, Scenario::Create, Scenario::Review],
            Scenario::Baseline => &[Scenario::Baseline],
            Scenario::Limits => &[Scenario::Limits],
            Scenario::List => &[Scenario::List],
            Scenario::ListAll => &[Scenario::ListAll],
            Scenario::Create => &[Scenario::Create],
            Scenario::Review => &[Scenario::Review],
        }
    }

    /// The next operation (a single-operation scenario), drawn with `roll` in 0..100.
    pub fn pick(self, roll: u32) -> Scenario {
        match self {
            Scenario::Mixed => match roll {
                0..70 => Scenario::Limits,
                70..85 => Scenario::List,
                85..97 => Scenario::Create,
                _ => Scenario::Review,
            },
            s => s,
        }
    }
}

/// The size of the load tenancy a run uses (what `sspm-load seed` made).
#[derive(Debug, Clone, Copy)]
pub struct Tenancy {
    /// Customer business units (`bu-load-000000` …).
    pub units: usize,
    /// Review business units (`bu-load-review-0000` …).
    pub review_units: usize,
}

/// Why an operation failed: the gRPC code, or what was wrong with a successful answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A short label (the gRPC code name), counted in the report.
    pub label: String,
    /// The detail, shown once per label.
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure {
            label: code_name(s.code()).to_owned(),
            message: s.message().to_owned(),
        }
    }
}

fn unexpected(label: &str, message: String) -> Failure {
    Failure {
        label: label.to_owned(),
        message,
    }
}

/// How long a review may take (create, task, decision, applied) before it counts as failed.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(30);

/// One worker: its clients, its principal, its share of the business units and what it
/// knows of their limits.
#[derive(Debug)]
pub struct Worker {
    index: usize,
    workers: usize,
    clients: Clients,
    user: Token,
    netops: Token,
    tenancy: Tenancy,
    rng: StdRng,
    run_id: String,
    sequence: u64,
    /// Concurrent ports of the business units this worker changes, as last seen.
    known: HashMap<String, i32>,
    next_unit: usize,
    next_review: usize,
}

impl Worker {
    /// Worker `index` of `workers`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        workers: usize,
        clients: Clients,
        user: Token,
        netops: Token,
        tenancy: Tenancy,
        seed: u64,
        run_id: &str,
    ) -> Self {
        Self {
            index,
            workers,
            clients,
            user,
            netops,
            tenancy,
            rng: StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            run_id: run_id.to_owned(),
            sequence: 0,
            known: HashMap::new(),
            next_unit: 0,
            next_review: 0,
        }
    }

    /// A roll in 0..100 for [`Scenario::pick`].
    pub fn roll(&mut self) -> u32 {
        self.rng.random_range(0..100)
    }

    /// Reads the limits of every business unit this worker will change (before the clock
    /// starts, so that no measured operation carries this read).
    pub async fn prepare(&mut self, scenario: Scenario) -> Result<(), Failure> {
        let ops = scenario.ops();
        let mut units = Vec::new();
        if ops.contains(&Scenario::Create) {
            units.extend(self.share(self.tenancy.units).map(tenancy::unit));
            if units.is_empty() {
                return Err(unexpected(
                    "TOO_FEW_UNITS",
                    format!("{} workers need at least as many business units", self.workers),
                ));
            }
        }
        if ops.contains(&Scenario::Review) {
            let review: Vec<String> = self
                .share(self.tenancy.review_units)
                .map(tenancy::review_unit)
                .collect();
            if review.is_empty() {
                return Err(unexpected(
                    "TOO_FEW_REVIEW_UNITS",
                    format!("{} workers need at least as many review business units", self.workers),
                ));
            }
            units.extend(review);
        }
        for bu in units {
            self.refresh(&bu).await?;
        }
        Ok(())
    }

    /// The indices of `n` business units that are this worker's.
    fn share(&self, n: usize) -> impl Iterator<Item = usize> + use<> {
        (self.index..n).step_by(self.workers.max(1))
    }

    async fn refresh(&mut self, bu: &str) -> Result<i32, Failure> {
        let limits = self
            .clients
            .request
            .get_port_limits(authed(
                &self.user,
                pb::GetPortLimitsRequest {
                    business_unit_id: bu.to_owned(),
                },
            ))
            .await?
            .into_inner();
        let concurrent = limits.limits.map_or(0, |l| l.concurrent);
        self.known.insert(bu.to_owned(), concurrent);
        Ok(concurrent)
    }

    fn random_unit(&mut self) -> String {
        tenancy::unit(self.rng.random_range(0..self.tenancy.units.max(1)))
    }

    fn next_id(&mut self) -> String {
        self.sequence += 1;
        format!("load-{}-{}-{}", self.run_id, self.index, self.sequence)
    }

    /// Runs one operation (for `mixed`: one drawn from the blend; callers that report per
    /// operation draw it themselves with [`Scenario::pick`]).
    pub async fn run(&mut self, op: Scenario) -> Result<(), Failure> {
        match op {
            Scenario::Mixed => {
                let drawn = Scenario::Mixed.pick(self.roll());
                Box::pin(self.run(drawn)).await
            }
            Scenario::Baseline => {
                self.clients
                    .health
                    .check(HealthCheckRequest { service: String::new() })
                    .await?;
                Ok(())
            }
            Scenario::Limits => {
                let bu = self.random_unit();
                self.clients
                    .request
                    .get_port_limits(authed(&self.user, pb::GetPortLimitsRequest { business_unit_id: bu }))
                    .await?;
                Ok(())
            }
            Scenario::List => {
                let bu = self.random_unit();
                self.clients
                    .request
                    .list_port_change_requests(authed(
                        &self.user,
                        pb::ListPortChangeRequestsRequest {
                            business_unit_id: bu,
                            page_size: 50,
                            ..Default::default()
                        },
                    ))
                    .await?;
                Ok(())
            }
            Scenario::ListAll => {
                self.clients
                    .request
                    .list_port_change_requests(authed(
                        &self.user,
                        pb::ListPortChangeRequestsRequest {
                            page_size: 50,
                            ..Default::default()
                        },
                    ))
                    .await?;
                Ok(())
            }
            Scenario::Create => {
                let units: Vec<usize> = self.share(self.tenancy.units).collect();
                let bu = tenancy::unit(units[self.next_unit % units.len()]);
                self.next_unit += 1;
                self.create(&bu, None, pb::CreateOutcome::AutoApproved)
                    .await
                    .map(|_| ())
            }
            Scenario::Review => {
                let units: Vec<usize> = self.share(self.tenancy.review_units).collect();
                let bu = tenancy::review_unit(units[self.next_review % units.len()]);
                self.next_review += 1;
                self.review(&bu).await
            }
        }
    }

    /// Creates a change of one concurrent port on `bu` (up, or down at the 9,999 ceiling)
    /// and checks the outcome; the request id.
    async fn create(
        &mut self,
        bu: &str,
        justification: Option<&str>,
        expect: pb::CreateOutcome,
    ) -> Result<String, Failure> {
        let current = match self.known.get(bu) {
            Some(c) => *c,
            None => self.refresh(bu).await?,
        };
        let target = if current >= 9999 { current - 1 } else { current + 1 };
        let request_id = self.next_id();
        let answer = self
            .clients
            .request
            .create_port_change_request(authed(
                &self.user,
                pb::CreatePortChangeRequestRequest {
                    request_id: request_id.clone(),
                    business_unit_id: bu.to_owned(),
                    targets: Some(pb::PortTargets {
                        concurrent: Some(target),
                        ..Default::default()
                    }),
                    justification: justification.unwrap_or_default().to_owned(),
                    ..Default::default()
                },
            ))
            .await;
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(s) => {
                // The limits may have moved (R3) or a request may still be open (R5): read
                // them again for the next time.
                self.known.remove(bu);
                return Err(s.into());
            }
        };
        // A decrease at the ceiling is approved automatically even on the review units.
        let expected = if target < current {
            pb::CreateOutcome::AutoApproved
        } else {
            expect
        };
        if answer.outcome() != expected {
            self.known.remove(bu);
            return Err(unexpected(
                answer.outcome().as_str_name(),
                format!("{request_id} on {bu}: expected {}", expected.as_str_name()),
            ));
        }
        if expected == pb::CreateOutcome::AutoApproved {
            self.known.insert(bu.to_owned(), target);
        }
        Ok(request_id)
    }

    async fn review(&mut self, bu: &str) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + REVIEW_TIMEOUT;
        let request_id = self
            .create(bu, Some("load test: peak season"), pb::CreateOutcome::SentToReview)
            .await?;
        // The task is created by the request service's outbox, right after the answer.
        let task = loop {
            let found = self
                .clients
                .approval
                .get_approval_task(authed(
                    &self.netops,
                    pb::GetApprovalTaskRequest {
                        key: Some(pb::get_approval_task_request::Key::RequestId(request_id.clone())),
                    },
                ))
                .await;
            match found {
                Ok(t) => break t.into_inner().task.unwrap_or_default(),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            wait_or_time_out(deadline, &request_id, "its approval task").await?;
        };
        self.clients
            .approval
            .decide_approval_task(authed(
                &self.netops,
                pb::DecideApprovalTaskRequest {
                    task_id: task.task_id,
                    approve: true,
                    reason: "load test".into(),
                },
            ))
            .await?;
        loop {
            let r = self
                .clients
                .request
                .get_port_change_request(authed(
                    &self.user,
                    pb::GetPortChangeRequestRequest {
                        request_id: request_id.clone(),
                    },
                ))
                .await?
                .into_inner()
                .request
                .unwrap_or_default();
            match r.state() {
                pb::PortChangeRequestState::Approved => {
                    let after = r.limits_after.map_or(0, |l| l.concurrent);
                    self.known.insert(bu.to_owned(), after);
                    return Ok(());
                }
                pb::PortChangeRequestState::UnderReview => {}
                other => {
                    self.known.remove(bu);
                    return Err(unexpected(
                        other.as_str_name(),
                        format!("{request_id} approved but ended {}", other.as_str_name()),
                    ));
                }
            }
            wait_or_time_out(deadline, &request_id, "being applied").await?;
        }
    }
}

async fn wait_or_time_out(deadline: tokio::time::Instant, request_id: &str, what: &str) -> Result<(), Failure> {
    if tokio::time::Instant::now() >= deadline {
        return Err(unexpected(
            "REVIEW_TIMEOUT",
            format!("{request_id}: {what} took longer than {REVIEW_TIMEOUT:?}"),
        ));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_blend_and_single_scenarios() {
        let mut counts = HashMap::new();
        for roll in 0..100 {
            *counts.entry(Scenario::Mixed.pick(roll)).or_insert(0) += 1;
        }
        assert_eq!(counts[&Scenario::Limits], 70);
        assert_eq!(counts[&Scenario::List], 15);
        assert_eq!(counts[&Scenario::Create], 12);
        assert_eq!(counts[&Scenario::Review], 3);
        for s in [
            Scenario::Baseline,
            Scenario::Limits,
            Scenario::List,
            Scenario::Create,
            Scenario::Review,
        ] {
            assert!((0..100).all(|r| s.pick(r) == s.ops()[0]));
        }
    }
}
