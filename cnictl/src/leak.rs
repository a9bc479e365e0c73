//! Leak detection as a pure function of what was observed: etcd's allocations and handles,
//! and optionally the Kubernetes API's pods and nodes and this node's namespaces, OVS ports and
//! host veths. A leak is an address (or handle, port, veth) whose owner no longer exists.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Deserializer, Serialize};

/// A string read from a record: borrowed from the bytes etcd or the Kubernetes API returned
/// (no copy), owned only when the JSON had escapes to undo.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Text(Cow::Borrowed(s))
    }
}

impl From<String> for Text<'_> {
    fn from(s: String) -> Self {
        Text(Cow::Owned(s))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// FxHash (as in rustc) with a final folded multiply: the maps here are keyed by container
/// IDs, UIDs and names read from our own etcd and API server, tens of thousands per check,
/// where SipHash's cost showed. The fold spreads every input bit over the low bits that pick a
/// bucket (plain Fx leaves IDs differing only in their last bytes all in one bucket).
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let full = u128::from(self.hash) * u128::from(K);
        (full as u64) ^ ((full >> 64) as u64)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// One allocation of a block record, as the check reads it (`ipam/blocks/...` →
/// `allocations.{ordinal}`). Same required fields as [`cellplane_core::Allocation`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Alloc<'a> {
    #[serde(borrow)]
    pub container_id: Text<'a>,
    #[serde(borrow)]
    pub ifname: Text<'a>,
    #[serde(borrow)]
    pub node: Text<'a>,
    #[serde(borrow, default)]
    pub pod_uid: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub pod: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub netns: Option<Text<'a>>,
    /// Unix time in milliseconds (not compared; read so that a record without it is refused
    /// as before).
    pub at: u64,
}

impl Alloc<'_> {
    pub fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        *self.container_id == *container_id && *self.ifname == *ifname
    }
}

/// One block (`ipam/blocks/{pool}/{block}`) at the revision read.
#[derive(Debug, Clone)]
pub struct Block<'a> {
    pub pool: Text<'a>,
    pub id: Text<'a>,
    pub cidr: Ipv4Network,
    /// Allocated ordinals, in order.
    pub allocations: Vec<(u32, Alloc<'a>)>,
    pub mod_revision: i64,
}

impl Block<'_> {
    pub fn addr(&self, ordinal: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + ordinal)
    }

    pub fn ordinal_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr
            .contains(ip)
            .then(|| u32::from(ip) - u32::from(self.cidr.network()))
    }

    pub fn allocation(&self, ordinal: u32) -> Option<&Alloc<'_>> {
        self.allocations
            .binary_search_by_key(&ordinal, |(o, _)| *o)
            .ok()
            .map(|i| &self.allocations[i].1)
    }
}

/// One handle (`ipam/handles/{container_id}/{ifname}`) at the revision read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle<'a> {
    pub container_id: Text<'a>,
    pub ifname: Text<'a>,
    pub pool: Text<'a>,
    pub block: Text<'a>,
    pub ip: Ipv4Addr,
    pub node: Text<'a>,
    pub mod_revision: i64,
}

/// What etcd holds, read at one revision (borrowed from the records as read).
#[derive(Debug, Clone, Default)]
pub struct EtcdView<'a> {
    pub revision: i64,
    pub blocks: Vec<Block<'a>>,
    /// At most one per `(container_id, ifname)` (one etcd key each).
    pub handles: Vec<Handle<'a>>,
}

impl EtcdView<'_> {
    pub fn allocations(&self) -> usize {
        self.blocks.iter().map(|b| b.allocations.len()).sum()
    }
}

#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    pub namespace: Text<'a>,
    pub name: Text<'a>,
    pub node: Option<Text<'a>>,
    pub phase: Option<Text<'a>>,
}

/// What the Kubernetes API says: pods by UID, and the nodes that exist.
#[derive(Debug, Clone, Default)]
pub struct KubeView<'a> {
    pub pods: FastMap<Text<'a>, PodInfo<'a>>,
    pub nodes: FastSet<Text<'a>>,
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

    fn address(b: &Block, ordinal: u32, a: &Alloc, kind: Kind, action: Action) -> Finding {
        Finding {
            kind,
            action,
            ip: Some(b.addr(ordinal)),
            pool: Some(b.pool.to_string()),
            block: Some(b.id.to_string()),
            container_id: Some(a.container_id.to_string()),
            ifname: Some(a.ifname.to_string()),
            node: Some(a.node.to_string()),
            pod: a.pod.as_deref().map(str::to_string),
            pod_uid: a.pod_uid.as_deref().map(str::to_string),
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

/// One attachment `(container_id, ifname)`: how many addresses it holds, and its handle.
#[derive(Default, Clone, Copy)]
struct Attachment {
    held: u32,
    /// Index in `EtcdView::handles`.
    handle: Option<usize>,
}

/// Every leak visible in what was observed, in a stable order.
pub fn analyze(
    etcd: &EtcdView,
    kube: Option<&KubeView>,
    local: Option<&LocalView>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // Each attachment that holds addresses, numbered; and each allocation's attachment, in
    // the order of the blocks (one map lookup per allocation and per handle, no more).
    let n = etcd.allocations();
    let mut numbers: FastMap<(&str, &str), usize> = FastMap::default();
    numbers.reserve(n);
    let mut attachments: Vec<Attachment> = Vec::with_capacity(n);
    let mut of_allocation: Vec<usize> = Vec::with_capacity(n);
    for b in &etcd.blocks {
        for (_, a) in &b.allocations {
            let next = attachments.len();
            let i = *numbers.entry((&a.container_id, &a.ifname)).or_insert(next);
            if i == next {
                attachments.push(Attachment::default());
            }
            attachments[i].held += 1;
            of_allocation.push(i);
        }
    }
    for (hi, h) in etcd.handles.iter().enumerate() {
        if let Some(&i) = numbers.get(&(&*h.container_id, &*h.ifname)) {
            attachments[i].handle = Some(hi);
        }
    }
    // handles whose block holds their address for them (found from the allocations' side)
    let mut handle_held = vec![false; etcd.handles.len()];
    // pod-gone evidence that may say "recreated", when the pod's name came back under a new
    // UID: (finding, evidence, namespace, name)
    let mut pod_gone: Vec<(usize, usize, &str, &str)> = Vec::new();

    let allocations = etcd
        .blocks
        .iter()
        .flat_map(|b| b.allocations.iter().map(move |(o, a)| (b, *o, a)));
    for ((b, o, a), i) in allocations.zip(&of_allocation) {
        let ip = b.addr(o);
        let Attachment {
            held,
            handle: handle_index,
        } = attachments[*i];
        let handle = handle_index.map(|i| &etcd.handles[i]);
        let handle_points_here =
            handle.is_some_and(|h| h.ip == ip && h.pool == b.pool && h.block == b.id);
        if let Some(i) = handle_index.filter(|_| handle_points_here && b.cidr.contains(ip)) {
            handle_held[i] = true;
        }
        let mut reasons: Vec<(Kind, Action, String)> = Vec::new();

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
                    &*a.container_id,
                    &*a.ifname,
                    held,
                    handle
                        .map(|h| h.ip.to_string())
                        .unwrap_or_else(|| "none".into())
                ),
            ));
        } else if handle.is_none() {
            reasons.push((
                Kind::AllocationWithoutHandle,
                Action::ReleaseAddress,
                format!("no handle ipam/handles/{}/{}", &*a.container_id, &*a.ifname),
            ));
        }

        if let Some(k) = kube {
            if !k.nodes.contains(&*a.node) {
                reasons.push((
                    Kind::NodeGone,
                    Action::ReleaseAddress,
                    format!(
                        "node {} is not in the Kubernetes API ({} nodes at resourceVersion {})",
                        &*a.node,
                        k.nodes.len(),
                        k.resource_version
                    ),
                ));
            } else if let Some(uid) = a.pod_uid.as_deref() {
                match k.pods.get(uid) {
                    None => {
                        // said once the pods' names are looked at (below)
                        if let Some((ns, name)) = a.pod.as_deref().and_then(|p| p.split_once('/')) {
                            pod_gone.push((out.len(), reasons.len(), ns, name));
                        }
                        let why = format!(
                            "no pod has UID {uid} ({} pods at resourceVersion {})",
                            k.pods.len(),
                            k.resource_version
                        );
                        reasons.push((Kind::PodGone, Action::ReleaseAddress, why));
                    }
                    Some(p) if p.node.as_deref().is_some_and(|n| n != &*a.node) => {
                        reasons.push((
                            Kind::PodOnOtherNode,
                            Action::ReleaseAddress,
                            format!(
                                "pod {}/{} (UID {uid}) runs on {}, the address was taken on {}",
                                &*p.namespace,
                                &*p.name,
                                p.node.as_deref().unwrap_or("?"),
                                &*a.node
                            ),
                        ));
                    }
                    Some(p) if terminal(p.phase.as_deref()) => {
                        reasons.push((
                            Kind::PodTerminated,
                            Action::ReleaseAddress,
                            format!(
                                "pod {}/{} (UID {uid}) is {}",
                                &*p.namespace,
                                &*p.name,
                                p.phase.as_deref().unwrap_or("?")
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }

        if let Some(l) = local.filter(|l| l.node == *a.node) {
            let netns_gone = a
                .netns
                .as_deref()
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
                p.container_id.as_deref() == Some(&*a.container_id)
                    && p.ifname.as_deref() == Some(&*a.ifname)
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
                        l.node, &*a.container_id, &*a.ifname
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
            let mut f = Finding::address(b, o, a, kind, action);
            f.handle_revision = handle.map(|h| h.mod_revision);
            f.evidence = reasons.into_iter().map(|r| r.2).collect();
            out.push(f);
        }
    }

    if let Some(k) = kube.filter(|_| !pod_gone.is_empty()) {
        let mut again: FastMap<(&str, &str), Option<&str>> = pod_gone
            .iter()
            .map(|(_, _, ns, name)| ((*ns, *name), None))
            .collect();
        for (uid, p) in &k.pods {
            if let Some(new) = again.get_mut(&(&*p.namespace, &*p.name)) {
                *new = Some(uid);
            }
        }
        for (f, e, ns, name) in pod_gone {
            if let Some(new) = again[&(ns, name)] {
                let f = &mut out[f];
                let uid = f.pod_uid.as_deref().unwrap_or_default();
                f.evidence[e] = format!(
                    "no pod has UID {uid}; {} exists again under UID {new}",
                    f.pod.as_deref().unwrap_or("?")
                );
            }
        }
    }

    // handles whose allocation is not where they point
    let mut blocks: Option<FastMap<(&str, &str), &Block>> = None;
    for (h, _) in etcd
        .handles
        .iter()
        .zip(&handle_held)
        .filter(|(_, held)| !**held)
    {
        let blocks = blocks.get_or_insert_with(|| {
            etcd.blocks
                .iter()
                .map(|b| ((&*b.pool, &*b.id), b))
                .collect()
        });
        let why = match blocks.get(&(&*h.pool, &*h.block)) {
            None => Some(format!(
                "it points at block {}/{}, which does not exist",
                &*h.pool, &*h.block
            )),
            Some(b) => {
                let owned = b
                    .ordinal_of(h.ip)
                    .and_then(|o| b.allocation(o))
                    .is_some_and(|a| a.is_for(&h.container_id, &h.ifname));
                (!owned).then(|| {
                    format!(
                        "block {}/{} does not hold {} for it",
                        &*h.pool, &*h.block, h.ip
                    )
                })
            }
        };
        if let Some(why) = why {
            out.push(Finding {
                kind: Kind::HandleWithoutAllocation,
                action: Action::DeleteHandle,
                ip: Some(h.ip),
                pool: Some(h.pool.to_string()),
                block: Some(h.block.to_string()),
                container_id: Some(h.container_id.to_string()),
                ifname: Some(h.ifname.to_string()),
                node: Some(h.node.to_string()),
                pod: None,
                pod_uid: None,
                port: None,
                block_revision: None,
                handle_revision: Some(h.mod_revision),
                evidence: vec![why],
            });
        }
    }

    if let Some(l) = local {
        let ours: HashSet<String> = etcd
            .blocks
            .iter()
            .flat_map(|b| b.allocations.iter().map(|(_, a)| a))
            .filter(|a| *a.node == *l.node)
            .map(|a| cellplane_net::names::host_veth_name(&a.container_id, &a.ifname))
            .collect();
        for p in &l.ports {
            let known = match (&p.container_id, &p.ifname) {
                (Some(c), Some(i)) => numbers.contains_key(&(c.as_str(), i.as_str())),
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

    fn alloc(
        cid: &'static str,
        node: &'static str,
        uid: Option<&'static str>,
        netns: Option<&'static str>,
    ) -> Alloc<'static> {
        Alloc {
            container_id: cid.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod_uid: uid.map(Into::into),
            pod: Some(format!("ns/{cid}").into()),
            netns: netns.map(Into::into),
            at: 1,
        }
    }

    fn view(allocs: &[(u32, Alloc<'static>)]) -> EtcdView<'static> {
        let mut block = Block {
            pool: "p".into(),
            id: "010.000.000.000".into(),
            cidr: "10.0.0.0/28".parse().unwrap(),
            allocations: Vec::new(),
            mod_revision: 9,
        };
        let mut handles = Vec::new();
        for (o, a) in allocs {
            block.allocations.push((*o, a.clone()));
            handles.push(Handle {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
                pool: "p".into(),
                block: "010.000.000.000".into(),
                ip: block.addr(*o),
                node: a.node.clone(),
                mod_revision: 7,
            });
        }
        EtcdView {
            revision: 10,
            blocks: vec![block],
            handles,
        }
    }

    fn pod(
        ns: &'static str,
        name: &'static str,
        node: &'static str,
        phase: &'static str,
    ) -> PodInfo<'static> {
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
            .allocations
            .push((4, alloc("b", "n1", None, None)));
        // c's handle points at a block that does not exist
        e.handles.push(Handle {
            container_id: "c".into(),
            ifname: "eth0".into(),
            pool: "p".into(),
            block: "010.000.000.016".into(),
            ip: "10.0.0.17".parse().unwrap(),
            node: "n1".into(),
            mod_revision: 3,
        });
        // a's handle is lost
        e.handles.retain(|h| &*h.container_id != "a");
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
