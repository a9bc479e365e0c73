//! Leak detection as a pure function of what was observed: etcd's allocations and handles,
//! and optionally the Kubernetes API's pods and nodes and this node's namespaces, OVS ports and
//! host veths. A leak is an address (or handle, port, veth) whose owner no longer exists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use cellplane_core::HandleRecord;
use cellplane_etcd::BlockState;
use serde::{Deserialize, Serialize};

/// What etcd holds, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct EtcdView {
    pub revision: i64,
    pub blocks: Vec<BlockState>,
    pub handles: BTreeMap<(String, String), (HandleRecord, i64)>,
}

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub phase: Option<String>,
}

/// What the Kubernetes API says: pods by UID, and the nodes that exist.
#[derive(Debug, Clone, Default)]
pub struct KubeView {
    pub pods: HashMap<String, PodInfo>,
    pub nodes: HashSet<String>,
    pub resource_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPort {
    pub name: String,
    pub bridge: Option<String>,
    pub container_id: Option<String>,
    pub ifname: Option<String>,
}

/// What this node has: which recorded network namespaces exist, our OVS ports, our host veths.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    pub node: String,
    /// netns path → exists, for every netns recorded by an allocation of this node.
    pub netns: HashMap<String, bool>,
    pub ports: Vec<LocalPort>,
    pub veths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The allocation's node is not in the Kubernetes API.
    NodeGone,
    /// No pod has the allocation's pod UID (deleted, or recreated under a new UID).
    PodGone,
    /// The pod exists but runs on another node than the allocation's.
    PodOnOtherNode,
    /// The pod has finished (Succeeded or Failed).
    PodTerminated,
    /// The allocation's network namespace no longer exists on this node.
    NetnsGone,
    /// The attachment owns more than one address; this one is not the one its handle names.
    DuplicateOwner,
    /// An allocation without its handle.
    AllocationWithoutHandle,
    /// A handle whose block is missing, or whose block does not hold its address.
    HandleWithoutAllocation,
    /// The netns exists but the OVS port is missing: broken, not released automatically.
    PortMissing,
    /// An OVS port with our owner tag and no allocation.
    OrphanPort,
    /// A host veth named like ours with no allocation.
    OrphanVeth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Guarded release of the address (block `mod_revision`).
    ReleaseAddress,
    /// Guarded delete of the handle (its `mod_revision`).
    DeleteHandle,
    /// Remove the OVS port (local).
    RemovePort,
    /// Delete the host veth (local).
    RemoveVeth,
    /// Needs an operator: reported, never acted on automatically.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The block's `mod_revision` when this was seen (what a guarded release compares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_revision: Option<i64>,
    /// Why this is a leak, one reason per source that says so.
    pub evidence: Vec<String>,
}

impl Finding {
    /// The identity of a leak across observations: the same address held by the same
    /// attachment (or the same handle, port or veth). Two observations agree only on this.
    pub fn key(&self) -> String {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        match self.kind {
            Kind::HandleWithoutAllocation => {
                format!("handle:{}/{}", s(&self.container_id), s(&self.ifname))
            }
            Kind::OrphanPort => format!("port:{}", s(&self.port)),
            Kind::OrphanVeth => format!("veth:{}", s(&self.port)),
            _ => format!(
                "addr:{}/{}/{}/{}",
                s(&self.pool),
                self.ip.map(|i| i.to_string()).unwrap_or_default(),
                s(&self.container_id),
                s(&self.ifname)
            ),
        }
    }

    fn address(b: &BlockState, ordinal: u32, kind: Kind, action: Action) -> Finding {
        let a = &b.record.allocations[&ordinal];
        Finding {
            kind,
            action,
            ip: Some(b.record.addr(ordinal)),
            pool: Some(b.pool.clone()),
            block: Some(b.id.clone()),
            container_id: Some(a.container_id.clone()),
            ifname: Some(a.ifname.clone()),
            node: Some(a.node.clone()),
            pod: a.pod.clone(),
            pod_uid: a.pod_uid.clone(),
            port: None,
            block_revision: Some(b.mod_revision),
            handle_revision: None,
            evidence: Vec::new(),
        }
    }
}

fn terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// Every leak visible in what was observed, in a stable order.
pub fn analyze(
    etcd: &EtcdView,
    kube: Option<&KubeView>,
    local: Option<&LocalView>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let n: usize = etcd.blocks.iter().map(|b| b.record.allocations.len()).sum();
    // attachment → how many addresses it holds
    let mut owners: HashMap<(&str, &str), u32> = HashMap::with_capacity(n);
    for b in &etcd.blocks {
        for a in b.record.allocations.values() {
            *owners
                .entry((a.container_id.as_str(), a.ifname.as_str()))
                .or_default() += 1;
        }
    }
    let handles: HashMap<(&str, &str), &(HandleRecord, i64)> = etcd
        .handles
        .iter()
        .map(|((c, i), h)| ((c.as_str(), i.as_str()), h))
        .collect();
    // pod names → uids, to say "recreated" when a name came back under a new UID; built only
    // when a pod-gone finding needs it
    let mut by_name: Option<HashMap<(&str, &str), &str>> = None;

    for b in &etcd.blocks {
        for (o, a) in &b.record.allocations {
            let ip = b.record.addr(*o);
            let handle = handles
                .get(&(a.container_id.as_str(), a.ifname.as_str()))
                .copied();
            let handle_points_here =
                handle.is_some_and(|(h, _)| h.ip == ip && h.pool == b.pool && h.block == b.id);
            let mut reasons: Vec<(Kind, Action, String)> = Vec::new();

            let held = owners[&(a.container_id.as_str(), a.ifname.as_str())];
            if held > 1 && !handle_points_here {
                let action = if handle.is_some() {
                    Action::ReleaseAddress
                } else {
                    Action::None
                };
                reasons.push((
                    Kind::DuplicateOwner,
                    action,
                    format!(
                        "{}/{} holds {} addresses; its handle names {}",
                        a.container_id,
                        a.ifname,
                        held,
                        handle
                            .map(|(h, _)| h.ip.to_string())
                            .unwrap_or_else(|| "none".into())
                    ),
                ));
            } else if handle.is_none() {
                reasons.push((
                    Kind::AllocationWithoutHandle,
                    Action::ReleaseAddress,
                    format!("no handle ipam/handles/{}/{}", a.container_id, a.ifname),
                ));
            }

            if let Some(k) = kube {
                if !k.nodes.contains(&a.node) {
                    reasons.push((
                        Kind::NodeGone,
                        Action::ReleaseAddress,
                        format!(
                            "node {} is not in the Kubernetes API ({} nodes at resourceVersion {})",
                            a.node,
                            k.nodes.len(),
                            k.resource_version
                        ),
                    ));
                } else if let Some(uid) = &a.pod_uid {
                    match k.pods.get(uid) {
                        None => {
                            let names = by_name.get_or_insert_with(|| {
                                k.pods
                                    .iter()
                                    .map(|(uid, p)| {
                                        ((p.namespace.as_str(), p.name.as_str()), uid.as_str())
                                    })
                                    .collect()
                            });
                            let again = a
                                .pod
                                .as_deref()
                                .and_then(|p| p.split_once('/'))
                                .and_then(|(ns, n)| names.get(&(ns, n)));
                            let why = match again {
                                Some(new) => format!(
                                    "no pod has UID {uid}; {} exists again under UID {new}",
                                    a.pod.as_deref().unwrap_or("?")
                                ),
                                None => format!(
                                    "no pod has UID {uid} ({} pods at resourceVersion {})",
                                    k.pods.len(),
                                    k.resource_version
                                ),
                            };
                            reasons.push((Kind::PodGone, Action::ReleaseAddress, why));
                        }
                        Some(p) if p.node.as_deref().is_some_and(|n| n != a.node) => {
                            reasons.push((
                                Kind::PodOnOtherNode,
                                Action::ReleaseAddress,
                                format!(
                                    "pod {}/{} (UID {uid}) runs on {}, the address was taken on {}",
                                    p.namespace,
                                    p.name,
                                    p.node.as_deref().unwrap_or("?"),
                                    a.node
                                ),
                            ));
                        }
                        Some(p) if terminal(p.phase.as_deref()) => {
                            reasons.push((
                                Kind::PodTerminated,
                                Action::ReleaseAddress,
                                format!(
                                    "pod {}/{} (UID {uid}) is {}",
                                    p.namespace,
                                    p.name,
                                    p.phase.as_deref().unwrap_or("?")
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }

            if let Some(l) = local.filter(|l| l.node == a.node) {
                let netns_gone = a
                    .netns
                    .as_ref()
                    .is_some_and(|ns| l.netns.get(ns) == Some(&false));
                if netns_gone {
                    reasons.push((
                        Kind::NetnsGone,
                        Action::ReleaseAddress,
                        format!(
                            "netns {} does not exist on {}",
                            a.netns.as_deref().unwrap_or(""),
                            l.node
                        ),
                    ));
                }
                let has_port = l.ports.iter().any(|p| {
                    p.container_id.as_deref() == Some(a.container_id.as_str())
                        && p.ifname.as_deref() == Some(a.ifname.as_str())
                });
                if !has_port {
                    let (kind, action) = if netns_gone {
                        (Kind::NetnsGone, Action::ReleaseAddress)
                    } else {
                        (Kind::PortMissing, Action::None)
                    };
                    reasons.push((
                        kind,
                        action,
                        format!(
                            "no OVS port on {} has external_ids container_id={} ifname={}",
                            l.node, a.container_id, a.ifname
                        ),
                    ));
                }
            }

            // The first reason that allows a release decides the kind; all are evidence.
            if let Some((kind, action, _)) = reasons
                .iter()
                .find(|r| r.1 != Action::None)
                .or_else(|| reasons.first())
                .cloned()
            {
                let mut f = Finding::address(b, *o, kind, action);
                f.handle_revision = handle.map(|(_, r)| *r);
                f.evidence = reasons.into_iter().map(|r| r.2).collect();
                out.push(f);
            }
        }
    }

    // handles whose allocation is not where they point
    let blocks: HashMap<(&str, &str), &BlockState> = etcd
        .blocks
        .iter()
        .map(|b| ((b.pool.as_str(), b.id.as_str()), b))
        .collect();
    for ((cid, ifname), (h, rev)) in &etcd.handles {
        let why = match blocks.get(&(h.pool.as_str(), h.block.as_str())) {
            None => Some(format!(
                "it points at block {}/{}, which does not exist",
                h.pool, h.block
            )),
            Some(b) => {
                let owned = b
                    .record
                    .ordinal_of(h.ip)
                    .and_then(|o| b.record.allocations.get(&o))
                    .is_some_and(|a| a.is_for(cid, ifname));
                (!owned)
                    .then(|| format!("block {}/{} does not hold {} for it", h.pool, h.block, h.ip))
            }
        };
        if let Some(why) = why {
            out.push(Finding {
                kind: Kind::HandleWithoutAllocation,
                action: Action::DeleteHandle,
                ip: Some(h.ip),
                pool: Some(h.pool.clone()),
                block: Some(h.block.clone()),
                container_id: Some(cid.clone()),
                ifname: Some(ifname.clone()),
                node: Some(h.node.clone()),
                pod: None,
                pod_uid: None,
                port: None,
                block_revision: None,
                handle_revision: Some(*rev),
                evidence: vec![why],
            });
        }
    }

    if let Some(l) = local {
        let attachments: HashSet<(&str, &str)> = owners.keys().copied().collect();
        let ours: HashSet<String> = etcd
            .blocks
            .iter()
            .flat_map(|b| b.record.allocations.values())
            .filter(|a| a.node == l.node)
            .map(|a| cellplane_net::names::host_veth_name(&a.container_id, &a.ifname))
            .collect();
        for p in &l.ports {
            let known = match (&p.container_id, &p.ifname) {
                (Some(c), Some(i)) => attachments.contains(&(c.as_str(), i.as_str())),
                _ => false,
            };
            if !known {
                out.push(Finding {
                    kind: Kind::OrphanPort,
                    action: Action::RemovePort,
                    ip: None,
                    pool: None,
                    block: None,
                    container_id: p.container_id.clone(),
                    ifname: p.ifname.clone(),
                    node: Some(l.node.clone()),
                    pod: None,
                    pod_uid: None,
                    port: Some(p.name.clone()),
                    block_revision: None,
                    handle_revision: None,
                    evidence: vec![format!(
                        "OVS port {} on {} has owner=cellplane but no allocation is for {}/{}",
                        p.name,
                        p.bridge.as_deref().unwrap_or("no bridge"),
                        p.container_id.as_deref().unwrap_or("?"),
                        p.ifname.as_deref().unwrap_or("?")
                    )],
                });
            }
        }
        let port_names: HashSet<&str> = l.ports.iter().map(|p| p.name.as_str()).collect();
        for v in &l.veths {
            if !ours.contains(v) && !port_names.contains(v.as_str()) {
                out.push(Finding {
                    kind: Kind::OrphanVeth,
                    action: Action::RemoveVeth,
                    ip: None,
                    pool: None,
                    block: None,
                    container_id: None,
                    ifname: None,
                    node: Some(l.node.clone()),
                    pod: None,
                    pod_uid: None,
                    port: Some(v.clone()),
                    block_revision: None,
                    handle_revision: None,
                    evidence: vec![format!(
                        "host veth {v} is named like ours but no allocation of {} maps to it",
                        l.node
                    )],
                });
            }
        }
    }
    // addresses first, in numeric order; then ports and veths by name
    out.sort_by(|a, b| {
        (a.ip.is_none(), &a.pool, a.ip, a.kind, &a.port, a.key()).cmp(&(
            b.ip.is_none(),
            &b.pool,
            b.ip,
            b.kind,
            &b.port,
            b.key(),
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellplane_core::{Allocation, BlockRecord};

    fn alloc(cid: &str, node: &str, uid: Option<&str>, netns: Option<&str>) -> Allocation {
        Allocation {
            container_id: cid.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod_uid: uid.map(Into::into),
            pod: Some(format!("ns/{cid}")),
            netns: netns.map(Into::into),
            at: 1,
        }
    }

    fn view(allocs: &[(u32, Allocation)]) -> EtcdView {
        let mut rec = BlockRecord::new("10.0.0.0/28".parse().unwrap(), "n1", 0);
        let mut handles = BTreeMap::new();
        for (o, a) in allocs {
            rec.allocations.insert(*o, a.clone());
            handles.insert(
                (a.container_id.clone(), a.ifname.clone()),
                (
                    HandleRecord {
                        pool: "p".into(),
                        block: "010.000.000.000".into(),
                        ip: rec.addr(*o),
                        node: a.node.clone(),
                    },
                    7,
                ),
            );
        }
        EtcdView {
            revision: 10,
            blocks: vec![BlockState {
                pool: "p".into(),
                id: "010.000.000.000".into(),
                record: rec,
                mod_revision: 9,
            }],
            handles,
        }
    }

    fn pod(ns: &str, name: &str, node: &str, phase: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node: Some(node.into()),
            phase: Some(phase.into()),
        }
    }

    #[test]
    fn kube_findings() {
        let e = view(&[
            (2, alloc("live", "n1", Some("u-live"), None)),
            (3, alloc("gone", "n1", Some("u-gone"), None)),
            (4, alloc("recreated", "n1", Some("u-old"), None)),
            (5, alloc("deadnode", "n9", Some("u-dn"), None)),
            (6, alloc("done", "n1", Some("u-done"), None)),
            (7, alloc("podman", "n1", None, None)),
        ]);
        let mut k = KubeView {
            resource_version: "42".into(),
            ..KubeView::default()
        };
        k.nodes.insert("n1".into());
        k.pods
            .insert("u-live".into(), pod("ns", "live", "n1", "Running"));
        k.pods
            .insert("u-new".into(), pod("ns", "recreated", "n1", "Running"));
        k.pods
            .insert("u-dn".into(), pod("ns", "deadnode", "n9", "Running"));
        k.pods
            .insert("u-done".into(), pod("ns", "done", "n1", "Succeeded"));
        let f = analyze(&e, Some(&k), None);
        let kinds: Vec<(String, Kind)> = f
            .iter()
            .map(|f| (f.container_id.clone().unwrap(), f.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("gone".into(), Kind::PodGone),
                ("recreated".into(), Kind::PodGone),
                ("deadnode".into(), Kind::NodeGone),
                ("done".into(), Kind::PodTerminated),
            ]
        );
        let rec = f
            .iter()
            .find(|f| f.container_id.as_deref() == Some("recreated"))
            .unwrap();
        assert!(
            rec.evidence[0].contains("exists again under UID u-new"),
            "{:?}",
            rec.evidence
        );
        assert!(f
            .iter()
            .all(|f| f.action == Action::ReleaseAddress && f.block_revision == Some(9)));
    }

    #[test]
    fn etcd_consistency_findings() {
        let mut e = view(&[
            (2, alloc("a", "n1", None, None)),
            (3, alloc("b", "n1", None, None)),
        ]);
        // b also holds .4, which its handle does not name
        e.blocks[0]
            .record
            .allocations
            .insert(4, alloc("b", "n1", None, None));
        // c's handle points at a block that does not exist
        e.handles.insert(
            ("c".into(), "eth0".into()),
            (
                HandleRecord {
                    pool: "p".into(),
                    block: "010.000.000.016".into(),
                    ip: "10.0.0.17".parse().unwrap(),
                    node: "n1".into(),
                },
                3,
            ),
        );
        // a's handle is lost
        e.handles.remove(&("a".into(), "eth0".into()));
        let f = analyze(&e, None, None);
        let got: Vec<(Kind, Option<Ipv4Addr>)> = f.iter().map(|f| (f.kind, f.ip)).collect();
        assert_eq!(
            got,
            vec![
                (
                    Kind::AllocationWithoutHandle,
                    Some("10.0.0.2".parse().unwrap())
                ),
                (Kind::DuplicateOwner, Some("10.0.0.4".parse().unwrap())),
                (
                    Kind::HandleWithoutAllocation,
                    Some("10.0.0.17".parse().unwrap())
                ),
            ]
        );
    }

    #[test]
    fn local_findings() {
        let e = view(&[
            (2, alloc("alive", "n1", None, Some("/run/netns/alive"))),
            (3, alloc("crashed", "n1", None, Some("/run/netns/crashed"))),
            (4, alloc("noport", "n1", None, Some("/run/netns/noport"))),
            (5, alloc("elsewhere", "n2", None, Some("/run/netns/x"))),
        ]);
        let port = |c: &str| LocalPort {
            name: cellplane_net::names::host_veth_name(c, "eth0"),
            bridge: Some("br".into()),
            container_id: Some(c.into()),
            ifname: Some("eth0".into()),
        };
        let l = LocalView {
            node: "n1".into(),
            netns: [
                ("/run/netns/alive".to_string(), true),
                ("/run/netns/crashed".to_string(), false),
                ("/run/netns/noport".to_string(), true),
            ]
            .into(),
            ports: vec![port("alive"), port("crashed"), port("stale")],
            veths: vec![
                cellplane_net::names::host_veth_name("alive", "eth0"),
                "cp00000000000ff".into(),
            ],
        };
        let f = analyze(&e, None, Some(&l));
        let got: Vec<(Kind, Action)> = f.iter().map(|f| (f.kind, f.action)).collect();
        assert_eq!(
            got,
            vec![
                (Kind::NetnsGone, Action::ReleaseAddress),
                (Kind::PortMissing, Action::None),
                (Kind::OrphanPort, Action::RemovePort),
                (Kind::OrphanVeth, Action::RemoveVeth),
            ]
        );
    }
}
