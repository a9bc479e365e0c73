//! Outages: 410 Gone on re-watch, dropped watches, an API-server outage and a control-API outage
//! of several seconds; afterwards the stored upstreams equal the API server's truth.

mod common;

use std::time::Duration;

use cellplane_testkit::kube::FakeKube;
use common::*;

const A: &str = "app.example.com";
const B: &str = "other.example.com";

fn addrs(ips: &[&str], port: u16) -> Vec<String> {
    ips.iter().map(|ip| format!("{ip}:{port}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_gone_dropped_watches_and_outages() {
    let h = Harness::new(20).await;
    let mut api = ControlApi::start(&h).await;
    api.put_domain(A, &h.domain_config()).await;
    api.put_domain(B, &h.domain_config()).await;
    let kube = FakeKube::start();
    kube.apply_service(&opted_service("web", A));
    kube.apply_service(&opted_service("other", B));
    kube.apply_endpoint_slice(&slice(
        "web-1",
        "web",
        8080,
        &[("10.0.0.1", State::Ready), ("10.0.0.2", State::Ready)],
    ));
    kube.apply_endpoint_slice(&slice(
        "other-1",
        "other",
        9090,
        &[("10.0.9.1", State::Ready)],
    ));
    let discovery = Discovery::start(Discovery::config(&kube, &api, h.dir.path())).await;
    let t = Duration::from_secs(10);
    wait_upstreams(&h, A, &addrs(&["10.0.0.1", "10.0.0.2"], 8080), t).await;
    wait_upstreams(&h, B, &addrs(&["10.0.9.1"], 9090), t).await;
    let lists_before = kube.requests("/api/v1/services")
        + kube.requests("/apis/discovery.k8s.io/v1/endpointslices");

    // the control API goes away for several seconds
    api.stop().await;
    kube.apply_endpoint_slice(&slice(
        "web-1",
        "web",
        8080,
        &[("10.0.0.1", State::NotReady), ("10.0.0.2", State::Ready)],
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // history expires and every watch is cut: re-watching gets 410 Gone, then re-lists
    kube.compact();
    kube.drop_watches();
    kube.apply_endpoint_slice(&slice("web-2", "web", 8080, &[("10.0.1.1", State::Ready)]));
    kube.delete_service(NS, "other");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // the API server is down for a while too
    kube.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kube.set_unavailable(false);
    kube.apply_endpoint_slice(&slice(
        "web-2",
        "web",
        8080,
        &[("10.0.1.1", State::Ready), ("10.0.1.2", State::Terminating)],
    ));
    kube.send_bookmarks();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures = discovery.metric("cellplane_discovery_push_failures_total");
    assert!(
        failures >= 1.0,
        "pushes failed during the outage: {failures}"
    );
    api.resume().await;

    // truth: web = 10.0.0.2 + 10.0.1.1; other deleted -> its domain emptied
    let t = Duration::from_secs(15);
    wait_upstreams(&h, A, &addrs(&["10.0.0.2", "10.0.1.1"], 8080), t).await;
    wait_upstreams(&h, B, &[], t).await;
    let lists_after = kube.requests("/api/v1/services")
        + kube.requests("/apis/discovery.k8s.io/v1/endpointslices");
    assert!(
        lists_after >= lists_before + 2,
        "both watches re-listed after 410 ({lists_before} -> {lists_after})"
    );
    assert!(discovery.metric("cellplane_discovery_watch_errors_total") >= 1.0);
    // and keeps following changes afterwards
    kube.delete_endpoint_slice(NS, "web-1");
    wait_upstreams(&h, A, &addrs(&["10.0.1.1"], 8080), Duration::from_secs(5)).await;
    discovery.stop().await;
    api.stop().await;
}

/// An unchanged recomputed list is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_lists_are_not_pushed() {
    let h = Harness::new(20).await;
    let api = ControlApi::start(&h).await;
    api.put_domain(A, &h.domain_config()).await;
    let kube = FakeKube::start();
    kube.apply_service(&opted_service("web", A));
    kube.apply_endpoint_slice(&slice("web-1", "web", 8080, &[("10.0.0.1", State::Ready)]));
    let discovery = Discovery::start(Discovery::config(&kube, &api, h.dir.path())).await;
    wait_upstreams(&h, A, &addrs(&["10.0.0.1"], 8080), Duration::from_secs(10)).await;
    let pushes = discovery.metric("cellplane_discovery_pushes_total");
    // not-ready endpoints appear and vanish: the list stays the same
    for i in 0..5 {
        kube.apply_endpoint_slice(&slice(
            "web-1",
            "web",
            8080,
            &[
                ("10.0.0.1", State::Ready),
                (&format!("10.0.0.{}", 10 + i), State::NotReady),
            ],
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(discovery.metric("cellplane_discovery_pushes_total"), pushes);
    assert!(discovery.metric("cellplane_discovery_pushes_unchanged_total") >= 1.0);
    discovery.stop().await;
}
