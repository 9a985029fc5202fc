//! `sspm-load`: the SSPM load harness. Seeds a large tenancy through the public API, then
//! runs a scenario against the running system (closed or open loop) and reports throughput,
//! latency percentiles from HDR histograms and errors by gRPC code, for people or (`--json`)
//! machines. See the README's "Load harness" and BENCHMARKS.md.

mod bulk;
mod history;
mod run;
mod scenario;
mod seed;
mod stats;
mod target;
mod tenancy;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sspm_platform::SspmConfig;
use sspm_proto::v1 as pb;

use crate::scenario::{Scenario, Tenancy, Worker};
use crate::target::{Target, authed, code_name};

#[derive(Debug, Parser)]
#[command(
    name = "sspm-load",
    version,
    about = "Load harness of SSPM — Self-Service Port Management"
)]
struct Cli {
    /// Configuration file of the system under load (TOML; `SSPM__*` variables override it):
    /// where the services listen and the key tokens are signed with, as for `sspm token`.
    #[arg(long, short, global = true, env = "SSPM_CONFIG")]
    config: Option<PathBuf>,
    /// The request service's endpoint [default: from the configuration].
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// HTTP/2 connections to each service; workers share them round robin.
    #[arg(long, global = true, default_value_t = 2)]
    connections: usize,
    /// Deadline of each call.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

/// The size of the load tenancy (the same numbers for `seed` and `run`).
#[derive(Debug, Clone, Copy, Args)]
struct Size {
    /// Customer business units (bu-load-000000 …), spread over `--clusters` clusters.
    #[arg(long, default_value_t = 1_000)]
    business_units: usize,
    /// Business units whose cluster (LREVIEW) sends every increase to review.
    #[arg(long, default_value_t = 100)]
    review_units: usize,
    /// Load users (load-000@load.example …), administrators of the partner bu-load.
    #[arg(long, default_value_t = 16)]
    principals: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the load tenancy through the public API (idempotent: run it again to finish
    /// or to grow it): a partner, its business units and users, Network Operations, daily
    /// limits, and optionally a history of requests.
    Seed {
        #[command(flatten)]
        size: Size,
        /// Clusters the business units are spread over.
        #[arg(long, default_value_t = 100)]
        clusters: usize,
        /// Historical requests to create (+1 concurrent port each, approved automatically).
        #[arg(long, default_value_t = 0)]
        requests: usize,
        /// Calls in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// An account representative (auth.account_representatives) that does the
        /// administration.
        #[arg(long, default_value = "rep@sspm.example")]
        rep: String,
    },
    /// Write a long history of synthetic requests that are over straight into the request
    /// service's database, tens of thousands a second (the API path of `seed --requests`
    /// makes about 150 a second): for measuring with up to millions of stored requests.
    /// Benchmarks only. Idempotent: it adds what is missing up to --requests.
    History {
        /// The request service's database, as it is configured for the service, e.g.
        /// sqlite:///tmp/sspm-bench/request.db or postgres://postgres@127.0.0.1/sspm_request.
        /// The service may be running.
        #[arg(long)]
        database_url: String,
        /// Synthetic requests there should be in all (hist-00000000 …).
        #[arg(long)]
        requests: usize,
        /// Spread over the first N load business units (seed them with `seed` first, or the
        /// requests of the others cannot be listed).
        #[arg(long, default_value_t = 1000)]
        business_units: usize,
        /// Clusters, as given to `seed`.
        #[arg(long, default_value_t = 100)]
        clusters: usize,
        /// Requesters, round robin over the first N load users.
        #[arg(long, default_value_t = 16)]
        principals: usize,
    },
    /// Run a scenario and report what it measured.
    Run {
        /// What to run.
        #[arg(long, short, value_enum)]
        scenario: Scenario,
        #[command(flatten)]
        size: Size,
        /// Operations in flight: the workers (closed loop), or the most that may be
        /// outstanding (open loop).
        #[arg(long, short = 'n', default_value_t = 32)]
        concurrency: usize,
        /// Open loop: operations per second, latency measured from when each was due
        /// (corrected for coordinated omission). Without it: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// How long to measure (e.g. 30s, 2m, 500ms).
        #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// How long to run before measuring.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Seed of the random choices (business units, the blend of `mixed`).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Exit with status 2 when any operation failed.
        #[arg(long)]
        strict: bool,
    },
}

/// "30s", "2m", "500ms", "1h", or a plain number of seconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration (examples: 30s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {raw:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{raw:?}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::History {
        database_url,
        requests,
        business_units,
        clusters,
        principals,
    } = &cli.command
    {
        let plan = history::HistoryPlan {
            requests: *requests,
            units: *business_units,
            clusters: *clusters,
            principals: *principals,
        };
        return history::write(database_url, plan).await.map(|_| ());
    }
    let config = SspmConfig::load(cli.config.as_deref())?;
    let target = Target::new(&config, cli.endpoint, cli.connections, cli.timeout)?;
    match cli.command {
        Command::Seed {
            size,
            clusters,
            requests,
            concurrency,
            rep,
        } => {
            anyhow::ensure!((1..=1000).contains(&clusters), "--clusters must be 1 to 1000");
            let plan = seed::SeedPlan {
                tenancy: Tenancy {
                    units: size.business_units,
                    review_units: size.review_units,
                },
                clusters,
                principals: size.principals,
                requests,
                concurrency,
            };
            seed::seed(&target, &rep, plan).await
        }
        Command::History { .. } => unreachable!("handled before the configuration is loaded"),
        Command::Run {
            scenario,
            size,
            concurrency,
            rate,
            duration,
            warmup,
            seed,
            json,
            strict,
        } => {
            anyhow::ensure!(concurrency >= 1, "--concurrency must be at least 1");
            if let Some(r) = rate {
                anyhow::ensure!(
                    r > 0.0 && r.is_finite(),
                    "--rate must be a positive number of operations per second"
                );
            }
            let tenancy = Tenancy {
                units: size.business_units,
                review_units: size.review_units,
            };
            let users = target.user_tokens(size.principals)?;
            let netops = target.token(tenancy::NETOPS)?;
            if scenario != Scenario::Baseline {
                // As the last user, on the last business units: all of them were seeded.
                check_seeded(&target, users.last().expect("one user at least"), size).await?;
            }
            let run_id = format!("{:x}", rand::random::<u32>());
            let mut workers: Vec<Worker> = (0..concurrency)
                .map(|i| {
                    Worker::new(
                        i,
                        concurrency,
                        target.clients(i),
                        users[i % users.len()].clone(),
                        netops.clone(),
                        tenancy,
                        seed,
                        &run_id,
                    )
                })
                .collect();
            let prepared = workers.iter_mut().map(|w| w.prepare(scenario));
            for r in futures_util::future::join_all(prepared).await {
                r.map_err(|f| anyhow::anyhow!("preparing the workers: {}: {}", f.label, f.message))?;
            }
            let plan = run::Plan {
                scenario,
                rate,
                warmup,
                duration,
            };
            let outcome = run::run(plan, workers).await;
            let description = json!({
                "scenario": scenario.name(),
                "endpoint": target.endpoint,
                "mode": match rate {
                    Some(r) => format!("open loop at {r}/s, at most {concurrency} in flight"),
                    None => format!("closed loop, {concurrency} in flight"),
                },
                "concurrency": concurrency,
                "rate": rate,
                "connections": target.connections.len(),
                "warmup_s": warmup.as_secs_f64(),
                "duration_s": duration.as_secs_f64(),
                "business_units": tenancy.units,
                "review_units": tenancy.review_units,
                "principals": size.principals,
                "seed": seed,
            });
            let report = outcome.recorder.report(description, outcome.elapsed);
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", stats::human(&report))?;
            }
            for (what, message) in &outcome.first_failures {
                eprintln!("first {what}: {message}");
            }
            anyhow::ensure!(
                outcome.recorder.count() > 0,
                "no operation completed in the measured time"
            );
            if strict && outcome.recorder.error_count() > 0 {
                drop(out);
                eprintln!("{} operations failed (--strict)", outcome.recorder.error_count());
                std::process::exit(2);
            }
            Ok(())
        }
    }
}

/// Fails clearly when the tenancy a run needs was not seeded (or not as large).
async fn check_seeded(target: &Target, user: &target::Token, size: Size) -> anyhow::Result<()> {
    let tenancy = Tenancy {
        units: size.business_units,
        review_units: size.review_units,
    };
    let mut last = vec![tenancy::unit(tenancy.units.saturating_sub(1))];
    if tenancy.review_units > 0 {
        last.push(tenancy::review_unit(tenancy.review_units - 1));
    }
    for bu in last {
        let found = target
            .clients(0)
            .request
            .get_port_limits(authed(
                user,
                pb::GetPortLimitsRequest {
                    business_unit_id: bu.clone(),
                },
            ))
            .await;
        if let Err(s) = found {
            anyhow::bail!(
                "{bu}: {}: {} — is the load tenancy seeded at this size? \
                 Run `sspm-load seed --business-units {} --review-units {} --principals {}` first",
                code_name(s.code()),
                s.message(),
                tenancy.units,
                tenancy.review_units,
                size.principals
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").unwrap_err().contains("not a duration"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
