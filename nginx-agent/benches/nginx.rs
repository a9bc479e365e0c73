//! Convergence bench: time from the etcd write to the first request served by the new state,
//! for upstream pushes (no reload) and config changes (reload), under a light wrk load.
//! Writes `target/bench/nginx.json`. Run: `cargo bench -p cellplane-nginx-agent --bench nginx`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cellplane_slb::Header;
use cellplane_testkit::bench::{percentile, write_report};
use cellplane_testkit::nginx::{http_get, require_nginx, run_wrk, Backend};
use common::Harness;

const DOMAIN: &str = "bench.example.com";
const DYN_CHANGES: usize = 250;
const RELOAD_CHANGES: usize = 30;
const DEBOUNCE_MS: u64 = 100;
/// wrk connections (one thread each, up to 2): a steady load that leaves a core for etcd and the agent.
const LOAD_CONNECTIONS: u32 = 1;

/// Polls until `ok(response)`; counts non-200 answers and failed connections as errors.
fn poll_until(
    h: &Harness,
    ok: impl Fn(&cellplane_testkit::nginx::HttpResponse) -> bool,
    errors: &mut u64,
) -> Duration {
    let start = Instant::now();
    loop {
        match http_get(h.domain_addr(), DOMAIN, "/") {
            Ok(r) if r.status == 200 => {
                if ok(&r) {
                    return start.elapsed();
                }
            }
            _ => *errors += 1,
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("no convergence within 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

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
    let mut h = Harness::new(DEBOUNCE_MS).await;
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    h.put_config(DOMAIN, &h.domain_config()).await;
    h.put_upstreams(DOMAIN, &[backends[0].addr()]).await;
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(DOMAIN, &backends[0], Duration::from_secs(10))
        .await;
    let addr = h.domain_addr();

    // --- dynamic upstream changes ---
    let wrk = tokio::task::spawn_blocking(move || {
        run_wrk(addr, DOMAIN, Duration::from_secs(8), LOAD_CONNECTIONS)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut dyn_ms = Vec::new();
    let mut dyn_poll_errors = 0u64;
    for i in 1..=DYN_CHANGES {
        let b = &backends[i % backends.len()];
        let t0 = Instant::now();
        h.put_upstreams(DOMAIN, &[b.addr()]).await;
        let name = b.name().to_string();
        let waited = tokio::task::block_in_place(|| {
            poll_until(&h, |r| r.body == name, &mut dyn_poll_errors)
        });
        let total = t0.elapsed();
        if total > Duration::from_millis(50) {
            eprintln!(
                "slow change {i}: total {total:?}, polling {waited:?}, agent push lag {:.1} ms",
                h.metric("cellplane_nginx_agent_push_lag_seconds") * 1000.0
            );
        }
        dyn_ms.push(total.as_secs_f64() * 1000.0);
    }
    let w = wrk.await.expect("wrk");
    let errors_during_dyn = dyn_poll_errors + w.non_2xx + w.socket_errors;
    let dyn_load_requests = w.requests;
    eprintln!(
        "dyn wrk: {} requests, non-2xx {}, socket errors {}",
        w.requests, w.non_2xx, w.socket_errors
    );

    // --- config changes (reload path) ---
    let wrk = tokio::task::spawn_blocking(move || {
        run_wrk(addr, DOMAIN, Duration::from_secs(15), LOAD_CONNECTIONS)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reload_ms = Vec::new();
    let mut reload_poll_errors = 0u64;
    for i in 1..=RELOAD_CHANGES {
        let mut c = h.domain_config();
        c.response_headers = vec![Header {
            name: "X-Gen".into(),
            value: i.to_string(),
        }];
        let t0 = Instant::now();
        h.put_config(DOMAIN, &c).await;
        let want = i.to_string();
        tokio::task::block_in_place(|| {
            poll_until(
                &h,
                |r| r.headers.get("x-gen") == Some(&want),
                &mut reload_poll_errors,
            )
        });
        reload_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let w = wrk.await.expect("wrk");
    let errors_during_reload = reload_poll_errors + w.non_2xx + w.socket_errors;
    let reload_load_requests = w.requests;
    eprintln!(
        "reload wrk: {} requests, non-2xx {}, socket errors {}",
        w.requests, w.non_2xx, w.socket_errors
    );
    h.stop_agent().await;

    dyn_ms.sort_by(f64::total_cmp);
    reload_ms.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "dyn_p50_ms": percentile(&dyn_ms, 0.50),
        "dyn_p99_ms": percentile(&dyn_ms, 0.99),
        "reload_p50_ms": percentile(&reload_ms, 0.50),
        "reload_p99_ms": percentile(&reload_ms, 0.99),
        "errors_during_dyn": errors_during_dyn,
        "errors_during_reload": errors_during_reload,
        "dyn_changes": dyn_ms.len(),
        "reload_changes": reload_ms.len(),
        "debounce_ms": DEBOUNCE_MS,
        "load_connections": LOAD_CONNECTIONS,
        "dyn_load_requests": dyn_load_requests,
        "reload_load_requests": reload_load_requests,
    });
    write_report("nginx", &out);
}
