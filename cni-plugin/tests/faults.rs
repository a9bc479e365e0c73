//! Faults and load: OVSDB down or frozen during ADD, etcd stopped, 64 concurrent ADDs, and
//! the plugin SIGKILLed at random points of ADDs.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use serde_json::json;

const POOL: &str = "vlan100-a";

async fn setup(test: &str) -> Option<(Store, Node)> {
    if !privileged(test) {
        return None;
    }
    let store = Store::start().await;
    store
        .add_pool(POOL, "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    let mut node = Node::new("node-f");
    node.reach(&store.endpoint());
    Some((store, node))
}

/// Nothing of any attachment is left: no allocation, handle, port, host veth, pod link.
async fn assert_clean(store: &Store, node: &Node, pods: &[&cellplane_testkit::netns::TestNetns]) {
    assert!(
        store.handles().await.is_empty(),
        "handles left: {:?}",
        store.handles().await
    );
    assert_eq!(store.allocations().await, 0, "allocations left");
    assert!(
        node.plugin_ports().is_empty(),
        "ports left: {:?}",
        node.plugin_ports()
    );
    // DEL deletes veths after it answers: wait (bounded) for that, then nothing may be left
    let left = node.plugin_links_settled();
    assert!(left.is_empty(), "host veths left: {left:?}");
    for p in pods {
        assert_eq!(pod_links_settled(p), Vec::<String>::new(), "pod links left");
    }
}

#[tokio::test]
async fn ovsdb_down_or_frozen_during_add_leaves_nothing() {
    let Some((store, mut node)) = setup("ovsdb_down_or_frozen_during_add_leaves_nothing").await
    else {
        return;
    };
    let pod = pod_ns();
    let mut conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    conf["ovsdbTimeoutMs"] = json!(500);

    // ovsdb-server gone: the allocation and the veth are made first, then undone
    node.ovs.stop_ovsdb();
    let o = Call::new(&node, "ADD", &conf)
        .cid("c-ovs1")
        .netns(&pod.path().clone())
        .run();
    assert_eq!(o.err_code(), 11, "{}", o.stdout);
    assert!(o.json()["msg"].as_str().unwrap().contains("OVSDB"));
    node.ovs.start_ovsdb();
    assert_clean(&store, &node, &[&pod]).await;

    // ovsdb-server frozen (accepts, never answers): the OVSDB deadline fires; the veth and
    // the allocation are undone at once. The port transaction already sent may still commit
    // when the server wakes up (nobody can take it back while it sleeps): the ADD says so in
    // its details, and the DEL a runtime issues after a failed ADD removes it.
    let pid = nix::unistd::Pid::from_raw(node.ovs.ovsdb_pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let o = Call::new(&node, "ADD", &conf)
        .cid("c-ovs2")
        .netns(&pod.path().clone())
        .run();
    assert_eq!(o.err_code(), 11, "{}", o.stdout);
    assert!(
        o.json()["msg"].as_str().unwrap().contains("timed out"),
        "{}",
        o.stdout
    );
    assert!(
        o.json()["details"]
            .as_str()
            .unwrap()
            .contains("removing port"),
        "{}",
        o.stdout
    );
    assert!(
        store.handles().await.is_empty(),
        "the allocation is released"
    );
    assert!(node.plugin_links().is_empty(), "the veth is gone");
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    Call::new(&node, "DEL", &conf)
        .cid("c-ovs2")
        .netns(&pod.path().clone())
        .run()
        .ok();
    assert_clean(&store, &node, &[&pod]).await;

    // and with OVS back, the same attachment works
    Call::new(&node, "ADD", &conf)
        .cid("c-ovs2")
        .netns(&pod.path().clone())
        .run()
        .ok();
    Call::new(&node, "DEL", &conf)
        .cid("c-ovs2")
        .netns(&pod.path().clone())
        .run()
        .ok();
    assert_clean(&store, &node, &[&pod]).await;
}

#[tokio::test]
async fn etcd_stopped_gives_try_again_within_the_timeout() {
    let Some((mut store, node)) = setup("etcd_stopped_gives_try_again_within_the_timeout").await
    else {
        return;
    };
    let pod = pod_ns();
    let mut conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    conf["etcd"]["timeoutMs"] = json!(1000);
    // one attachment made while etcd is up, to DEL while it is down
    Call::new(&node, "ADD", &conf)
        .cid("c-e0")
        .netns(&pod.path().clone())
        .run()
        .ok();

    store.etcd.stop();
    let pod2 = pod_ns();
    let o = Call::new(&node, "ADD", &conf)
        .cid("c-e1")
        .netns(&pod2.path().clone())
        .run();
    assert_eq!(o.err_code(), 11, "{}", o.stdout);
    assert!(
        o.elapsed < Duration::from_millis(2500),
        "took {:?}",
        o.elapsed
    );
    assert!(
        o.json()["msg"].as_str().unwrap().contains("etcd"),
        "{}",
        o.stdout
    );
    assert_eq!(pod2.links(), vec!["lo".to_string()]);
    assert_eq!(node.plugin_links().len(), 1, "only c-e0's veth");

    // DEL while etcd is down: the veth and port go, the release waits for a retry (11)
    let d = Call::new(&node, "DEL", &conf)
        .cid("c-e0")
        .netns(&pod.path().clone())
        .run();
    assert_eq!(d.err_code(), 11, "{}", d.stdout);
    assert!(node.plugin_links().is_empty());
    assert!(node.plugin_ports().is_empty());

    store.etcd.restart();
    // the runtime retries DEL: now the address is released
    Call::new(&node, "DEL", &conf)
        .cid("c-e0")
        .netns(&pod.path().clone())
        .run()
        .ok();
    assert_clean(&store, &node, &[&pod, &pod2]).await;
}

#[tokio::test]
async fn concurrent_64_adds_then_64_dels() {
    let Some((store, node)) = setup("concurrent_64_adds_then_64_dels").await else {
        return;
    };
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let pods: Vec<_> = (0..64).map(|_| pod_ns()).collect();
    let ids: Vec<String> = (0..64).map(|i| format!("c-par{i}")).collect();
    let paths: Vec<String> = pods.iter().map(|p| p.path()).collect();

    let t = Instant::now();
    let children: Vec<_> = (0..64)
        .map(|i| {
            Call::new(&node, "ADD", &conf)
                .cid(&ids[i])
                .netns(&paths[i])
                .spawn()
        })
        .collect();
    let mut ips = BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ADD failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ips.insert(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    eprintln!("64 concurrent ADDs took {:?}", t.elapsed());
    assert_eq!(ips.len(), 64, "addresses must be distinct");
    assert_eq!(store.handles().await.len(), 64);
    assert_eq!(node.plugin_ports().len(), 64);
    for (i, p) in pods.iter().enumerate().step_by(16) {
        let a = p.ip_json(&["addr", "show", "eth0"]);
        assert!(a.contains("10.244."), "pod {i}: {a}");
    }

    let children: Vec<_> = (0..64)
        .map(|i| {
            Call::new(&node, "DEL", &conf)
                .cid(&ids[i])
                .netns(&paths[i])
                .spawn()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "DEL failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let refs: Vec<_> = pods.iter().collect();
    assert_clean(&store, &node, &refs).await;
}

#[tokio::test]
async fn sigkill_at_random_points_then_del_leaves_nothing() {
    let Some((store, node)) = setup("sigkill_at_random_points_then_del_leaves_nothing").await
    else {
        return;
    };
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let pod = pod_ns();
    let path = pod.path();
    // how long an ADD takes here, to spread the kills over it (the median of 5: the first
    // claims a block, and the machine is shared)
    let mut probes: Vec<u64> = (0..5)
        .map(|_| {
            let probe = Call::new(&node, "ADD", &conf)
                .cid("c-probe")
                .netns(&path)
                .run();
            probe.ok();
            Call::new(&node, "DEL", &conf)
                .cid("c-probe")
                .netns(&path)
                .run()
                .ok();
            probe.elapsed.as_micros() as u64
        })
        .collect();
    probes.sort_unstable();
    let span = probes[2] * 8 / 10;
    let n: usize = std::env::var("CELLPLANE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut rng = rand::rng();
    let (mut killed, mut finished) = (0, 0);
    for i in 0..n {
        let cid = format!("c-kill{i}");
        let mut child = Call::new(&node, "ADD", &conf)
            .cid(&cid)
            .netns(&path)
            .spawn();
        std::thread::sleep(Duration::from_micros(rng.random_range(0..span)));
        match child.try_wait().unwrap() {
            Some(st) => {
                // an ADD that ran to its end succeeded, even while the previous round's veth
                // (same netns, same ifname) may still be pending deletion after its DEL
                let mut out = String::new();
                std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
                assert!(st.success(), "ADD {i} failed: {out}");
                finished += 1;
            }
            None => {
                child.kill().unwrap();
                killed += 1;
            }
        }
        let _ = child.wait();
        let d = Call::new(&node, "DEL", &conf).cid(&cid).netns(&path).run();
        assert_eq!(d.code, 0, "DEL after kill {i}: {}", d.stdout);
    }
    eprintln!("{n} ADDs: {killed} killed, {finished} finished before the kill (span {span} us)");
    assert!(killed > n / 4, "too few kills landed ({killed}/{n})");
    assert_clean(&store, &node, &[&pod]).await;
}
