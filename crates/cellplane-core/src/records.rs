//! JSON records stored in etcd. Field names are part of the contract between components.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Who an allocation is for, beyond the CNI attachment. All optional: a runtime without
/// Kubernetes (podman) gives none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One address in a block, owned by one attachment `(container_id, ifname)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    /// The node that asked for it (equals the block's node unless the address was borrowed).
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `namespace/name` of the pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Unix time in milliseconds when it was allocated.
    pub at: u64,
}

impl Allocation {
    pub fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// The record at `ipam/blocks/{pool}/{block}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub cidr: Ipv4Network,
    /// The node that claimed the block (its affinity).
    pub node: String,
    /// The block's index inside its pool.
    pub seq: u32,
    /// Allocated ordinals (offset from the block's first address).
    #[serde(default)]
    pub allocations: BTreeMap<u32, Allocation>,
    /// Ordinals released, with the unix time in milliseconds when they were released.
    #[serde(default)]
    pub released: BTreeMap<u32, u64>,
}

impl BlockRecord {
    pub fn new(cidr: Ipv4Network, node: &str, seq: u32) -> Self {
        BlockRecord {
            cidr,
            node: node.to_string(),
            seq,
            allocations: BTreeMap::new(),
            released: BTreeMap::new(),
        }
    }

    pub fn addr(&self, ordinal: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + ordinal)
    }

    pub fn ordinal_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr
            .contains(ip)
            .then(|| u32::from(ip) - u32::from(self.cidr.network()))
    }

    /// The ordinal owned by `(container_id, ifname)`, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<u32> {
        self.allocations
            .iter()
            .find(|(_, a)| a.is_for(container_id, ifname))
            .map(|(o, _)| *o)
    }
}

/// The record at `ipam/handles/{container_id}/{ifname}`: where that attachment's address is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    pub pool: String,
    pub block: String,
    pub ip: Ipv4Addr,
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_json_round_trip() {
        let mut b = BlockRecord::new("10.1.0.16/28".parse().unwrap(), "n1", 1);
        b.allocations.insert(
            3,
            Allocation {
                container_id: "c".into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                pod_uid: None,
                pod: Some("ns/p".into()),
                netns: None,
                at: 5,
            },
        );
        b.released.insert(4, 9);
        let s = serde_json::to_string(&b).unwrap();
        assert!(s.contains(r#""allocations":{"3":{"#), "{s}");
        let back: BlockRecord = serde_json::from_str(&s).unwrap();
        assert_eq!(back, b);
        assert_eq!(b.addr(3), "10.1.0.19".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.ordinal_of("10.1.0.19".parse().unwrap()), Some(3));
        assert_eq!(b.find("c", "eth0"), Some(3));
    }
}
