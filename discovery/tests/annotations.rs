//! A Service with malformed SLB annotations is skipped with a warning naming it; the others
//! keep working.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellplane_testkit::kube::FakeKube;
use common::*;

const A: &str = "app.example.com";
const BAD: &str = "bad.example.com";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_annotation_is_skipped_with_a_warning() {
    let logs = Captured::default();
    let w = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    let h = Harness::new(20).await;
    let api = ControlApi::start(&h).await;
    api.put_domain(A, &h.domain_config()).await;
    api.put_domain(BAD, &h.domain_config()).await;
    let kube = FakeKube::start();
    kube.apply_service(&opted_service("web", A));
    kube.apply_service(&service(
        "broken",
        &[
            (cellplane_discovery::annotations::GROUP, GROUP),
            (cellplane_discovery::annotations::DOMAIN, BAD),
            (cellplane_discovery::annotations::PORT, "not a port!"),
        ],
    ));
    kube.apply_endpoint_slice(&slice("web-1", "web", 8080, &[("10.0.0.1", State::Ready)]));
    kube.apply_endpoint_slice(&slice(
        "broken-1",
        "broken",
        8080,
        &[("10.0.5.1", State::Ready)],
    ));
    let discovery = Discovery::start(Discovery::config(&kube, &api, h.dir.path())).await;
    wait_upstreams(
        &h,
        A,
        &["10.0.0.1:8080".to_string()],
        Duration::from_secs(10),
    )
    .await;

    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("shop/broken"))
        .unwrap_or_else(|| panic!("no warning naming shop/broken in:\n{text}"));
    assert!(warning.contains("cellplane.io/slb-port"), "{warning}");
    assert_eq!(
        discovery.metric("cellplane_discovery_services_malformed"),
        1.0
    );
    // the others keep working
    kube.apply_endpoint_slice(&slice(
        "web-1",
        "web",
        8080,
        &[("10.0.0.1", State::Ready), ("10.0.0.2", State::Ready)],
    ));
    wait_upstreams(
        &h,
        A,
        &["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        stored_upstreams(&h, BAD).await,
        None,
        "a malformed Service was pushed"
    );
    // the warning is not repeated for every event
    let count = logs.text().matches("shop/broken").count();
    assert_eq!(count, 1, "warned once per resourceVersion");
    // fixed: the Service joins
    kube.apply_service(&opted_service("broken", BAD));
    wait_upstreams(
        &h,
        BAD,
        &["10.0.5.1:8080".to_string()],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        discovery.metric("cellplane_discovery_services_malformed"),
        0.0
    );
    discovery.stop().await;
}
