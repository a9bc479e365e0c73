//! IPv4 pools and their blocks.
//!
//! A pool is one CIDR on one VLAN, with a gateway and optional exclusions. It is cut into
//! aligned blocks of `block_size` addresses (16 by default); a node claims whole blocks and
//! hands out the addresses inside them. The network, broadcast and gateway addresses and every
//! excluded address are never allocatable.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::validation::validate_name;

pub const DEFAULT_BLOCK_SIZE: u32 = 16;
/// The largest pool accepted: a /12 (65536 blocks of 16). Bigger segments are not a flat
/// layer-2 network anyone should run.
pub const MIN_PREFIX: u8 = 12;
pub const MAX_BLOCK_SIZE: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    #[default]
    Active,
    /// No new blocks or addresses are handed out; existing allocations stay.
    Draining,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolState::Active => "active",
            PoolState::Draining => "draining",
        })
    }
}

fn default_block_size() -> u32 {
    DEFAULT_BLOCK_SIZE
}

/// The record stored at `ipam/pools/{pool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub cidr: Ipv4Network,
    pub vlan: u16,
    pub gateway: Ipv4Addr,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub exclude: Vec<Ipv4Network>,
    #[serde(default)]
    pub state: PoolState,
}

/// A validated pool: a name and a spec whose every rule holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    name: String,
    spec: PoolSpec,
    network: u32,
    size: u64,
}

/// One block of a pool, identified by its index (0 = the lowest addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRef {
    pub index: u32,
    pub start: Ipv4Addr,
    pub size: u32,
}

impl BlockRef {
    pub fn cidr(&self) -> Ipv4Network {
        let prefix = 32 - self.size.trailing_zeros() as u8;
        Ipv4Network::new(self.start, prefix).expect("block prefix is valid")
    }

    /// The address at `ordinal` (0-based) inside this block.
    pub fn addr(&self, ordinal: u32) -> Option<Ipv4Addr> {
        (ordinal < self.size).then(|| Ipv4Addr::from(u32::from(self.start) + ordinal))
    }

    pub fn ordinal_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).wrapping_sub(u32::from(self.start));
        (u32::from(ip) >= u32::from(self.start) && off < self.size).then_some(off)
    }

    /// The block's id in etcd keys: its first address with zero-padded octets, so that the
    /// lexical order of keys is the numeric order of blocks (`010.020.000.016`).
    pub fn id(&self) -> String {
        block_id(self.start)
    }
}

/// Zero-padded dotted form of an address; lexical order equals numeric order.
pub fn block_id(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a:03}.{b:03}.{c:03}.{d:03}")
}

/// Parses the form written by [`block_id`].
pub fn parse_block_id(id: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = id.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.len() != 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

impl Pool {
    /// Validates `spec` and returns the pool, or an error naming the field at fault.
    pub fn new(name: &str, spec: PoolSpec) -> Result<Pool> {
        validate_name("pool name", name)?;
        let cidr = spec.cidr;
        let prefix = cidr.prefix();
        if cidr.ip() != cidr.network() {
            return Err(CoreError::invalid(
                "cidr",
                cidr,
                format!(
                    "host bits are set; the network address of /{prefix} is {}",
                    cidr.network()
                ),
            ));
        }
        let bs = spec.block_size;
        if bs < 4 || !bs.is_power_of_two() || bs > MAX_BLOCK_SIZE {
            return Err(CoreError::invalid(
                "block_size",
                bs,
                format!("must be a power of two from 4 to {MAX_BLOCK_SIZE}"),
            ));
        }
        let max_prefix = 32 - bs.trailing_zeros() as u8;
        if prefix < MIN_PREFIX || prefix > max_prefix {
            return Err(CoreError::invalid(
                "cidr",
                cidr,
                format!(
                    "prefix length must be from /{MIN_PREFIX} to /{max_prefix} (at least one block of {bs})"
                ),
            ));
        }
        if !(1..=4094).contains(&spec.vlan) {
            return Err(CoreError::invalid(
                "vlan",
                spec.vlan,
                "must be from 1 to 4094",
            ));
        }
        let network = u32::from(cidr.network());
        let size = 1u64 << (32 - prefix);
        let gw = u32::from(spec.gateway);
        if !cidr.contains(spec.gateway) {
            return Err(CoreError::invalid(
                "gateway",
                spec.gateway,
                format!("is outside the pool {cidr}"),
            ));
        }
        if gw == network || u64::from(gw) == u64::from(network) + size - 1 {
            return Err(CoreError::invalid(
                "gateway",
                spec.gateway,
                format!("is the network or broadcast address of {cidr}"),
            ));
        }
        for ex in &spec.exclude {
            if ex.ip() != ex.network() {
                return Err(CoreError::invalid(
                    "exclude",
                    ex,
                    format!(
                        "host bits are set; did you mean {}/{}",
                        ex.network(),
                        ex.prefix()
                    ),
                ));
            }
            if !(cidr.contains(ex.network()) && cidr.contains(ex.broadcast())) {
                return Err(CoreError::invalid(
                    "exclude",
                    ex,
                    format!("is not inside the pool {cidr}"),
                ));
            }
        }
        Ok(Pool {
            name: name.to_string(),
            spec,
            network,
            size,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }
    pub fn cidr(&self) -> Ipv4Network {
        self.spec.cidr
    }
    pub fn vlan(&self) -> u16 {
        self.spec.vlan
    }
    pub fn gateway(&self) -> Ipv4Addr {
        self.spec.gateway
    }
    pub fn prefix(&self) -> u8 {
        self.spec.cidr.prefix()
    }
    pub fn state(&self) -> PoolState {
        self.spec.state
    }
    pub fn block_size(&self) -> u32 {
        self.spec.block_size
    }

    pub fn block_count(&self) -> u32 {
        (self.size / u64::from(self.spec.block_size)) as u32
    }

    pub fn block(&self, index: u32) -> Option<BlockRef> {
        (index < self.block_count()).then(|| BlockRef {
            index,
            start: Ipv4Addr::from(self.network + index * self.spec.block_size),
            size: self.spec.block_size,
        })
    }

    pub fn blocks(&self) -> impl Iterator<Item = BlockRef> + '_ {
        (0..self.block_count()).filter_map(|i| self.block(i))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.spec.cidr.contains(ip)
    }

    pub fn block_of(&self, ip: Ipv4Addr) -> Option<BlockRef> {
        if !self.contains(ip) {
            return None;
        }
        self.block((u32::from(ip) - self.network) / self.spec.block_size)
    }

    /// The block whose id (see [`BlockRef::id`]) is `id`, if it is a block of this pool.
    pub fn block_by_id(&self, id: &str) -> Option<BlockRef> {
        let ip = parse_block_id(id)?;
        self.block_of(ip).filter(|b| b.start == ip)
    }

    /// Network, broadcast, gateway and excluded addresses are never handed out.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v == self.network
            || u64::from(v) == u64::from(self.network) + self.size - 1
            || ip == self.spec.gateway
            || self.spec.exclude.iter().any(|ex| ex.contains(ip))
    }

    /// Ordinals inside `block` that may ever be allocated, lowest first.
    pub fn allocatable_ordinals(&self, block: BlockRef) -> impl Iterator<Item = u32> + '_ {
        (0..block.size).filter(move |&o| block.addr(o).is_some_and(|ip| !self.is_reserved(ip)))
    }

    /// How many addresses of the pool may ever be allocated.
    pub fn capacity(&self) -> u64 {
        self.blocks()
            .map(|b| self.allocatable_ordinals(b).count() as u64)
            .sum()
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        let (a0, a1) = (u64::from(self.network), u64::from(self.network) + self.size);
        let (b0, b1) = (
            u64::from(other.network),
            u64::from(other.network) + other.size,
        );
        a0 < b1 && b0 < a1
    }

    /// Refuses a pool that overlaps any of `existing` (a pool may be compared with itself by
    /// name, for updates).
    pub fn check_no_overlap<'a>(&self, existing: impl IntoIterator<Item = &'a Pool>) -> Result<()> {
        for other in existing {
            if other.name != self.name && self.overlaps(other) {
                return Err(CoreError::Overlap {
                    pool: self.name.clone(),
                    cidr: self.cidr().to_string(),
                    other: other.name.clone(),
                    other_cidr: other.cidr().to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(cidr: &str, vlan: u16, gw: &str) -> PoolSpec {
        PoolSpec {
            cidr: cidr.parse().unwrap(),
            vlan,
            gateway: gw.parse().unwrap(),
            block_size: 16,
            exclude: vec![],
            state: PoolState::Active,
        }
    }

    #[test]
    fn validation_table() {
        let cases: &[(&str, PoolSpec, Option<&str>)] = &[
            ("ok", spec("10.20.0.0/22", 100, "10.20.0.1"), None),
            (
                "misaligned",
                spec("10.20.0.5/22", 100, "10.20.0.1"),
                Some("host bits are set"),
            ),
            ("vlan0", spec("10.20.0.0/22", 0, "10.20.0.1"), Some("vlan")),
            (
                "vlan4095",
                spec("10.20.0.0/22", 4095, "10.20.0.1"),
                Some("vlan"),
            ),
            (
                "gw-out",
                spec("10.20.0.0/22", 100, "10.21.0.1"),
                Some("outside the pool"),
            ),
            (
                "gw-net",
                spec("10.20.0.0/22", 100, "10.20.0.0"),
                Some("network or broadcast"),
            ),
            (
                "gw-bcast",
                spec("10.20.0.0/22", 100, "10.20.3.255"),
                Some("network or broadcast"),
            ),
            (
                "too-small",
                spec("10.20.0.0/29", 100, "10.20.0.1"),
                Some("prefix length"),
            ),
            (
                "too-big",
                spec("10.0.0.0/8", 100, "10.0.0.1"),
                Some("prefix length"),
            ),
        ];
        for (name, s, want) in cases {
            let got = Pool::new("p", s.clone());
            match (want, got) {
                (None, Ok(_)) => {}
                (Some(w), Err(e)) => assert!(e.to_string().contains(w), "{name}: {e}"),
                (w, g) => panic!("{name}: wanted {w:?}, got {g:?}"),
            }
        }
        let mut s = spec("10.20.0.0/22", 100, "10.20.0.1");
        s.block_size = 12;
        assert!(Pool::new("p", s.clone())
            .unwrap_err()
            .to_string()
            .contains("block_size"));
        s.block_size = 2;
        assert!(Pool::new("p", s.clone()).is_err());
        s.block_size = 16;
        s.exclude = vec!["10.30.0.0/24".parse().unwrap()];
        assert!(Pool::new("p", s.clone())
            .unwrap_err()
            .to_string()
            .contains("not inside"));
        s.exclude = vec!["10.20.1.7/24".parse().unwrap()];
        assert!(Pool::new("p", s.clone())
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!(Pool::new("Bad/Name", spec("10.20.0.0/22", 1, "10.20.0.1")).is_err());
    }

    #[test]
    fn overlap() {
        let a = Pool::new("a", spec("10.20.0.0/22", 100, "10.20.0.1")).unwrap();
        let b = Pool::new("b", spec("10.20.2.0/24", 101, "10.20.2.1")).unwrap();
        let c = Pool::new("c", spec("10.20.4.0/22", 100, "10.20.4.1")).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        let e = b.check_no_overlap([&a, &c]).unwrap_err().to_string();
        assert!(e.contains("overlaps pool a"), "{e}");
        assert!(c.check_no_overlap([&a]).is_ok());
    }

    #[test]
    fn reserved_and_capacity() {
        let mut s = spec("10.20.0.0/22", 100, "10.20.0.1");
        s.exclude = vec!["10.20.1.0/28".parse().unwrap()];
        let p = Pool::new("a", s).unwrap();
        assert_eq!(p.block_count(), 64);
        // 1024 - network - broadcast - gateway - 16 excluded
        assert_eq!(p.capacity(), 1024 - 3 - 16);
        let b0 = p.block(0).unwrap();
        assert_eq!(p.allocatable_ordinals(b0).next(), Some(2));
        assert_eq!(b0.id(), "010.020.000.000");
        assert_eq!(p.block_by_id("010.020.000.016").unwrap().index, 1);
        assert!(p.block_by_id("010.020.000.017").is_none());
        assert!(p.block_by_id("10.20.0.16").is_none());
    }

    fn arb_pool() -> impl Strategy<Value = Pool> {
        (any::<u32>(), 16u8..=28, 2u32..=6, any::<u32>(), 1u16..=4094).prop_filter_map(
            "valid pool",
            |(base, prefix, bs_log, gw_off, vlan)| {
                let bs = 1u32 << bs_log;
                if prefix > 32 - bs_log as u8 {
                    return None;
                }
                let mask = u32::MAX << (32 - prefix);
                let net = base & mask;
                let size = 1u32 << (32 - prefix);
                let gw = net + 1 + gw_off % (size - 2);
                Pool::new(
                    "p",
                    PoolSpec {
                        cidr: Ipv4Network::new(Ipv4Addr::from(net), prefix).ok()?,
                        vlan,
                        gateway: Ipv4Addr::from(gw),
                        block_size: bs,
                        exclude: vec![],
                        state: PoolState::Active,
                    },
                )
                .ok()
            },
        )
    }

    proptest! {
        #[test]
        fn blocks_tile_the_pool(p in arb_pool()) {
            let mut expect = u32::from(p.cidr().network());
            for b in p.blocks() {
                prop_assert_eq!(u32::from(b.start), expect);
                prop_assert_eq!(u32::from(b.start) % b.size, 0, "aligned");
                prop_assert_eq!(p.block_of(b.start), Some(b));
                prop_assert_eq!(p.block_by_id(&b.id()), Some(b));
                expect = expect.wrapping_add(b.size);
            }
            prop_assert_eq!(u64::from(p.block_count()) * u64::from(p.block_size()),
                            1u64 << (32 - p.prefix()));
        }

        #[test]
        fn ordinals_round_trip(p in arb_pool(), off in any::<u32>()) {
            let size = 1u64 << (32 - p.prefix());
            let ip = Ipv4Addr::from(u32::from(p.cidr().network()) + (u64::from(off) % size) as u32);
            let b = p.block_of(ip).unwrap();
            let o = b.ordinal_of(ip).unwrap();
            prop_assert_eq!(b.addr(o), Some(ip));
        }

        #[test]
        fn never_allocates_reserved(p in arb_pool()) {
            let gw = p.gateway();
            let net = p.cidr().network();
            let bc = p.cidr().broadcast();
            let mut n = 0u64;
            for b in p.blocks().take(64) {
                for o in p.allocatable_ordinals(b) {
                    let ip = b.addr(o).unwrap();
                    prop_assert!(ip != gw && ip != net && ip != bc);
                    n += 1;
                }
            }
            if p.block_count() <= 64 {
                prop_assert_eq!(n, p.capacity());
                prop_assert_eq!(n, (1u64 << (32 - p.prefix())) - 3);
            }
        }

        #[test]
        fn block_id_order_is_numeric(a in any::<u32>(), b in any::<u32>()) {
            let (ia, ib) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            prop_assert_eq!(block_id(ia).cmp(&block_id(ib)), a.cmp(&b));
            prop_assert_eq!(parse_block_id(&block_id(ia)), Some(ia));
        }
    }
}
