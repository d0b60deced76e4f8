//! The result of a run: the summary lines printed on stdout, and the full
//! result as JSON (`--json`) for scripts that build tables and plots.

use serde_json::{json, Map, Value};

use super::driver::Phase;
use super::target::Code;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p99_9: f64,
    pub latency_ms_max: f64,
    pub latency_ms_mean: f64,
}

pub fn latency_summary(histogram: &hdrhistogram::Histogram<u64>) -> LatencySummary {
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    LatencySummary {
        latency_ms_p50: ms(0.50),
        latency_ms_p90: ms(0.90),
        latency_ms_p99: ms(0.99),
        latency_ms_p99_9: ms(0.999),
        latency_ms_max: histogram.max() as f64 / 1_000.0,
        latency_ms_mean: histogram.mean() / 1_000.0,
    }
}

/// The histogram as (value_us, count) buckets, one per distinct recorded
/// value (3 significant digits), ascending: enough to plot a latency CDF.
pub fn histogram_buckets(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|bucket| {
            (
                histogram.highest_equivalent(bucket.value_iterated_to()),
                bucket.count_at_value(),
            )
        })
        .collect()
}

/// Everything a run found.
#[derive(Debug)]
pub struct Report {
    pub workload: &'static str,
    pub mode: &'static str,
    /// e.g. `http (256 concurrent)`.
    pub label: String,
    /// The parameters the run used (flags and derived values).
    pub parameters: Map<String, Value>,
    pub phase: Phase,
    /// Workload-specific results, e.g. `time_to_sell_out_ms`.
    pub facts: Map<String, Value>,
    /// Lines printed after the summary (e.g. the drop's sell-out time).
    pub notes: Vec<String>,
    /// What the invariant check established when it found nothing wrong.
    pub invariants_checked: String,
    pub violations: Vec<String>,
}

impl Report {
    /// Answered requests per second over the measured phase.
    pub fn rate_per_second(&self) -> f64 {
        self.phase.answered() as f64 / self.phase.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one-line summary. `purchases` keeps the historical format that
    /// BENCHMARKS.md quotes.
    pub fn summary(&self) -> String {
        let latency = latency_summary(&self.phase.latency);
        let percentiles = format!(
            "latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            latency.latency_ms_p50,
            latency.latency_ms_p90,
            latency.latency_ms_p99,
            latency.latency_ms_p99_9,
            latency.latency_ms_max,
        );
        if self.workload == "purchases" {
            return format!(
                "{}: {} purchases ({} succeeded) in {:.2} s = {:.0} purchases/s; {percentiles}",
                self.label,
                self.phase.answered(),
                self.phase.succeeded(),
                self.phase.elapsed.as_secs_f64(),
                self.rate_per_second(),
            );
        }
        format!(
            "{}: {}: {} requests ({} succeeded, {} rejected, {} errors) in {:.2} s = {:.0} requests/s; {percentiles}",
            self.label,
            self.workload,
            self.phase.answered(),
            self.phase.succeeded(),
            self.phase.count_where(Code::is_rejection),
            self.phase.count_where(Code::is_error),
            self.phase.elapsed.as_secs_f64(),
            self.rate_per_second(),
        )
    }

    /// `rejections: sold_out 97000, …` and `errors: …`, when there were any.
    pub fn code_lines(&self) -> Vec<String> {
        let line = |title: &str, keep: fn(Code) -> bool| {
            let listed: Vec<String> = self
                .phase
                .counts_by_code
                .iter()
                .filter(|(code, _)| keep(Code::from_text(code)))
                .map(|(code, count)| format!("{code} {count}"))
                .collect();
            (!listed.is_empty()).then(|| format!("{title}: {}", listed.join(", ")))
        };
        let mut lines: Vec<String> = [
            line("rejections", Code::is_rejection),
            line("errors", Code::is_error),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self
            .parameters
            .get("rate_per_second")
            .is_some_and(|rate| !rate.is_null())
        {
            lines.push(format!(
                "open loop: {} scheduled, {} sent, {} dropped by the generator (in-flight bound reached)",
                self.phase.planned.min(self.phase.sent + self.phase.dropped_by_generator),
                self.phase.sent,
                self.phase.dropped_by_generator,
            ));
        }
        lines
    }

    pub fn to_json(&self) -> Value {
        let latency = latency_summary(&self.phase.latency);
        json!({
            "workload": self.workload,
            "mode": self.mode,
            "label": self.label,
            "parameters": self.parameters,
            "elapsed_s": self.phase.elapsed.as_secs_f64(),
            "requests": {
                "planned": self.phase.planned,
                "sent": self.phase.sent,
                "answered": self.phase.answered(),
                "succeeded": self.phase.succeeded(),
                "rejected": self.phase.count_where(Code::is_rejection),
                "errors": self.phase.count_where(Code::is_error),
                "dropped_by_generator": self.phase.dropped_by_generator,
            },
            "rate_per_second": self.rate_per_second(),
            "latency_ms": {
                "p50": latency.latency_ms_p50,
                "p90": latency.latency_ms_p90,
                "p99": latency.latency_ms_p99,
                "p99_9": latency.latency_ms_p99_9,
                "max": latency.latency_ms_max,
                "mean": latency.latency_ms_mean,
            },
            "counts_by_code": self.phase.counts_by_code,
            "facts": self.facts,
            "invariants_checked": self.invariants_checked,
            "violations": self.violations,
            "histogram": histogram_buckets(&self.phase.latency)
                .into_iter()
                .map(|(value_us, count)| json!({"value_us": value_us, "count": count}))
                .collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::new_histogram;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn phase_with(latencies_us: &[u64], counts: &[(&'static str, u64)]) -> Phase {
        let mut latency = new_histogram();
        for value in latencies_us {
            latency.record(*value).unwrap();
        }
        Phase {
            planned: counts.iter().map(|(_, count)| *count as usize).sum(),
            sent: counts.iter().map(|(_, count)| *count as usize).sum(),
            dropped_by_generator: 0,
            elapsed: Duration::from_secs(2),
            started: tokio::time::Instant::now(),
            latency,
            counts_by_code: counts.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    fn report(workload: &'static str, phase: Phase) -> Report {
        Report {
            workload,
            mode: "http",
            label: "http (4 concurrent)".into(),
            parameters: Map::new(),
            phase,
            facts: Map::new(),
            notes: Vec::new(),
            invariants_checked: String::new(),
            violations: vec!["one".into()],
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        // 1..=1000 ms, one each.
        let values: Vec<u64> = (1..=1_000).map(|ms| ms * 1_000).collect();
        let summary = latency_summary(&phase_with(&values, &[("ok", 1_000)]).latency);
        let near = |value: f64, wanted: f64| (value - wanted).abs() <= wanted * 0.002;
        assert!(near(summary.latency_ms_p50, 500.0), "{summary:?}");
        assert!(near(summary.latency_ms_p90, 900.0), "{summary:?}");
        assert!(near(summary.latency_ms_p99, 990.0), "{summary:?}");
        assert!(near(summary.latency_ms_p99_9, 999.0), "{summary:?}");
        assert!(near(summary.latency_ms_max, 1_000.0), "{summary:?}");
        assert!(near(summary.latency_ms_mean, 500.5), "{summary:?}");
    }

    #[test]
    fn the_histogram_exports_as_buckets_that_add_up() {
        let phase = phase_with(&[100, 100, 100, 2_000, 50_000], &[("ok", 5)]);
        let buckets = histogram_buckets(&phase.latency);
        assert_eq!(buckets.iter().map(|(_, count)| count).sum::<u64>(), 5);
        assert_eq!(buckets[0], (100, 3));
        assert_eq!(buckets.len(), 3);
        assert!(buckets.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let json = report("drop", phase).to_json();
        assert_eq!(json["histogram"][0], json!({"value_us": 100, "count": 3}));
        assert_eq!(json["requests"]["answered"], 5);
        assert_eq!(json["rate_per_second"], 2.5);
        assert_eq!(json["violations"], json!(["one"]));
        assert!(json["latency_ms"]["p99_9"].as_f64().unwrap() >= 49.9);
    }

    #[test]
    fn purchases_keep_the_historical_summary_and_others_list_codes() {
        let phase = phase_with(&[1_000; 4], &[("ok", 3), ("sold_out", 1)]);
        let purchases = report("purchases", phase).summary();
        assert!(
            purchases.starts_with("http (4 concurrent): 4 purchases (3 succeeded) in 2.00 s = 2 purchases/s; latency ms p50 1.00"),
            "{purchases}"
        );
        let phase = phase_with(
            &[1_000; 5],
            &[("ok", 3), ("sold_out", 1), ("overloaded", 1)],
        );
        let drop = report("drop", phase);
        assert!(drop.summary().starts_with(
            "http (4 concurrent): drop: 5 requests (3 succeeded, 1 rejected, 1 errors)"
        ));
        assert_eq!(
            drop.code_lines(),
            vec![
                "rejections: sold_out 1".to_string(),
                "errors: overloaded 1".to_string()
            ]
        );
    }
}
