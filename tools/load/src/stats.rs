//! What a run measures: one HDR histogram of latencies per operation (microseconds, 1 µs to
//! 60 s, 3 significant figures), errors by gRPC code, and the report built from them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The longest latency recorded; longer ones are clamped to it.
const MAX_MICROS: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// The latencies and errors one worker saw (merged at the end of a run).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    ops: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// Records one completed operation: its latency, and its error if it failed (a failed
    /// call's latency counts too: a fast error is still an answer).
    pub fn record(&mut self, op: &'static str, latency: Duration, error: Option<&str>) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        self.ops
            .entry(op)
            .or_insert_with(histogram)
            .record(micros)
            .expect("clamped into bounds");
        if let Some(e) = error {
            *self.errors.entry(format!("{op}: {e}")).or_default() += 1;
        }
    }

    /// Adds another worker's records.
    pub fn merge(&mut self, other: &Recorder) {
        for (op, h) in &other.ops {
            self.ops
                .entry(op)
                .or_insert_with(histogram)
                .add(h)
                .expect("same bounds");
        }
        for (e, n) in &other.errors {
            *self.errors.entry(e.clone()).or_default() += n;
        }
    }

    /// Operations recorded.
    pub fn count(&self) -> u64 {
        self.ops.values().map(Histogram::len).sum()
    }

    /// Operations that failed.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report of a run that measured for `elapsed`.
    pub fn report(&self, run: Value, elapsed: Duration) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut all = histogram();
        let mut ops = serde_json::Map::new();
        for (op, h) in &self.ops {
            all.add(h).expect("same bounds");
            ops.insert((*op).to_owned(), summary(h, secs));
        }
        json!({
            "run": run,
            "elapsed_s": round(secs, 3),
            "total": summary(&all, secs),
            "errors": self.error_count(),
            "errors_by_code": self.errors,
            "operations": ops,
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn ms(micros: u64) -> f64 {
    round(micros as f64 / 1000.0, 3)
}

/// Count, throughput and latency percentiles (milliseconds) of one histogram.
fn summary(h: &Histogram<u64>, secs: f64) -> Value {
    if h.is_empty() {
        return json!({ "count": 0, "per_second": 0.0 });
    }
    json!({
        "count": h.len(),
        "per_second": round(h.len() as f64 / secs, 1),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5)),
            "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99.9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
            "mean": round(h.mean() / 1000.0, 3),
        },
    })
}

/// The report as a person reads it.
pub fn human(report: &Value) -> String {
    let mut out = String::new();
    let run = &report["run"];
    out.push_str(&format!(
        "scenario {} against {} ({}), {} s measured\n",
        run["scenario"].as_str().unwrap_or("?"),
        run["endpoint"].as_str().unwrap_or("?"),
        run["mode"].as_str().unwrap_or("?"),
        report["elapsed_s"]
    ));
    out.push_str(&format!(
        "{:<12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "operation", "count", "per second", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    let line = |name: &str, s: &Value| {
        let l = &s["latency_ms"];
        // A Value's Display ignores width: pad its text.
        let [count, rate, p50, p90, p99, p999, max] = [
            &s["count"],
            &s["per_second"],
            &l["p50"],
            &l["p90"],
            &l["p99"],
            &l["p99.9"],
            &l["max"],
        ]
        .map(|v| if v.is_null() { "-".to_owned() } else { v.to_string() });
        format!("{name:<12} {count:>9} {rate:>10} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}\n")
    };
    if let Some(ops) = report["operations"].as_object()
        && ops.len() > 1
    {
        for (op, s) in ops {
            out.push_str(&line(op, s));
        }
    }
    out.push_str(&line("total", &report["total"]));
    match report["errors_by_code"].as_object() {
        Some(errors) if !errors.is_empty() => {
            out.push_str("errors:\n");
            for (e, n) in errors {
                out.push_str(&format!("  {n:>9}  {e}\n"));
            }
        }
        _ => out.push_str("errors: none\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_reports_percentiles_and_errors() {
        let mut a = Recorder::default();
        for ms in 1..=100 {
            a.record("limits", Duration::from_millis(ms), None);
        }
        let mut b = Recorder::default();
        b.record("limits", Duration::from_secs(120), Some("UNAVAILABLE"));
        b.record("create", Duration::from_micros(0), Some("FAILED_PRECONDITION"));
        a.merge(&b);
        assert_eq!(a.count(), 102);
        assert_eq!(a.error_count(), 2);
        let r = a.report(json!({"scenario": "mixed"}), Duration::from_secs(2));
        assert_eq!(r["total"]["count"], 102);
        assert_eq!(r["total"]["per_second"], 51.0);
        let l = &r["operations"]["limits"]["latency_ms"];
        // 101 calls: 1..=100 ms and the clamped one; the 51st is 51 ms.
        assert!((l["p50"].as_f64().unwrap() - 51.0).abs() < 0.1, "{l}");
        // Clamped to the histogram's 60 s, not lost.
        assert!((l["max"].as_f64().unwrap() - 60_000.0).abs() < 60.0, "{l}");
        assert_eq!(r["errors_by_code"]["create: FAILED_PRECONDITION"], 1);
        let text = human(&r);
        assert!(
            text.contains("limits") && text.contains("1  create: FAILED_PRECONDITION"),
            "{text}"
        );
    }
}
