//! Privileged tests over real namespaces and a real (private) Open vSwitch. Every name is
//! unique; every namespace is deleted on drop. `CELLPLANE_REQUIRE_PRIV=1` turns a skip into
//! a failure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use cellplane_net::netlink_route::delete_link_detached;
use cellplane_net::netlink_route::random_mac;
use cellplane_net::{
    arp, ethtool, NetError, Netlink, Netns, Ovsdb, OvsdbError, PodLinkSetup, PortSpec, VethOptions,
};
use cellplane_testkit::netns::{require_priv, unique_name, TestNetns};
use cellplane_testkit::ovs::{Ovs, OVS_BINARIES};

fn rx_packets(ns: &TestNetns, link: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ns.ip_json(&["-s", "link", "show", link])).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

async fn wait_rx(ns: &TestNetns, link: &str, before: u64) -> bool {
    for _ in 0..100 {
        if rx_packets(ns, link) > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn veth_addr_route_garp_in_namespaces() {
    if !require_priv("veth_addr_route_garp_in_namespaces", &["ip"]) {
        return;
    }
    let node = TestNetns::new("cpt-node");
    let pod = TestNetns::new("cpt-pod");
    let node_ns = Netns::open(node.path()).unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();

    // sockets opened inside each namespace on a dedicated thread
    let host_nl = Netlink::from_fd(node_ns.open_sockets(false).unwrap().route, &node_ns).unwrap();
    let socks = pod_ns.open_sockets(true).unwrap();
    let pod_nl = Netlink::from_fd(socks.route, &pod_ns).unwrap();

    let host = unique_name("cpv");
    let (hmac, pmac) = (random_mac(), random_mac());
    host_nl
        .create_veth(&VethOptions {
            host_name: &host,
            host_mac: hmac,
            peer_name: "eth0",
            peer_mac: pmac,
            peer_netns: &pod_ns,
            mtu: 1400,
        })
        .await
        .unwrap();
    // the peer exists directly in the pod netns under its final name, up, with MAC and MTU
    let eth0 = pod_nl
        .link("eth0")
        .await
        .unwrap()
        .expect("eth0 in pod netns");
    assert_eq!(eth0.mac, Some(pmac));
    assert_eq!(eth0.mtu, Some(1400));
    assert!(!eth0.up, "the peer starts down");

    // arp_notify: the kernel announces the address when the link comes up (IPv6 off in the
    // pod so that nothing else is sent)
    let v6 = pod.exec(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
    ]);
    assert!(v6.status.success());
    pod_ns.enable_arp_notify("eth0").unwrap();
    let shown = pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), "1");
    let ip = Ipv4Addr::new(10, 244, 0, 5);
    pod_nl.add_addr(eth0.index, ip, 22).await.unwrap();
    let before = rx_packets(&node, &host);
    pod_nl.set_up(eth0.index).await.unwrap();
    assert!(pod_nl.link("eth0").await.unwrap().unwrap().up);
    assert!(
        wait_rx(&node, &host, before).await,
        "no gratuitous ARP on link up"
    );
    let h = host_nl.link(&host).await.unwrap().expect("host end");
    assert_eq!(h.mac, Some(hmac));

    // default route
    pod_nl
        .add_default_route(eth0.index, Ipv4Addr::new(10, 244, 0, 1))
        .await
        .unwrap();
    assert_eq!(pod_nl.addrs(eth0.index).await.unwrap(), vec![(ip, 22)]);
    let routes = pod_nl.default_routes().await.unwrap();
    assert_eq!(
        routes,
        vec![(Some(Ipv4Addr::new(10, 244, 0, 1)), Some(eth0.index))]
    );
    let shown = pod.ip_json(&["route", "show", "default"]);
    assert!(
        shown.contains("10.244.0.1") && shown.contains("eth0"),
        "{shown}"
    );

    // our own gratuitous ARP over an AF_PACKET socket opened in the pod netns
    let before = rx_packets(&node, &host);
    arp::send_garp(
        std::os::fd::AsFd::as_fd(socks.packet.as_ref().unwrap()),
        eth0.index,
        &pmac,
        ip,
    )
    .unwrap();
    assert!(
        wait_rx(&node, &host, before).await,
        "GARP did not reach the host end"
    );

    // an existing name is an error, and creates nothing
    let other = unique_name("cpv");
    let e = host_nl
        .create_veth(&VethOptions {
            host_name: &other,
            host_mac: random_mac(),
            peer_name: "eth0",
            peer_mac: random_mac(),
            peer_netns: &pod_ns,
            mtu: 1500,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Exists { .. }), "{e}");
    assert!(host_nl.link(&other).await.unwrap().is_none());

    // delete is idempotent; deleting the host end removes the peer too
    assert!(host_nl.del_link(&host).await.unwrap());
    assert!(!host_nl.del_link(&host).await.unwrap());
    assert!(pod_nl.link("eth0").await.unwrap().is_none());
}

/// `ethtool -k IF` in `ns`: the value of `feature` ("on" / "off", without "[fixed]" etc.).
fn ethtool_feature(ns: &TestNetns, ifname: &str, feature: &str) -> String {
    let out = ns.exec(&["ethtool", "-k", ifname]);
    assert!(out.status.success(), "ethtool -k {ifname}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{feature}: ")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("{feature} not in {text}"))
}

#[tokio::test]
async fn tx_checksum_off_alias_peer_and_detached_delete() {
    if !require_priv(
        "tx_checksum_off_alias_peer_and_detached_delete",
        &["ip", "ethtool"],
    ) {
        return;
    }
    let node = TestNetns::new("cpt-node");
    let pod = TestNetns::new("cpt-pod");
    let node_ns = Netns::open(node.path()).unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();
    let host_nl = Netlink::from_fd(node_ns.open_sockets(false).unwrap().route, &node_ns).unwrap();
    let pod_nl = Netlink::from_fd(pod_ns.open_sockets(false).unwrap().route, &pod_ns).unwrap();
    let host = unique_name("cpv");
    host_nl
        .create_veth(&VethOptions {
            host_name: &host,
            host_mac: random_mac(),
            peer_name: "eth0",
            peer_mac: random_mac(),
            peer_netns: &pod_ns,
            mtu: 1500,
        })
        .await
        .unwrap();

    // TX checksum offload: on as the kernel makes it; off on the pod end through the
    // namespace thread, on the host end through a socket of the node namespace; `ethtool -k`
    // then shows what `ethtool -K IF tx off` shows (segmentation offloads dropped with it)
    assert_eq!(ethtool_feature(&pod, "eth0", "tx-checksumming"), "on");
    pod_ns
        .setup_pod_link(
            "eth0",
            PodLinkSetup {
                arp_notify: false,
                tx_checksum_off: true,
            },
        )
        .unwrap();
    node_ns
        .run(|| ethtool::set_tx_checksum(&host, false))
        .unwrap()
        .unwrap();
    for (ns, ifname) in [(&pod, "eth0"), (&node, host.as_str())] {
        assert_eq!(ethtool_feature(ns, ifname, "tx-checksumming"), "off");
        assert_eq!(ethtool_feature(ns, ifname, "tx-checksum-ip-generic"), "off");
        assert_eq!(ethtool_feature(ns, ifname, "tx-tcp-segmentation"), "off");
    }
    assert!(!node_ns
        .run(|| ethtool::tx_checksum(&host))
        .unwrap()
        .unwrap());
    let e = pod_ns
        .setup_pod_link(
            "nosuch0",
            PodLinkSetup {
                arp_notify: false,
                tx_checksum_off: true,
            },
        )
        .unwrap_err();
    assert!(matches!(e, NetError::Ethtool { .. }), "{e}");

    // alias and peer indexes, read back by name and by index
    let h = host_nl.link(&host).await.unwrap().unwrap();
    let p = pod_nl.link("eth0").await.unwrap().unwrap();
    assert_eq!(h.alias, None);
    assert_eq!(h.peer_index, Some(p.index));
    assert_eq!(p.peer_index, Some(h.index));
    // the host end's peer namespace is the pod's, by the node namespace's ids
    assert!(h.peer_netnsid.is_some());
    assert_eq!(h.peer_netnsid, host_nl.nsid_of(&pod_ns).await.unwrap());
    let other = TestNetns::new("cpt-other");
    let other_id = host_nl
        .nsid_of(&Netns::open(other.path()).unwrap())
        .await
        .unwrap();
    assert_ne!(other_id, h.peer_netnsid);
    host_nl
        .set_alias(h.index, "cellplane test alias")
        .await
        .unwrap();
    let h2 = host_nl.link_by_index(h.index).await.unwrap().unwrap();
    assert_eq!(h2.name, host);
    assert_eq!(h2.alias.as_deref(), Some("cellplane test alias"));

    // detached delete, forked from a thread inside the node namespace: the veth (both ends)
    // goes away without the caller waiting; the child is our child here, so reap it
    let pid = node_ns
        .run(|| delete_link_detached(h.index))
        .unwrap()
        .unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    assert!(host_nl.link(&host).await.unwrap().is_none());
    assert!(pod_nl.link("eth0").await.unwrap().is_none());
    assert!(
        !host_nl.del_link_index(h.index).await.unwrap(),
        "already gone"
    );
}

#[test]
fn netns_open_rejects_non_namespace_and_restores_thread() {
    if !require_priv(
        "netns_open_rejects_non_namespace_and_restores_thread",
        &["ip"],
    ) {
        return;
    }
    let f = tempfile_path();
    assert!(matches!(Netns::open(&f), Err(NetError::NotNetns { .. })));
    assert!(matches!(
        Netns::open("/nonexistent/ns"),
        Err(NetError::NetnsOpen { .. })
    ));
    let _ = std::fs::remove_file(&f);

    let ns = TestNetns::new("cpt-g");
    let nns = Netns::open(ns.path()).unwrap();
    let me = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = nns
        .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_ne!(me, inside, "the closure ran inside the namespace");
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        me,
        "caller never moved"
    );
}

fn tempfile_path() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(unique_name("cpt-notns"));
    std::fs::write(&p, b"x").unwrap();
    p
}

#[tokio::test]
async fn ovsdb_port_in_one_transaction() {
    if !require_priv("ovsdb_port_in_one_transaction", OVS_BINARIES) {
        return;
    }
    let node = TestNetns::new("cpt-ovs");
    let ovs = Ovs::start(&node);
    let br = unique_name("cpb");
    ovs.add_bridge(&br);
    // a link for the port, inside the node namespace
    let port = unique_name("cpp");
    node.ip(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        &unique_name("cpq"),
    ]);

    let mut db = Ovsdb::connect(&ovs.db_url(), Duration::from_secs(2))
        .await
        .unwrap();
    db.ping().await.unwrap();
    assert!(db.bridge_exists(&br).await.unwrap());
    assert!(!db.bridge_exists("nope").await.unwrap());

    let mut ids = BTreeMap::new();
    ids.insert("cellplane-container-id".to_string(), "c1".to_string());
    ids.insert("cellplane-ifname".to_string(), "eth0".to_string());
    ids.insert("owner".to_string(), "cellplane".to_string());
    let added = db
        .add_port(&PortSpec {
            bridge: &br,
            name: &port,
            tag: Some(100),
            external_ids: &ids,
        })
        .await
        .unwrap();
    // the same transaction read the bridge's datapath (the testkit makes userspace bridges)
    assert_eq!(added.datapath_type, "netdev");
    assert!(added.userspace_datapath());

    // seen by ovs-vsctl
    assert_eq!(ovs.ports(&br), vec![port.clone()]);
    assert_eq!(ovs.vsctl(&["get", "Port", &port, "tag"]), "100");
    assert!(ovs
        .vsctl(&["get", "Port", &port, "external_ids"])
        .contains("cellplane-container-id=c1"));

    // read back
    let p = db.port(&port).await.unwrap().unwrap();
    assert_eq!(p.tag, Some(100));
    assert_eq!(p.bridge.as_deref(), Some(br.as_str()));
    assert_eq!(p.external_ids, ids);
    let mut by = BTreeMap::new();
    by.insert("cellplane-container-id".to_string(), "c1".to_string());
    assert_eq!(db.find_ports(&by).await.unwrap().len(), 1);

    // a missing bridge writes nothing
    let e = db
        .add_port(&PortSpec {
            bridge: "nobr",
            name: "zz",
            tag: Some(5),
            external_ids: &ids,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, OvsdbError::BridgeNotFound { .. }), "{e}");
    assert!(db.port("zz").await.unwrap().is_none());

    // delete by external_ids, idempotent; the Port and Interface rows are collected
    assert_eq!(db.del_ports_by_ids(&by).await.unwrap(), 1);
    assert_eq!(db.del_ports_by_ids(&by).await.unwrap(), 0);
    assert!(ovs.ports(&br).is_empty());
    assert!(db.port(&port).await.unwrap().is_none());
    assert!(!ovs
        .vsctl(&["--no-wait", "list", "Interface"])
        .contains(&port));
}

#[tokio::test]
async fn ovsdb_unreachable_is_unavailable() {
    if !require_priv("ovsdb_unreachable_is_unavailable", OVS_BINARIES) {
        return;
    }
    let node = TestNetns::new("cpt-ovd");
    let mut ovs = Ovs::start(&node);
    let url = ovs.db_url();
    let mut db = Ovsdb::connect(&url, Duration::from_millis(500))
        .await
        .unwrap();
    ovs.stop_ovsdb();
    let e = db.ping().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = Ovsdb::connect(&url, Duration::from_millis(500))
        .await
        .err()
        .unwrap();
    assert!(e.is_unavailable(), "{e}");
}
