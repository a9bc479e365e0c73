//! Counters and gauges served as Prometheus text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The steps, in order.
pub const STEPS: [&str; 5] = ["fetch", "checkout", "compile", "build", "push"];

/// Upper bounds (seconds) of the step duration histogram.
const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0];

#[derive(Debug, Default)]
pub struct StepHistogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Builds stopped because the task was no longer ours (recovered elsewhere, deleted).
    pub lost: AtomicU64,
    /// Tasks refused before running (invalid request, mismatched key).
    pub refused: AtomicU64,
    pub running: AtomicU64,
    pub queued: AtomicU64,
    pub etcd_errors: AtomicU64,
    steps: [StepHistogram; STEPS.len()],
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    pub fn observe_step(&self, step: &str, ms: u64) {
        let Some(i) = STEPS.iter().position(|s| *s == step) else {
            return;
        };
        let h = &self.steps[i];
        let secs = ms as f64 / 1000.0;
        for (b, le) in h.buckets.iter().zip(BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, kind, v) in [
            (
                "cellplane_build_agent_builds_started_total",
                "builds started",
                "counter",
                g(&self.started),
            ),
            (
                "cellplane_build_agent_builds_succeeded_total",
                "builds pushed",
                "counter",
                g(&self.succeeded),
            ),
            (
                "cellplane_build_agent_builds_failed_total",
                "builds failed",
                "counter",
                g(&self.failed),
            ),
            (
                "cellplane_build_agent_builds_cancelled_total",
                "builds cancelled",
                "counter",
                g(&self.cancelled),
            ),
            (
                "cellplane_build_agent_builds_lost_total",
                "builds stopped because the task was moved or removed",
                "counter",
                g(&self.lost),
            ),
            (
                "cellplane_build_agent_tasks_refused_total",
                "tasks refused before running (invalid request or key)",
                "counter",
                g(&self.refused),
            ),
            (
                "cellplane_build_agent_builds_running",
                "builds running now",
                "gauge",
                g(&self.running),
            ),
            (
                "cellplane_build_agent_builds_queued",
                "builds waiting for a slot",
                "gauge",
                g(&self.queued),
            ),
            (
                "cellplane_build_agent_etcd_errors_total",
                "etcd requests that failed",
                "counter",
                g(&self.etcd_errors),
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let name = "cellplane_build_agent_step_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} duration of build steps\n# TYPE {name} histogram"
        );
        for (step, h) in STEPS.iter().zip(&self.steps) {
            for (b, le) in h.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(o, "{name}_bucket{{step=\"{step}\",le=\"{le}\"}} {}", g(b));
            }
            let count = g(&h.count);
            let _ = writeln!(o, "{name}_bucket{{step=\"{step}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                o,
                "{name}_sum{{step=\"{step}\"}} {:.3}",
                g(&h.sum_ms) as f64 / 1000.0
            );
            let _ = writeln!(o, "{name}_count{{step=\"{step}\"}} {count}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram() {
        let m = Metrics::default();
        m.observe_step("build", 700);
        Metrics::inc(&m.succeeded);
        let t = m.render();
        assert!(t.contains(
            "cellplane_build_agent_step_duration_seconds_bucket{step=\"build\",le=\"0.5\"} 0"
        ));
        assert!(t.contains(
            "cellplane_build_agent_step_duration_seconds_bucket{step=\"build\",le=\"1\"} 1"
        ));
        assert!(t.contains("cellplane_build_agent_step_duration_seconds_sum{step=\"build\"} 0.700"));
        assert!(t.contains("cellplane_build_agent_builds_succeeded_total 1"));
    }
}
