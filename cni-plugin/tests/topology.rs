//! Two simulated nodes (each its own namespace, OVS and userspace bridge) joined by a trunk;
//! a router namespace holding each pool's gateway on its own access port. Pods are made by
//! the plugin binary.

mod common;

use cellplane_testkit::netns::{unique_name, veth_pair, TestNetns};
use common::*;
use serde_json::Value;

fn pod_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn two_nodes_trunk_vlans_and_router() {
    if !privileged("two_nodes_trunk_vlans_and_router") {
        return;
    }
    let store = Store::start().await;
    store
        .add_pool("vlan100-a", "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    store
        .add_pool("vlan200-a", "10.245.0.0/22", 200, "10.245.0.1")
        .await;
    let mut n1 = Node::new("node-1");
    let mut n2 = Node::new("node-2");
    n1.reach(&store.endpoint());
    n2.reach(&store.endpoint());

    // trunk between the bridges (plain ports carry every VLAN tagged)
    let (t1, t2) = (unique_name("cpt1"), unique_name("cpt2"));
    veth_pair(&t1, &n1.ns, &t2, &n2.ns);
    n1.ovs.add_trunk_port(&n1.bridge, &t1);
    n2.ovs.add_trunk_port(&n2.bridge, &t2);

    // the router: one veth per VLAN, each host end an access port on node-1's bridge
    let router = TestNetns::new("cpt-r");
    for (vlan, gw) in [(100u16, "10.244.0.1/22"), (200, "10.245.0.1/22")] {
        let (r, p) = (format!("r{vlan}"), unique_name("cprp"));
        veth_pair(&r, &router, &p, &n1.ns);
        n1.ovs.add_access_port(&n1.bridge, &p, vlan);
        router.ip(&["addr", "add", gw, "dev", &r]);
    }

    let (pa, pb, pc) = (pod_ns(), pod_ns(), pod_ns());
    let c1 = n1.conf(&store.endpoint(), &store.prefix, &["vlan100-a"], "1.1.0");
    let c2 = n2.conf(&store.endpoint(), &store.prefix, &["vlan100-a"], "1.1.0");
    let c2v = n2.conf(&store.endpoint(), &store.prefix, &["vlan200-a"], "1.1.0");
    let ra = Call::new(&n1, "ADD", &c1)
        .cid("c-a")
        .netns(&pa.path().clone())
        .run();
    let rb = Call::new(&n2, "ADD", &c2)
        .cid("c-b")
        .netns(&pb.path().clone())
        .run();
    let rc = Call::new(&n2, "ADD", &c2v)
        .cid("c-c")
        .netns(&pc.path().clone())
        .run();
    let (ra, rb, rc) = (ra.ok().json(), rb.ok().json(), rc.ok().json());
    let (ia, ib, ic) = (pod_ip(&ra), pod_ip(&rb), pod_ip(&rc));
    assert!(ia.starts_with("10.244.") && ib.starts_with("10.244.") && ic.starts_with("10.245."));
    // each node claimed its own block
    let blocks = store.ipam.blocks(None).await.unwrap();
    assert_eq!(blocks.len(), 3, "one block per (node, pool)");

    // same pool, two nodes, across the trunk
    assert!(
        pa.ping(&ib, 5),
        "pod A (node-1) cannot reach pod B (node-2) in the same VLAN"
    );
    assert!(pb.ping(&ia, 5), "pod B cannot reach pod A");
    // the router is reachable from every pod: its own gateway and, through the default
    // route, its address on the other VLAN
    for (pod, name) in [(&pa, "A"), (&pb, "B")] {
        assert!(
            pod.ping("10.244.0.1", 5),
            "pod {name} cannot reach its gateway"
        );
        assert!(
            pod.ping("10.245.0.1", 5),
            "pod {name} cannot reach the router via its default route"
        );
    }
    assert!(
        pc.ping("10.245.0.1", 5),
        "pod C (VLAN 200, node-2) cannot reach its gateway over the trunk"
    );
    assert!(
        pc.ping("10.244.0.1", 5),
        "pod C cannot reach the router via its default route"
    );

    // VLAN 200 does not reach VLAN 100 at layer 2: an on-link route makes pod C ARP for A
    // and B directly on its segment, and nobody answers
    pc.ip(&["route", "add", "10.244.0.0/22", "dev", "eth0"]);
    assert!(
        !pc.ping(&ia, 1),
        "pod C reached pod A at layer 2 across VLANs"
    );
    assert!(
        !pc.ping(&ib, 1),
        "pod C reached pod B at layer 2 across VLANs"
    );
    // and the ports carry the right tags
    let host_c = cellplane_net::host_veth_name("c-c", "eth0");
    assert_eq!(n2.ovs.vsctl(&["get", "Port", &host_c, "tag"]), "200");

    for (n, c, id, p) in [
        (&n1, &c1, "c-a", &pa),
        (&n2, &c2, "c-b", &pb),
        (&n2, &c2v, "c-c", &pc),
    ] {
        Call::new(n, "DEL", c)
            .cid(id)
            .netns(&p.path().clone())
            .run()
            .ok();
    }
    assert!(store.handles().await.is_empty());
    assert!(n1.plugin_ports().is_empty() && n2.plugin_ports().is_empty());
}
