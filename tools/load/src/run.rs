//! The two ways of loading the system.
//!
//! Closed loop: `concurrency` workers each issue their next operation as soon as the last
//! one answered; the system sets the pace, so this finds the maximum throughput.
//!
//! Open loop: operations are due at a fixed rate whatever the system does, and each one's
//! latency is measured from the time it was due, not from when a worker got to send it. A
//! stalled system therefore shows its stall in every operation that waited behind it
//! (the correction for coordinated omission); `concurrency` only bounds the calls in flight.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::scenario::{Failure, Scenario, Worker};
use crate::stats::Recorder;

/// How long and how hard.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// What to run.
    pub scenario: Scenario,
    /// Operations per second (open loop), or none (closed loop).
    pub rate: Option<f64>,
    /// Not measured, before the measurement.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
}

/// Counters of the progress line.
#[derive(Debug, Default)]
struct Progress {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    fn count(&self, failed: bool) {
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Prints a progress line on stderr every second (in place on a terminal, every 5 s in a
/// log) until the run ends.
fn progress_line(progress: Arc<Progress>, start: Instant, measure_from: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal { 1 } else { 5 };
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.tick().await;
        loop {
            tick.tick().await;
            let ok = progress.ok.load(Ordering::Relaxed);
            let failed = progress.failed.load(Ordering::Relaxed);
            let phase = if Instant::now() < measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            let line = format!(
                "[{:>4}s {phase}] {} ok, {} failed, {}/s",
                start.elapsed().as_secs(),
                ok,
                failed,
                (ok + failed - last) / every
            );
            last = ok + failed;
            if terminal {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

/// One operation's outcome: the label of its failure, if any, recorded with its first
/// message.
fn record(
    rec: &mut Recorder,
    first: &mut Vec<(String, String)>,
    op: &'static str,
    latency: Duration,
    r: &Result<(), Failure>,
) {
    match r {
        Ok(()) => rec.record(op, latency, None),
        Err(f) => {
            rec.record(op, latency, Some(&f.label));
            let key = format!("{op}: {}", f.label);
            if !first.iter().any(|(k, _)| *k == key) {
                first.push((key, f.message.clone()));
            }
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Every measured operation.
    pub recorder: Recorder,
    /// How long the measured part took.
    pub elapsed: Duration,
    /// The first message of each kind of failure.
    pub first_failures: Vec<(String, String)>,
}

/// Runs `plan` with `workers` (their number is the concurrency).
pub async fn run(plan: Plan, workers: Vec<Worker>) -> Outcome {
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let ticker = progress_line(progress.clone(), start, measure_from);
    let outcome = match plan.rate {
        None => closed(plan, workers, progress, measure_from, end).await,
        Some(rate) => open(plan, rate, workers, progress, measure_from, end).await,
    };
    ticker.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    outcome
}

async fn closed(
    plan: Plan,
    workers: Vec<Worker>,
    progress: Arc<Progress>,
    measure_from: Instant,
    end: Instant,
) -> Outcome {
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut rec = Recorder::default();
                let mut first = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let op = plan.scenario.pick(w.roll());
                    let r = w.run(op).await;
                    progress.count(r.is_err());
                    if t0 >= measure_from {
                        record(&mut rec, &mut first, op.name(), t0.elapsed(), &r);
                    }
                }
                (rec, first, Instant::now())
            })
        })
        .collect();
    let mut recorder = Recorder::default();
    let mut first_failures = Vec::new();
    let mut last = end;
    for t in tasks {
        let (rec, first, done) = t.await.expect("a worker panicked");
        recorder.merge(&rec);
        for f in first {
            if !first_failures.iter().any(|(k, _)| *k == f.0) {
                first_failures.push(f);
            }
        }
        last = last.max(done);
    }
    Outcome {
        recorder,
        // The operations begun before the end finish after it: count the time they took.
        elapsed: last - measure_from,
        first_failures,
    }
}

async fn open(
    plan: Plan,
    rate: f64,
    workers: Vec<Worker>,
    progress: Arc<Progress>,
    measure_from: Instant,
    end: Instant,
) -> Outcome {
    let concurrency = workers.len();
    let (give_back, mut idle) = mpsc::channel::<Worker>(concurrency);
    for w in workers {
        give_back.try_send(w).expect("room for every worker");
    }
    let shared = Arc::new(Mutex::new((Recorder::default(), Vec::new())));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = measure_from - plan.warmup;
    let mut due = start;
    // Every operation due before the end is sent, however late: dropping the late ones
    // would hide exactly the stalls this mode is for.
    while due < end {
        tokio::time::sleep_until(due).await;
        let mut w = idle.recv().await.expect("workers come back");
        let (shared, progress, give_back) = (shared.clone(), progress.clone(), give_back.clone());
        let scenario = plan.scenario;
        let measured = due >= measure_from;
        let due_at = due;
        tokio::spawn(async move {
            let op = scenario.pick(w.roll());
            let r = w.run(op).await;
            progress.count(r.is_err());
            if measured {
                let latency = due_at.elapsed();
                let mut s = shared.lock().await;
                let (rec, first) = &mut *s;
                record(rec, first, op.name(), latency, &r);
            }
            let _ = give_back.send(w).await;
        });
        due += interval;
    }
    // Wait for the operations in flight: every worker back.
    for _ in 0..concurrency {
        idle.recv().await.expect("workers come back");
    }
    let elapsed = measure_from.elapsed();
    let (recorder, first_failures) = std::mem::take(&mut *shared.lock().await);
    Outcome {
        recorder,
        elapsed,
        first_failures,
    }
}
