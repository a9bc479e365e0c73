//! TX checksum offload on OVS's userspace datapath: with the default
//! `txChecksumOffload: "auto"`, ADD turns it off on both veth ends of a pod on a `netdev`
//! bridge (no `ethtool` exec), and TCP between two pods works; with `"on"` (left as the
//! kernel made it) TCP does not, which is why.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cellplane_net::Netns;
use cellplane_testkit::netns::{require_priv, TestNetns};
use common::*;
use serde_json::{json, Value};

const POOL: &str = "vlan100-a";

/// `ethtool -k IF` inside `ns`: the value of `feature` ("on" / "off").
fn ethtool_feature(ns: &TestNetns, ifname: &str, feature: &str) -> String {
    let out = ns.exec(&["ethtool", "-k", ifname]);
    assert!(out.status.success(), "ethtool -k {ifname}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{feature}: ")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("{feature} not in {text}"))
}

fn pod_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// One TCP exchange: a listener inside `server`'s namespace, a client inside `client`'s
/// (sockets opened on threads that entered the namespaces). The server echoes what it gets
/// in upper case. `Err` says how it failed.
fn tcp_exchange(client: &TestNetns, server: &TestNetns, server_ip: &str) -> Result<(), String> {
    let listener = Netns::open(server.path())
        .unwrap()
        .run(|| TcpListener::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let srv = std::thread::spawn(move || -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(4);
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > until {
                        return Err("server: no connection".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("server accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got)
            .map_err(|e| format!("server read: {e}"))?;
        s.write_all(got.to_uppercase().as_bytes())
            .map_err(|e| format!("server write: {e}"))
    });
    let addr: SocketAddr = format!("{server_ip}:{port}").parse().unwrap();
    let msg = "hello over tcp ".repeat(200); // > one segment
    let reply = Netns::open(client.path())
        .unwrap()
        .run(|| -> Result<String, String> {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            c.write_all(msg.as_bytes())
                .map_err(|e| format!("client write: {e}"))?;
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let mut r = String::new();
            c.read_to_string(&mut r)
                .map_err(|e| format!("client read: {e}"))?;
            Ok(r)
        })
        .unwrap();
    let served = srv.join().unwrap();
    let reply = reply?;
    served?;
    if reply == msg.to_uppercase() {
        Ok(())
    } else {
        Err(format!("wrong reply ({} bytes)", reply.len()))
    }
}

#[tokio::test]
async fn tcp_between_pods_on_a_userspace_bridge() {
    if !privileged("tcp_between_pods_on_a_userspace_bridge")
        || !require_priv("tcp_between_pods_on_a_userspace_bridge", &["ethtool"])
    {
        return;
    }
    let store = Store::start().await;
    store
        .add_pool(POOL, "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    let mut node = Node::new("node-o");
    node.reach(&store.endpoint());
    assert_eq!(
        node.ovs
            .vsctl(&["get", "Bridge", &node.bridge, "datapath_type"]),
        "netdev"
    );

    // the default ("auto") on a netdev bridge: offload off on both ends, TCP works
    let conf = node.conf(&store.endpoint(), &store.prefix, &[POOL], "1.1.0");
    assert!(conf.get("txChecksumOffload").is_none(), "the default");
    // with nothing on PATH: the plugin execs no ethtool (nor anything else)
    let empty = tempfile::tempdir().unwrap();
    let no_path = empty.path().to_str().unwrap();
    let (pa, pb) = (pod_ns(), pod_ns());
    let (path_a, path_b) = (pa.path(), pb.path());
    let mut a = Call::new(&node, "ADD", &conf).cid("c-tcp-a").netns(&path_a);
    a.path = no_path;
    let ra = a.run();
    let mut b = Call::new(&node, "ADD", &conf).cid("c-tcp-b").netns(&path_b);
    b.path = no_path;
    let rb = b.run();
    let (ra, rb) = (ra.ok().json(), rb.ok().json());
    for (pod, r) in [(&pa, &ra), (&pb, &rb)] {
        let host = r["interfaces"][0]["name"].as_str().unwrap();
        for (ns, ifname) in [(&node.ns, host), (pod, "eth0")] {
            assert_eq!(
                ethtool_feature(ns, ifname, "tx-checksumming"),
                "off",
                "{ifname}"
            );
            assert_eq!(
                ethtool_feature(ns, ifname, "tx-tcp-segmentation"),
                "off",
                "{ifname}"
            );
        }
    }
    assert!(pa.ping(&pod_ip(&rb), 5), "ICMP between the pods");
    tcp_exchange(&pa, &pb, &pod_ip(&rb)).expect("TCP from pod A to pod B");
    tcp_exchange(&pb, &pa, &pod_ip(&ra)).expect("TCP from pod B to pod A");

    // the control: "on" leaves offload on; then ICMP works and TCP does not
    let mut on = conf.clone();
    on["txChecksumOffload"] = json!("on");
    let (pc, pd) = (pod_ns(), pod_ns());
    let rc = Call::new(&node, "ADD", &on)
        .cid("c-tcp-c")
        .netns(&pc.path())
        .run();
    let rd = Call::new(&node, "ADD", &on)
        .cid("c-tcp-d")
        .netns(&pd.path())
        .run();
    let (rc, rd) = (rc.ok().json(), rd.ok().json());
    assert_eq!(ethtool_feature(&pc, "eth0", "tx-checksumming"), "on");
    assert_eq!(
        ethtool_feature(
            &node.ns,
            rc["interfaces"][0]["name"].as_str().unwrap(),
            "tx-checksumming"
        ),
        "on"
    );
    assert!(pc.ping(&pod_ip(&rd), 5), "ICMP works with offload on");
    assert!(
        tcp_exchange(&pc, &pd, &pod_ip(&rd)).is_err(),
        "TCP worked with offload on: the control no longer shows the problem"
    );

    // and a bad value is refused, naming the key
    let mut bad = conf.clone();
    bad["txChecksumOffload"] = json!("sometimes");
    let pe = pod_ns();
    let o = Call::new(&node, "ADD", &bad)
        .cid("c-tcp-e")
        .netns(&pe.path())
        .run();
    assert_eq!(o.err_code(), 7);
    assert!(o.json()["msg"]
        .as_str()
        .unwrap()
        .contains("\"txChecksumOffload\""));

    for (c, id, p) in [
        (&conf, "c-tcp-a", &pa),
        (&conf, "c-tcp-b", &pb),
        (&on, "c-tcp-c", &pc),
        (&on, "c-tcp-d", &pd),
    ] {
        Call::new(&node, "DEL", c)
            .cid(id)
            .netns(&p.path())
            .run()
            .ok();
    }
    assert!(store.handles().await.is_empty());
    assert!(node.plugin_ports().is_empty());
    assert!(node.plugin_links_settled().is_empty());
}
