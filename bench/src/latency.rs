//! A latency distribution: an HDR histogram of nanoseconds (3 significant
//! digits), read in microseconds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// The percentiles a bench reports, with the suffix of their figures.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

/// Longest latency recorded as itself; a longer one counts as this.
const LONGEST_NS: u64 = 3_600 * 1_000_000_000;
/// The plotted buckets grow by this factor, from 1 µs.
const BUCKET_GROWTH: f64 = 1.1;

#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, LONGEST_NS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    pub fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(nanos.max(1));
    }

    /// Adds every latency recorded in `other`.
    pub fn add(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("histograms of the same bounds add up");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `percentile` (0 to 100), in microseconds.
    pub fn percentile_us(&self, percentile: f64) -> f64 {
        micros(self.0.value_at_percentile(percentile))
    }

    /// `<name>_p50_us`, `<name>_p90_us`, ... for each of `percentiles`.
    pub fn figures(&self, name: &str, percentiles: &[(&str, f64)]) -> Map<String, Value> {
        percentiles
            .iter()
            .map(|&(suffix, percentile)| {
                let value = round(self.percentile_us(percentile), 1);
                (format!("{name}_{suffix}_us"), json!(value))
            })
            .collect()
    }

    /// Writes the distribution to `target/bench/<file>.json` for the plots:
    /// `{"what", "calls", "percentiles_us": {"p50", ...}, "buckets":
    /// [[upper bound in µs, calls], ...]}`, buckets growing by 10 % from
    /// the fastest call's to the slowest call's.
    pub fn write_distribution(&self, file: &str, what: &str) -> anyhow::Result<PathBuf> {
        let buckets: Vec<(f64, u64)> = self
            .0
            .iter_log(1_000, BUCKET_GROWTH)
            .map(|bucket| {
                let upper = micros(bucket.value_iterated_to());
                (round(upper, 1), bucket.count_since_last_iteration())
            })
            .skip_while(|&(_, calls)| calls == 0)
            .collect();
        let percentiles: Map<String, Value> = PERCENTILES
            .iter()
            .map(|&(suffix, percentile)| {
                (
                    suffix.to_owned(),
                    json!(round(self.percentile_us(percentile), 1)),
                )
            })
            .collect();
        let distribution = json!({
            "what": what,
            "calls": self.count(),
            "percentiles_us": percentiles,
            "buckets": buckets,
        });
        let dir = crate::report::dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{file}.json"));
        std::fs::write(&path, serde_json::to_string(&distribution)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

/// `value` rounded to `decimals` places, as figures are reported.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
