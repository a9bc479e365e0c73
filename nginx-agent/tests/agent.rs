//! nginx-agent against a real etcd, a real nginx (Lua balancer) and real backends.
//! Run: `CELLPLANE_REQUIRE_PRIV=1 cargo test -p cellplane-nginx-agent --test agent`

mod common;

use std::time::{Duration, Instant};

use cellplane_slb::Header;
use cellplane_testkit::nginx::{require_nginx, run_wrk, Backend};
use common::*;

const A: &str = "app.example.com";
const B: &str = "other.example.com";

fn with_header(mut c: cellplane_slb::DomainConfig, value: &str) -> cellplane_slb::DomainConfig {
    c.response_headers = vec![Header {
        name: "X-Gen".into(),
        value: value.into(),
    }];
    c
}

async fn wait_header(h: &Harness, host: &str, value: &str, timeout: Duration) {
    let addr = h.domain_addr();
    let (host, value) = (host.to_string(), value.to_string());
    wait_for(timeout, &format!("{host} X-Gen {value}"), move || {
        cellplane_testkit::nginx::http_get(addr, &host, "/")
            .map(|r| r.status == 200 && r.headers.get("x-gen") == Some(&value))
            .unwrap_or(false)
    })
    .await;
}

/// 100 upstream changes under wrk: 0 socket errors, 0 non-2xx, same master and worker pids;
/// an empty list answers 503 at once; an agent restart with unchanged config does not reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_changes_under_load_never_reload() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(300).await;
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    h.put_config(A, &h.domain_config()).await;
    h.put_upstreams(A, &[backends[0].addr()]).await;
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(A, &backends[0], Duration::from_secs(10))
        .await;
    let before = h.pids();
    assert_eq!(before.1.len(), 2, "two workers");
    let pushes0 = h.metric("cellplane_nginx_agent_upstream_pushes_total");

    let addr = h.domain_addr();
    let wrk = tokio::task::spawn_blocking(move || run_wrk(addr, A, Duration::from_secs(5), 16));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sets: [&[usize]; 5] = [&[1], &[0, 1], &[2], &[2, 3], &[3, 0, 1]];
    let mut last: &[usize] = &[0];
    for i in 0..100 {
        last = sets[i % sets.len()];
        let addrs: Vec<_> = last.iter().map(|&b| backends[b].addr()).collect();
        h.put_upstreams(A, &addrs).await;
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let result = wrk.await.expect("wrk thread");
    eprintln!("{}", result.output);
    assert!(
        result.requests > 1000,
        "wrk made {} requests",
        result.requests
    );
    assert_eq!(
        result.socket_errors, 0,
        "socket errors during upstream changes"
    );
    assert_eq!(
        result.non_2xx, 0,
        "non-2xx responses during upstream changes"
    );
    // the final list is live, without a reload
    let lastb = &backends[last[0]];
    h.wait_served_by(A, lastb, Duration::from_secs(5)).await;
    assert_eq!(
        h.pids(),
        before,
        "nginx master/worker pids changed: a reload happened"
    );
    assert!(h.metric("cellplane_nginx_agent_upstream_pushes_total") - pushes0 >= 50.0);
    let m = wait_member(&h, Duration::from_secs(5), "status", |_| true).await;
    assert_eq!(m.reload_count, 0, "{m:?}");
    for b in &backends[1..] {
        assert!(b.hits() > 0, "backend {} never served", b.name());
    }

    // empty list: a fast 503 decided before the balancer
    h.put_upstreams(A, &[]).await;
    let a2 = h.domain_addr();
    wait_for(Duration::from_secs(5), "503 on empty list", move || {
        cellplane_testkit::nginx::http_get(a2, A, "/")
            .map(|r| r.status == 503)
            .unwrap_or(false)
    })
    .await;
    let t = Instant::now();
    assert_eq!(h.get(A).status, 503);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "503 took {:?}",
        t.elapsed()
    );

    // agent restart: rebuilt from etcd, upstreams pushed, config unchanged -> no reload
    h.stop_agent().await;
    assert!(
        h.member().await.is_none(),
        "member status removed on clean shutdown"
    );
    h.put_upstreams(A, &[backends[2].addr()]).await;
    h.start_agent().await;
    h.wait_served_by(A, &backends[2], Duration::from_secs(10))
        .await;
    assert_eq!(h.pids(), before, "agent restart reloaded nginx");
    assert_eq!(h.metric("cellplane_nginx_agent_reloads_total"), 0.0);
    h.stop_agent().await;
}

/// One config change -> one reload; 20 changes inside the debounce window -> one reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_reload_once_and_bursts_coalesce() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(500).await;
    let b0 = Backend::start("b0");
    h.put_config(A, &h.domain_config()).await;
    h.put_upstreams(A, &[b0.addr()]).await;
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(A, &b0, Duration::from_secs(10)).await;
    let r0 = wait_member(&h, Duration::from_secs(5), "status", |_| true)
        .await
        .reload_count;
    let pids0 = h.pids();

    h.put_config(A, &with_header(h.domain_config(), "1")).await;
    wait_header(&h, A, "1", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = wait_member(&h, Duration::from_secs(5), "one reload", |m| {
        m.reload_count > r0
    })
    .await;
    assert_eq!(m.reload_count, r0 + 1, "one change, one reload: {m:?}");
    assert_ne!(h.pids().1, pids0.1, "workers replaced by the reload");
    assert_eq!(h.pids().0, pids0.0, "same master");

    for i in 2..=21 {
        h.put_config(A, &with_header(h.domain_config(), &i.to_string()))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_header(&h, A, "21", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = wait_member(&h, Duration::from_secs(5), "burst", |m| {
        m.reload_count >= r0 + 2
    })
    .await;
    assert_eq!(
        m.reload_count,
        r0 + 2,
        "20 changes in the window, one reload: {m:?}"
    );
    assert_eq!(
        h.metric("cellplane_nginx_agent_reloads_total") as u64,
        m.reload_count
    );
    h.stop_agent().await;
}

/// A config nginx rejects: the live config keeps serving every domain, the member status shows
/// the error, other domains' upstream pushes keep flowing, a later valid change applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_config_keeps_the_live_one() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(200).await;
    let (a0, b0, b1) = (
        Backend::start("a0"),
        Backend::start("b0"),
        Backend::start("b1"),
    );
    h.put_config(A, &h.domain_config()).await;
    h.put_config(B, &h.domain_config()).await;
    h.put_upstreams(A, &[a0.addr()]).await;
    h.put_upstreams(B, &[b0.addr()]).await;
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(A, &a0, Duration::from_secs(10)).await;
    h.wait_served_by(B, &b0, Duration::from_secs(10)).await;
    let pids0 = h.pids();

    // valid for the control API, refused by nginx: the certificate does not exist on this host
    let mut bad = h.domain_config();
    bad.listen.push(cellplane_slb::Listen {
        port: cellplane_testkit::free_port(),
        tls: true,
        http2: false,
    });
    bad.tls = Some(cellplane_slb::Tls {
        certificate: "/nonexistent/cellplane/cert.pem".into(),
        key: "/nonexistent/cellplane/key.pem".into(),
    });
    h.put_config(A, &bad).await;
    let m = wait_member(&h, Duration::from_secs(10), "error recorded", |m| {
        m.last_error.is_some()
    })
    .await;
    let err = m.last_error.clone().unwrap_or_default();
    assert!(err.contains("cert.pem"), "error names the cause: {err}");
    assert!(m.validation_failures >= 1);
    assert_eq!(h.metric("cellplane_nginx_agent_config_error"), 1.0);
    assert!(h.metric("cellplane_nginx_agent_validation_failures_total") >= 1.0);
    for host in [A, B] {
        for _ in 0..20 {
            assert_eq!(h.get(host).status, 200, "{host} still served");
        }
    }
    assert_eq!(h.pids(), pids0, "no reload for a rejected config");
    // upstream pushes of another domain keep flowing
    h.put_upstreams(B, &[b1.addr()]).await;
    h.wait_served_by(B, &b1, Duration::from_secs(5)).await;

    // a later valid change applies and clears the error
    h.put_config(A, &with_header(h.domain_config(), "fixed"))
        .await;
    wait_header(&h, A, "fixed", Duration::from_secs(10)).await;
    let m = wait_member(&h, Duration::from_secs(5), "error cleared", |m| {
        m.last_error.is_none()
    })
    .await;
    assert!(m.reload_count >= 1);
    h.wait_served_by(B, &b1, Duration::from_secs(5)).await;
    h.stop_agent().await;
}

/// etcd killed and restarted during operation, and (while the agent is cut off from it)
/// changed and compacted past the agent's revision: the agent re-lists and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_etcd_restart_and_compaction() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(200).await;
    let etcd_addr: std::net::SocketAddr = h
        .etcd_server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = CutProxy::start(etcd_addr);
    h.config.etcd.endpoints = vec![format!("http://{}", proxy.addr)];
    let (b0, b1, b2, b3) = (
        Backend::start("b0"),
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    );
    h.put_config(A, &h.domain_config()).await;
    h.put_upstreams(A, &[b0.addr()]).await;
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(A, &b0, Duration::from_secs(10)).await;

    // 1. etcd killed and restarted: changes made after it is back arrive
    tokio::task::block_in_place(|| h.etcd_server.stop());
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| h.etcd_server.restart());
    h.put_upstreams(A, &[b1.addr()]).await;
    h.wait_served_by(A, &b1, Duration::from_secs(20)).await;
    let resyncs0 = h.metric("cellplane_nginx_agent_watch_resyncs_total");

    // 2. the agent cut off; changes and a compaction past its revision; connection restored
    proxy.set_cut(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.put_upstreams(A, &[b2.addr()]).await;
    h.put_config(A, &with_header(h.domain_config(), "after-compaction"))
        .await;
    for i in 0..20 {
        h.put(&format!("noise/{i}"), "x").await;
    }
    let compacted = tokio::task::block_in_place(|| h.etcd_server.compact());
    proxy.set_cut(false);
    h.wait_served_by(A, &b2, Duration::from_secs(20)).await;
    wait_header(&h, A, "after-compaction", Duration::from_secs(20)).await;
    let m = wait_member(
        &h,
        Duration::from_secs(20),
        "applied past the compaction",
        |m| m.revision >= compacted && m.last_error.is_none(),
    )
    .await;
    let resyncs1 = h.metric("cellplane_nginx_agent_watch_resyncs_total");
    assert!(
        resyncs1 > resyncs0,
        "the watch re-listed after compaction ({resyncs0} -> {resyncs1}); {m:?}"
    );

    // and it keeps following changes
    h.put_upstreams(A, &[b3.addr()]).await;
    h.wait_served_by(A, &b3, Duration::from_secs(10)).await;
    h.stop_agent().await;
}

/// The whole SLB path: control-api (HTTP, bearer token) -> etcd -> nginx-agent -> nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_to_nginx_end_to_end() {
    if !require_nginx() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut h = Harness::new(100).await;
    let (b0, b1) = (Backend::start("b0"), Backend::start("b1"));
    let token = "e2e-writer-token-0123456789";
    let api_addr = std::net::SocketAddr::from(([127, 0, 0, 1], cellplane_testkit::free_port()));
    let api_cfg = cellplane_control_api::ApiConfig {
        listen: api_addr,
        etcd: h.config.etcd.clone(),
        tokens: vec![cellplane_control_api::TokenConfig {
            name: "e2e".into(),
            token: token.into(),
            scopes: vec![cellplane_control_api::auth::Scope::SlbWrite],
        }],
        ..Default::default()
    };
    let (stop_api, rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(cellplane_control_api::run(api_cfg, async {
        let _ = rx.await;
    }));
    let call = move |method: &'static str, path: String, body: String| async move {
        let auth = format!("Bearer {token}");
        tokio::task::spawn_blocking(move || {
            cellplane_testkit::nginx::http_request(
                api_addr,
                method,
                "api",
                &path,
                &[("Authorization", &auth)],
                body.as_bytes(),
            )
            .map(|r| (r.status, r.body))
            .unwrap_or((0, String::new()))
        })
        .await
        .unwrap()
    };
    wait_for(Duration::from_secs(10), "control-api up", move || {
        cellplane_testkit::nginx::http_get(api_addr, "api", "/healthz")
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
    .await;
    let domain = format!("/v1/slb/{GROUP}/domains/{A}");
    let cfg = serde_json::to_string(&h.domain_config()).unwrap();
    assert_eq!(call("PUT", domain.clone(), cfg).await.0, 201);
    let up = |b: &Backend| format!(r#"{{"servers":[{{"addr":"{}"}}]}}"#, b.addr());
    assert_eq!(
        call("PUT", format!("{domain}/upstreams"), up(&b0)).await.0,
        200
    );
    h.start_agent().await;
    h.start_nginx();
    h.wait_served_by(A, &b0, Duration::from_secs(10)).await;
    let pids = h.pids();
    assert_eq!(
        call("PUT", format!("{domain}/upstreams"), up(&b1)).await.0,
        200
    );
    h.wait_served_by(A, &b1, Duration::from_secs(5)).await;
    assert_eq!(
        h.pids(),
        pids,
        "upstream change through the API reloaded nginx"
    );
    let start = Instant::now();
    loop {
        let (status, body) = call("GET", format!("/v1/slb/{GROUP}/members"), String::new()).await;
        if status == 200 && body.contains(HOST) && body.contains("nginx/") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "members: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop_agent().await;
    let _ = stop_api.send(());
    api.await.unwrap().unwrap();
}
