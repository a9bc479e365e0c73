//! End-to-end latency: an EndpointSlice change in the (fake) Kubernetes API server -> discovery
//! -> control API -> etcd -> nginx-agent -> nginx, until the first request is served by the new
//! backend. Writes `target/bench/discovery.json` (`e2e_p50_ms`, `e2e_p99_ms`).
//! Run: `cargo bench -p cellplane-discovery --bench discovery`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cellplane_testkit::bench::{percentile, write_report};
use cellplane_testkit::kube::FakeKube;
use cellplane_testkit::nginx::{http_get, require_nginx, Backend};
use common::*;

const DOMAIN: &str = "bench.example.com";
const CHANGES: usize = 60;
const AGENT_DEBOUNCE_MS: u64 = 10;

fn main() {
    if !require_nginx() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let mut h = Harness::new(AGENT_DEBOUNCE_MS).await;
    let mut api = ControlApi::start(&h).await;
    api.put_domain(DOMAIN, &h.domain_config()).await;
    h.start_agent().await;
    h.start_nginx();
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let kube = FakeKube::start();
    kube.apply_service(&opted_service("web", DOMAIN));
    // one slice whose single endpoint moves from backend to backend (port change): one event
    let point = |b: &Backend| {
        slice(
            "web-1",
            "web",
            b.addr().port(),
            &[("127.0.0.1", State::Ready)],
        )
    };
    kube.apply_endpoint_slice(&point(&backends[0]));
    let cfg = Discovery::config(&kube, &api, h.dir.path());
    let coalesce_ms = cfg.coalesce_ms;
    let discovery = Discovery::start(cfg).await;
    h.wait_served_by(DOMAIN, &backends[0], Duration::from_secs(10))
        .await;
    let addr = h.domain_addr();
    let mut ms = Vec::new();
    let mut errors = 0u64;
    for i in 1..=CHANGES {
        let b = &backends[i % backends.len()];
        let t0 = Instant::now();
        kube.apply_endpoint_slice(&point(b));
        let name = b.name().to_string();
        tokio::task::block_in_place(|| loop {
            match http_get(addr, DOMAIN, "/") {
                Ok(r) if r.status == 200 && r.body == name => break,
                Ok(r) if r.status == 200 => {}
                _ => errors += 1,
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "change {i} not served"
            );
        });
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag_count = discovery.metric("cellplane_discovery_push_lag_seconds_count");
    discovery.stop().await;
    h.stop_agent().await;
    api.stop().await;

    ms.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "e2e_p50_ms": percentile(&ms, 0.50),
        "e2e_p99_ms": percentile(&ms, 0.99),
        "e2e_max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "changes": ms.len(),
        "errors_while_polling": errors,
        "coalesce_ms": coalesce_ms,
        "agent_debounce_ms": AGENT_DEBOUNCE_MS,
        "pushes_observed": lag_count,
    });
    write_report("discovery", &out);
}
