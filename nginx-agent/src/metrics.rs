//! Counters and gauges served as Prometheus text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub validation_failures: AtomicU64,
    pub pushes: AtomicU64,
    pub push_failures: AtomicU64,
    pub reconciles: AtomicU64,
    pub etcd_errors: AtomicU64,
    pub watch_resyncs: AtomicU64,
    pub invalid_records: AtomicU64,
    pub applied_revision: AtomicI64,
    pub seen_revision: AtomicI64,
    pub config_revision: AtomicI64,
    /// Watch update received -> upstreams pushed, last time, in microseconds.
    pub push_lag_us: AtomicU64,
    /// First pending config change -> reload confirmed, last time, in microseconds.
    pub reload_lag_us: AtomicU64,
    pub config_pending: AtomicU64,
    pub last_error: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let gi = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        let secs = |a: &AtomicU64| format!("{:.6}", a.load(Ordering::Relaxed) as f64 / 1e6);
        c(
            "cellplane_nginx_agent_reloads_total",
            "nginx reloads (HUP) confirmed",
            "counter",
            g(&self.reloads),
        );
        c(
            "cellplane_nginx_agent_reload_failures_total",
            "reloads not confirmed and rolled back",
            "counter",
            g(&self.reload_failures),
        );
        c(
            "cellplane_nginx_agent_validation_failures_total",
            "rendered trees rejected by nginx -t",
            "counter",
            g(&self.validation_failures),
        );
        c(
            "cellplane_nginx_agent_upstream_pushes_total",
            "upstream pushes into the shared dict",
            "counter",
            g(&self.pushes),
        );
        c(
            "cellplane_nginx_agent_upstream_push_failures_total",
            "failed upstream pushes",
            "counter",
            g(&self.push_failures),
        );
        c(
            "cellplane_nginx_agent_reconciles_total",
            "fresh reads reconciled",
            "counter",
            g(&self.reconciles),
        );
        c(
            "cellplane_nginx_agent_etcd_errors_total",
            "failed etcd reads and writes",
            "counter",
            g(&self.etcd_errors),
        );
        c(
            "cellplane_nginx_agent_watch_resyncs_total",
            "full re-lists (start, compaction)",
            "counter",
            g(&self.watch_resyncs),
        );
        c(
            "cellplane_nginx_agent_invalid_records_total",
            "records skipped as invalid",
            "counter",
            g(&self.invalid_records),
        );
        c(
            "cellplane_nginx_agent_applied_revision",
            "etcd revision fully applied",
            "gauge",
            gi(&self.applied_revision),
        );
        c(
            "cellplane_nginx_agent_seen_revision",
            "latest etcd revision seen",
            "gauge",
            gi(&self.seen_revision),
        );
        c(
            "cellplane_nginx_agent_config_revision",
            "etcd revision of the live nginx config",
            "gauge",
            gi(&self.config_revision),
        );
        c(
            "cellplane_nginx_agent_revision_lag",
            "seen minus applied revision",
            "gauge",
            (self.seen_revision.load(Ordering::Relaxed)
                - self.applied_revision.load(Ordering::Relaxed))
            .max(0)
            .to_string(),
        );
        c(
            "cellplane_nginx_agent_push_lag_seconds",
            "watch update to upstream push, last",
            "gauge",
            secs(&self.push_lag_us),
        );
        c(
            "cellplane_nginx_agent_reload_lag_seconds",
            "config change to confirmed reload, last",
            "gauge",
            secs(&self.reload_lag_us),
        );
        c(
            "cellplane_nginx_agent_config_pending",
            "1 while a config change waits for its reload",
            "gauge",
            g(&self.config_pending),
        );
        c(
            "cellplane_nginx_agent_config_error",
            "1 while the last config change failed",
            "gauge",
            g(&self.last_error),
        );
        o
    }
}
