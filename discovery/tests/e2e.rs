//! Kubernetes endpoints -> discovery -> control API -> etcd -> nginx-agent -> nginx -> backends,
//! everything real except the Kubernetes API server (the in-process fake).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cellplane_testkit::kube::FakeKube;
use cellplane_testkit::nginx::{http_get, require_nginx, run_wrk, Backend};
use common::agent::SERIAL;
use common::*;

const A: &str = "app.example.com";

/// Waits until every one of 20 requests in a row answers 200 from a backend in `want`, and
/// every backend of `want` was seen.
async fn wait_only(h: &Harness, want: &[&Backend], timeout: Duration) {
    let addr = h.domain_addr();
    let want: BTreeSet<String> = want.iter().map(|b| b.name().to_string()).collect();
    let start = Instant::now();
    loop {
        let w = want.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                match http_get(addr, A, "/") {
                    Ok(r) if r.status == 200 && w.contains(&r.body) => {
                        seen.insert(r.body);
                    }
                    _ => return false,
                }
            }
            seen == w
        })
        .await
        .expect("probe");
        if ok {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{A} not served by exactly {want:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Chain {
    h: Harness,
    api: ControlApi,
    kube: FakeKube,
    discovery: Discovery,
}

async fn chain() -> Chain {
    let mut h = Harness::new(20).await;
    let api = ControlApi::start(&h).await;
    api.put_domain(A, &h.domain_config()).await;
    h.start_agent().await;
    h.start_nginx();
    let kube = FakeKube::start();
    kube.apply_service(&opted_service("web", A));
    let cfg = Discovery::config(&kube, &api, h.dir.path());
    let discovery = Discovery::start(cfg).await;
    Chain {
        h,
        api,
        kube,
        discovery,
    }
}

fn one(b: &Backend, st: State) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    slice(
        &format!("web-{}", b.name()),
        "web",
        b.addr().port(),
        &[("127.0.0.1", st)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_reach_real_requests() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = chain().await;
    let (b0, b1, b2) = (
        Backend::start("b0"),
        Backend::start("b1"),
        Backend::start("b2"),
    );
    let t = Duration::from_secs(10);

    // added
    c.kube.apply_endpoint_slice(&one(&b0, State::Ready));
    wait_only(&c.h, &[&b0], t).await;
    c.kube.apply_endpoint_slice(&one(&b1, State::Ready));
    wait_only(&c.h, &[&b0, &b1], t).await;
    // made not ready
    c.kube.apply_endpoint_slice(&one(&b0, State::NotReady));
    wait_only(&c.h, &[&b1], t).await;
    // terminating (still serving, but must leave the upstream) while a new one arrives
    c.kube.apply_endpoint_slice(&one(&b2, State::Ready));
    c.kube.apply_endpoint_slice(&one(&b1, State::Terminating));
    wait_only(&c.h, &[&b2], t).await;
    // not-ready back to ready
    c.kube.apply_endpoint_slice(&one(&b0, State::Ready));
    wait_only(&c.h, &[&b0, &b2], t).await;
    // removed
    c.kube.delete_endpoint_slice(NS, "web-b2");
    c.kube.delete_endpoint_slice(NS, "web-b1");
    wait_only(&c.h, &[&b0], t).await;
    let hits = b2.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b2.hits(), hits, "a removed endpoint still gets requests");
    // the Service stops opting in: its domain is emptied (503 from nginx)
    c.kube.apply_service(&service("web", &[]));
    wait_upstreams(&c.h, A, &[], t).await;
    let addr = c.h.domain_addr();
    wait_for(t, "503 for an emptied domain", move || {
        http_get(addr, A, "/")
            .map(|r| r.status == 503)
            .unwrap_or(false)
    })
    .await;
    assert!(c.discovery.metric("cellplane_discovery_pushes_total") >= 7.0);
    assert!(
        c.discovery
            .metric("cellplane_discovery_push_lag_seconds_count")
            >= 7.0
    );
    c.discovery.stop().await;
    c.h.stop_agent().await;
    c.api.stop().await;
}

/// All backends replaced one by one (new ready, old terminating, old removed, old stopped)
/// under wrk load: no socket errors and no non-2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_under_load_has_no_failures() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = chain().await;
    let t = Duration::from_secs(10);
    let mut old: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("old{i}"))).collect();
    for b in &old {
        c.kube.apply_endpoint_slice(&one(b, State::Ready));
    }
    let refs: Vec<&Backend> = old.iter().collect();
    wait_only(&c.h, &refs, t).await;

    let addr = c.h.domain_addr();
    let wrk = tokio::task::spawn_blocking(move || run_wrk(addr, A, Duration::from_secs(6), 8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = Vec::new();
    for i in 0..3 {
        let n = Backend::start(&format!("new{i}"));
        c.kube.apply_endpoint_slice(&one(&n, State::Ready));
        new.push(n);
        let o = old.remove(0);
        // the seed platform's order: out of the LB first (terminating), then deleted, then gone
        c.kube.apply_endpoint_slice(&one(&o, State::Terminating));
        let ups: Vec<String> = old
            .iter()
            .chain(new.iter())
            .map(|b| b.addr().to_string())
            .collect();
        wait_upstreams(&c.h, A, &ups, t).await;
        // nginx no longer sends to it once its hit count stops moving
        let start = Instant::now();
        loop {
            let before = o.hits();
            tokio::time::sleep(Duration::from_millis(250)).await;
            if o.hits() == before {
                break;
            }
            assert!(start.elapsed() < t, "{} still receives requests", o.name());
        }
        c.kube
            .delete_endpoint_slice(NS, &format!("web-{}", o.name()));
        drop(o);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let result = wrk.await.expect("wrk thread");
    eprintln!("{}", result.output);
    assert!(
        result.requests > 500,
        "wrk made {} requests",
        result.requests
    );
    assert_eq!(result.socket_errors, 0, "socket errors during the rollout");
    assert_eq!(result.non_2xx, 0, "non-2xx responses during the rollout");
    let refs: Vec<&Backend> = new.iter().collect();
    wait_only(&c.h, &refs, t).await;
    c.discovery.stop().await;
    c.h.stop_agent().await;
    c.api.stop().await;
}
