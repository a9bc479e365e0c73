//! Request counters served as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) -> count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (route, outcome) -> count; outcome: written, unchanged, refused
    writes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// source (`api`, `webhook`) -> builds dispatched to an agent
    builds_submitted: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
        }
    }

    pub fn write(&self, route: &str, outcome: &'static str) {
        if let Ok(mut m) = self.writes.lock() {
            *m.entry((route.to_string(), outcome)).or_default() += 1;
        }
    }

    pub fn build_submitted(&self, source: &'static str) {
        if let Ok(mut m) = self.builds_submitted.lock() {
            *m.entry(source).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# HELP cellplane_api_requests_total HTTP requests by method, route and status\n# TYPE cellplane_api_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(o, "cellplane_api_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        o.push_str("# HELP cellplane_api_writes_total authorized writes by route and outcome\n# TYPE cellplane_api_writes_total counter\n");
        if let Ok(m) = self.writes.lock() {
            for ((route, outcome), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "cellplane_api_writes_total{{route=\"{route}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        o.push_str("# HELP cellplane_api_builds_submitted_total builds dispatched to an agent, by source (api, webhook)\n# TYPE cellplane_api_builds_submitted_total counter\n");
        if let Ok(m) = self.builds_submitted.lock() {
            for (source, n) in m.iter() {
                let _ = writeln!(
                    o,
                    "cellplane_api_builds_submitted_total{{source=\"{source}\"}} {n}"
                );
            }
        }
        o
    }
}
