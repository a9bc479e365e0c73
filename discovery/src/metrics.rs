//! Prometheus text metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the lag histogram buckets.
const LAG_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    pub pushes: AtomicU64,
    pub push_failures: AtomicU64,
    pub unchanged: AtomicU64,
    pub watch_errors: AtomicU64,
    pub services_malformed: AtomicU64,
    pub domains: AtomicU64,
    pub synced: AtomicU64,
    lag: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LAG_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn observe_lag(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut h) = self.lag.lock() {
            for (i, b) in LAG_BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "cellplane_discovery_pushes_total",
                "counter",
                "Upstream lists written to the control API.",
                &self.pushes,
            ),
            (
                "cellplane_discovery_push_failures_total",
                "counter",
                "Pushes that failed (retried with backoff).",
                &self.push_failures,
            ),
            (
                "cellplane_discovery_pushes_unchanged_total",
                "counter",
                "Recomputed lists equal to the last push (not sent).",
                &self.unchanged,
            ),
            (
                "cellplane_discovery_watch_errors_total",
                "counter",
                "Errors of the Kubernetes watches (each followed by a retry).",
                &self.watch_errors,
            ),
            (
                "cellplane_discovery_services_malformed",
                "gauge",
                "Services skipped for malformed SLB annotations.",
                &self.services_malformed,
            ),
            (
                "cellplane_discovery_domains",
                "gauge",
                "Domains fed by at least one Service.",
                &self.domains,
            ),
            (
                "cellplane_discovery_synced",
                "gauge",
                "1 once both watches have listed.",
                &self.synced,
            ),
        ];
        for (name, kind, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "cellplane_discovery_push_lag_seconds";
        let _ = writeln!(out, "# HELP {name} From the first endpoint change seen to the push that carried it.\n# TYPE {name} histogram");
        if let Ok(h) = self.lag.lock() {
            for (i, b) in LAG_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                h.count, h.sum, h.count
            );
        }
        out
    }
}
