//! The CNI contract, exec'ing the built binary as a runtime does, against a real etcd, a
//! private OVS (userspace bridge) and real namespaces.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

const POOL: &str = "vlan100-a";

async fn setup(test: &str) -> Option<(Store, Node)> {
    if !privileged(test) {
        return None;
    }
    let store = Store::start().await;
    store
        .add_pool(POOL, "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    let mut node = Node::new("node-a");
    node.reach(&store.endpoint());
    Some((store, node))
}

#[tokio::test]
async fn add_check_del_del() {
    let Some((store, node)) = setup("add_check_del_del").await else {
        return;
    };
    let pod = pod_ns();
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let add = Call::new(&node, "ADD", &conf)
        .cid("c-acdd")
        .netns(&pod.path().clone())
        .run();
    add.ok();
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.1.0");
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.244.0.") && addr.ends_with("/22"),
        "{r}"
    );
    assert_eq!(r["ips"][0]["gateway"], "10.244.0.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], pod.path());
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    let host = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(host, cellplane_net::host_veth_name("c-acdd", "eth0"));

    // the pod side, seen with ip -j
    let a: Value = serde_json::from_str(&pod.ip_json(&["addr", "show", "eth0"])).unwrap();
    let info = &a[0]["addr_info"][0];
    assert_eq!(
        format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"]),
        addr
    );
    assert_eq!(a[0]["mtu"], 1500);
    assert_eq!(a[0]["address"], r["interfaces"][1]["mac"]);
    let rt: Value = serde_json::from_str(&pod.ip_json(&["route", "show", "default"])).unwrap();
    assert_eq!(rt[0]["gateway"], "10.244.0.1");
    assert_eq!(rt[0]["dev"], "eth0");
    // the OVS side
    assert_eq!(node.ovs.ports(&node.bridge), vec![host.clone()]);
    assert_eq!(node.ovs.vsctl(&["get", "Port", &host, "tag"]), "100");
    let ext = node.ovs.vsctl(&["get", "Port", &host, "external_ids"]);
    for want in [
        "container_id=c-acdd",
        "ifname=eth0",
        "owner=cellplane",
        "pod_name=pod1",
        "pod_namespace=ns1",
        "pod_uid=uid-1",
    ] {
        assert!(ext.contains(want), "{want} missing in {ext}");
    }
    // the allocation
    assert_eq!(
        store.handles().await,
        vec![("c-acdd".to_string(), "eth0".to_string())]
    );

    // CHECK with the previous result
    let chk = Call::new(&node, "CHECK", &with_prev(&conf, &r))
        .cid("c-acdd")
        .netns(&pod.path().clone())
        .run();
    chk.ok();
    assert!(chk.stdout.trim().is_empty());

    // CHECK notices a broken attachment and names it
    pod.ip(&["route", "del", "default"]);
    let bad = Call::new(&node, "CHECK", &with_prev(&conf, &r))
        .cid("c-acdd")
        .netns(&pod.path().clone())
        .run();
    assert_eq!(bad.err_code(), 105);
    assert!(
        bad.json()["msg"]
            .as_str()
            .unwrap()
            .contains("default route"),
        "{}",
        bad.stdout
    );

    // DEL, then DEL again
    let p = pod.path();
    Call::new(&node, "DEL", &with_prev(&conf, &r))
        .cid("c-acdd")
        .netns(&p)
        .run()
        .ok();
    // the port and the allocation are gone when DEL answers; the veth right after
    assert!(node.plugin_ports().is_empty());
    assert!(store.handles().await.is_empty());
    assert_eq!(store.allocations().await, 0);
    // DEL again at once (the veth may still be being deleted), and CHECK after DEL: the
    // attachment is unknown (3)
    Call::new(&node, "DEL", &conf)
        .cid("c-acdd")
        .netns(&p)
        .run()
        .ok();
    let chk = Call::new(&node, "CHECK", &with_prev(&conf, &r))
        .cid("c-acdd")
        .netns(&p)
        .run();
    assert_eq!(chk.err_code(), 3, "{}", chk.stdout);
    let left = node.plugin_links_settled();
    assert!(left.is_empty(), "host veth leaked: {left:?}");
    assert!(pod_links_settled(&pod).is_empty());
    Call::new(&node, "DEL", &conf)
        .cid("c-acdd")
        .netns(&p)
        .run()
        .ok();

    // logs went to the log file, never to stdout
    let log = std::fs::read_to_string(log_path(&node)).unwrap();
    assert!(
        log.contains("ADD done") && log.contains("DEL done"),
        "{log}"
    );
}

#[tokio::test]
async fn del_with_netns_gone_releases() {
    let Some((store, node)) = setup("del_with_netns_gone_releases").await else {
        return;
    };
    let mut pod = pod_ns();
    let p = pod.path();
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.0.0");
    Call::new(&node, "ADD", &conf)
        .cid("c-gone")
        .netns(&p)
        .run()
        .ok();
    pod.delete();
    // veth pair died with the netns; DEL still releases and removes the port
    let d = Call::new(&node, "DEL", &conf).cid("c-gone").netns(&p).run();
    d.ok();
    assert!(store.handles().await.is_empty());
    assert_eq!(store.allocations().await, 0);
    assert!(node.plugin_ports().is_empty());
    assert!(node.plugin_links_settled().is_empty());
    // and without CNI_NETNS at all
    let d = Call::new(&node, "DEL", &conf).cid("c-gone").run();
    d.ok();
}

#[tokio::test]
async fn add_existing_ifname_fails_and_leaves_nothing() {
    let Some((store, node)) = setup("add_existing_ifname_fails_and_leaves_nothing").await else {
        return;
    };
    let pod = pod_ns();
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let o = Call::new(&node, "ADD", &conf)
        .cid("c-exist")
        .netns(&pod.path().clone())
        .run();
    assert_eq!(o.err_code(), 101, "{}", o.stdout);
    assert!(o.json()["msg"]
        .as_str()
        .unwrap()
        .contains("eth0 already exists"));
    assert!(store.handles().await.is_empty());
    assert!(node.plugin_links().is_empty());
    assert!(node.plugin_ports().is_empty());

    // a second ADD of an attachment that is already set up also fails, and keeps the first
    let pod2 = pod_ns();
    Call::new(&node, "ADD", &conf)
        .cid("c-twice")
        .netns(&pod2.path().clone())
        .run()
        .ok();
    let again = Call::new(&node, "ADD", &conf)
        .cid("c-twice")
        .netns(&pod2.path().clone())
        .run();
    assert_eq!(again.err_code(), 101);
    assert_eq!(
        store.handles().await.len(),
        1,
        "the first ADD's allocation stays"
    );
    assert_eq!(node.plugin_ports().len(), 1);
    Call::new(&node, "DEL", &conf)
        .cid("c-twice")
        .netns(&pod2.path().clone())
        .run()
        .ok();
}

#[tokio::test]
async fn versions_answer_in_the_version_asked() {
    let Some((store, node)) = setup("versions_answer_in_the_version_asked").await else {
        return;
    };
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = pod_ns();
        let cid = format!("c-ver{i}");
        let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], v);
        let o = Call::new(&node, "ADD", &conf)
            .cid(&cid)
            .netns(&pod.path().clone())
            .run();
        o.ok();
        let r = o.json();
        assert_eq!(r["cniVersion"], *v);
        let legacy = v.starts_with("0.");
        assert_eq!(r["ips"][0].get("version").is_some(), legacy, "{v}: {r}");
        if legacy {
            assert_eq!(r["ips"][0]["version"], "4");
        }
        assert_eq!(r["ips"][0]["interface"], 1);
        Call::new(&node, "DEL", &conf)
            .cid(&cid)
            .netns(&pod.path().clone())
            .run()
            .ok();
    }
    // VERSION
    for v in ["0.3.1", "1.0.0", "1.1.0"] {
        let o = Call::new(&node, "VERSION", &json!({"cniVersion": v}))
            .ifname("")
            .run();
        o.ok();
        let j = o.json();
        assert_eq!(j["cniVersion"], v);
        assert_eq!(
            j["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
    // in a conflist, after another plugin: our interfaces and ips are appended
    let pod = pod_ns();
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "x0"}], "ips": [], "dns": {"nameservers": ["10.9.0.1"]}});
    let conf = with_prev(
        &node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.0.0"),
        &prev,
    );
    let o = Call::new(&node, "ADD", &conf)
        .cid("c-chain")
        .netns(&pod.path().clone())
        .run();
    o.ok();
    let r = o.json();
    assert_eq!(r["interfaces"][0]["name"], "x0");
    assert_eq!(r["ips"][0]["interface"], 2);
    assert_eq!(r["dns"]["nameservers"][0], "10.9.0.1");
    Call::new(&node, "DEL", &conf)
        .cid("c-chain")
        .netns(&pod.path().clone())
        .run()
        .ok();
    assert!(store.handles().await.is_empty());
}

/// Every error code the spec defines, each from the bad input that causes it.
#[tokio::test]
async fn error_codes_table() {
    let Some((store, mut node)) = setup("error_codes_table").await else {
        return;
    };
    let pod = pod_ns();
    let p = pod.path();
    let good = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let set = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let bad_version = set("cniVersion", json!("0.2.0"));
    let ipam_key = set("ipam", json!({"type": "host-local"}));
    let bad_mtu = set("mtu", json!(10));
    let unknown_pool = set("pools", json!(["no-such-pool"]));
    let old_for_check = set("cniVersion", json!("0.3.1"));
    let old_for_status = set("cniVersion", json!("1.0.0"));
    let cases: Vec<(&str, Call, u64, &str)> = vec![
        (
            "unknown cniVersion",
            Call::new(&node, "ADD", &bad_version).cid("c1").netns(&p),
            1,
            "0.2.0",
        ),
        (
            "CHECK on 0.3.1",
            Call::new(&node, "CHECK", &old_for_check)
                .cid("c1")
                .netns(&p),
            1,
            "CHECK",
        ),
        (
            "STATUS on 1.0.0",
            Call::new(&node, "STATUS", &old_for_status),
            1,
            "STATUS",
        ),
        (
            "ipam section",
            Call::new(&node, "ADD", &ipam_key).cid("c1").netns(&p),
            2,
            "ipam",
        ),
        (
            "unknown CNI_ARGS",
            Call::new(&node, "ADD", &good)
                .cid("c1")
                .netns(&p)
                .args("FOO=bar"),
            2,
            "FOO",
        ),
        (
            "CHECK unknown container",
            Call::new(&node, "CHECK", &with_prev(&good, &json!({"ips": []})))
                .cid("c-none")
                .netns(&p),
            3,
            "c-none",
        ),
        (
            "missing CNI_CONTAINERID",
            Call::new(&node, "ADD", &good).netns(&p),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "missing CNI_NETNS",
            Call::new(&node, "ADD", &good).cid("c1"),
            4,
            "CNI_NETNS",
        ),
        (
            "bad netns path",
            Call::new(&node, "ADD", &good)
                .cid("c1")
                .netns("/run/netns/does-not-exist-cp"),
            4,
            "CNI_NETNS",
        ),
        (
            "not a netns",
            Call::new(&node, "ADD", &good)
                .cid("c1")
                .netns("/etc/hostname"),
            4,
            "not a network namespace",
        ),
        (
            "bad ifname",
            Call::new(&node, "ADD", &good)
                .cid("c1")
                .netns(&p)
                .ifname("a/b"),
            4,
            "CNI_IFNAME",
        ),
        (
            "unknown command",
            Call::new(&node, "FROB", &good),
            4,
            "CNI_COMMAND",
        ),
        (
            "invalid MTU",
            Call::new(&node, "ADD", &bad_mtu).cid("c1").netns(&p),
            7,
            "\"mtu\"",
        ),
        (
            "unknown pool",
            Call::new(&node, "ADD", &unknown_pool).cid("c1").netns(&p),
            7,
            "no-such-pool",
        ),
    ];
    for (name, call, want, word) in cases {
        let o = call.run();
        let j = o.json();
        assert_eq!(o.err_code(), want, "{name}: {}", o.stdout);
        assert!(
            j["msg"].as_str().unwrap().contains(word)
                || j["details"].as_str().unwrap_or("").contains(word),
            "{name}: {}",
            o.stdout
        );
        assert!(j["cniVersion"].is_string(), "{name}");
        assert!(
            o.stderr.is_empty() || !o.stderr.contains("{\"code\""),
            "{name}"
        );
    }
    // 6: malformed JSON
    let mut c = Call::new(&node, "ADD", &good).cid("c1").netns(&p);
    c.stdin = b"{\"cniVersion\": \"1.1.0\", ".to_vec();
    assert_eq!(c.run().err_code(), 6);
    // 5: stdin cannot be read (a directory)
    let (mut cmd, _ns) = Call::new(&node, "ADD", &good).cid("c1").netns(&p).command();
    cmd.stdin(Stdio::from(std::fs::File::open("/").unwrap()));
    let out = cmd.output().unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["code"], 5, "{j}");
    // nothing was allocated by any of it
    assert!(store.handles().await.is_empty());
    assert!(node.plugin_links().is_empty());

    // 50/51 and 0 from STATUS
    Call::new(&node, "STATUS", &good).run().ok();
    store
        .ipam
        .set_pool_state(POOL, cellplane_core::PoolState::Draining)
        .await
        .unwrap();
    let s = Call::new(&node, "STATUS", &good).run();
    assert_eq!(s.err_code(), 51, "{}", s.stdout);
    assert!(s.json()["msg"].as_str().unwrap().contains(POOL));
    store
        .ipam
        .set_pool_state(POOL, cellplane_core::PoolState::Active)
        .await
        .unwrap();
    let mut other_br = good.clone();
    other_br["bridge"] = json!("nobr0");
    let s = Call::new(&node, "STATUS", &other_br).run();
    assert_eq!(s.err_code(), 50);
    assert!(s.json()["msg"].as_str().unwrap().contains("nobr0"));
    node.ovs.stop_ovsdb();
    let s = Call::new(&node, "STATUS", &good).run();
    assert_eq!(s.err_code(), 50);
    assert!(
        s.json()["msg"].as_str().unwrap().contains("OVSDB"),
        "{}",
        s.stdout
    );
    node.ovs.start_ovsdb();
    let mut store = store;
    store.etcd.stop();
    let mut quick = good.clone();
    quick["etcd"]["timeoutMs"] = json!(500);
    let s = Call::new(&node, "STATUS", &quick).run();
    assert_eq!(s.err_code(), 50);
    assert!(
        s.json()["msg"].as_str().unwrap().contains("etcd"),
        "{}",
        s.stdout
    );
}

#[tokio::test]
async fn gc_removes_what_is_not_listed() {
    let Some((store, node)) = setup("gc_removes_what_is_not_listed").await else {
        return;
    };
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let (pa, pb) = (pod_ns(), pod_ns());
    Call::new(&node, "ADD", &conf)
        .cid("c-keep")
        .netns(&pa.path().clone())
        .run()
        .ok();
    Call::new(&node, "ADD", &conf)
        .cid("c-stale")
        .netns(&pb.path().clone())
        .run()
        .ok();
    // a DEL whose detached veth deletion never ran: port and allocation gone, veth marked
    let pc = pod_ns();
    Call::new(&node, "ADD", &conf)
        .cid("c-dead")
        .netns(&pc.path().clone())
        .run()
        .ok();
    let dead = cellplane_net::host_veth_name("c-dead", "eth0");
    node.ovs.vsctl(&["del-port", &node.bridge, &dead]);
    store.ipam.release("c-dead", "eth0").await.unwrap();
    node.ns.ip(&[
        "link",
        "set",
        &dead,
        "alias",
        "cellplane DEL pending c-dead eth0",
    ]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    Call::new(&node, "GC", &gc).run().ok();
    assert_eq!(
        pc.links(),
        vec!["lo".to_string()],
        "the marked veth is gone"
    );
    assert_eq!(
        store.handles().await,
        vec![("c-keep".to_string(), "eth0".to_string())]
    );
    assert_eq!(
        node.plugin_ports(),
        vec![cellplane_net::host_veth_name("c-keep", "eth0")]
    );
    assert_eq!(
        node.plugin_links(),
        vec![cellplane_net::host_veth_name("c-keep", "eth0")]
    );
    assert_eq!(pb.links(), vec!["lo".to_string()]);
    Call::new(&node, "DEL", &conf)
        .cid("c-keep")
        .netns(&pa.path().clone())
        .run()
        .ok();
}

/// DEL leaves the veth's deletion to a detached child: an ADD right after it in the same
/// netns (same container id, or another one) still succeeds, and nothing is left behind.
#[tokio::test]
async fn add_right_after_del_in_the_same_netns() {
    let Some((store, node)) = setup("add_right_after_del_in_the_same_netns").await else {
        return;
    };
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let pod = pod_ns();
    let p = pod.path();
    for i in 0..12 {
        let cid = if i % 3 == 2 {
            format!("c-again{i}")
        } else {
            "c-again".to_string()
        };
        let a = Call::new(&node, "ADD", &conf).cid(&cid).netns(&p).run();
        assert_eq!(a.code, 0, "ADD {i} ({cid}): {}", a.stdout);
        Call::new(&node, "DEL", &conf)
            .cid(&cid)
            .netns(&p)
            .run()
            .ok();
    }
    let log = std::fs::read_to_string(log_path(&node)).unwrap();
    eprintln!(
        "ADDs that found the previous veth still pending deletion: {}",
        log.matches("left pending").count()
    );
    assert!(store.handles().await.is_empty());
    assert!(node.plugin_ports().is_empty());
    assert!(node.plugin_links_settled().is_empty());
    assert!(pod_links_settled(&pod).is_empty());
}

/// What ADD needs before it deletes an existing CNI_IFNAME, set up by hand (DEL's first
/// steps and its marker, without the deletion): the marker naming the attachment whose
/// derived name the host end has, and no allocation. Otherwise 101 and nothing is touched.
#[tokio::test]
async fn add_deletes_a_pending_veth_only_when_provably_released() {
    let Some((store, node)) = setup("add_deletes_a_pending_veth_only_when_provably_released").await
    else {
        return;
    };
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    let pod = pod_ns();
    let p = pod.path();
    let add = |cid: &str| Call::new(&node, "ADD", &conf).cid(cid).netns(&p).run();
    add("c-pend").ok();
    let host = cellplane_net::host_veth_name("c-pend", "eth0");
    let marker = "cellplane DEL pending c-pend eth0";
    node.ovs.vsctl(&["del-port", &node.bridge, &host]);

    // the marker, but the allocation is still there
    node.ns.ip(&["link", "set", &host, "alias", marker]);
    assert_eq!(add("c-pend").err_code(), 101);
    assert_eq!(add("c-other").err_code(), 101);
    assert_eq!(node.plugin_links(), vec![host.clone()]);

    store.ipam.release("c-pend", "eth0").await.unwrap();
    // released, but the marker names another attachment than the host end's name says
    node.ns.ip(&[
        "link",
        "set",
        &host,
        "alias",
        "cellplane DEL pending c-else eth0",
    ]);
    assert_eq!(add("c-pend").err_code(), 101);
    // released, some other alias
    node.ns.ip(&["link", "set", &host, "alias", "not ours"]);
    assert_eq!(add("c-pend").err_code(), 101);
    assert_eq!(node.plugin_links(), vec![host.clone()]);
    assert!(store.handles().await.is_empty(), "nothing was allocated");

    // released and marked: ADD deletes it and proceeds (here: for another container id)
    node.ns.ip(&["link", "set", &host, "alias", marker]);
    let o = add("c-next");
    o.ok();
    let next = cellplane_net::host_veth_name("c-next", "eth0");
    assert_eq!(node.plugin_links(), vec![next]);
    assert_eq!(node.plugin_ports().len(), 1);
    let log = std::fs::read_to_string(log_path(&node)).unwrap();
    assert!(log.contains("left pending"), "{log}");
    Call::new(&node, "DEL", &conf)
        .cid("c-next")
        .netns(&p)
        .run()
        .ok();
    assert!(store.handles().await.is_empty());
    assert!(node.plugin_links_settled().is_empty());
    assert!(pod_links_settled(&pod).is_empty());
}
