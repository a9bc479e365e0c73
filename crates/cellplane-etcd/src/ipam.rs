//! IPAM over etcd, implementing ARCHITECTURE.md's invariants:
//!
//! 1. every write is a transaction that compares what it read (`version == 0` for claims and
//!    handles, `mod_revision == seen` for blocks); a lost race is retried a bounded number of
//!    times, never overwritten;
//! 2. an allocation and its handle are written in one transaction, and so are a block claim and
//!    its affinity index;
//! 3. (the host lock lives in [`crate::lock`]; callers hold it around `allocate`);
//! 4. allocate is idempotent per `(container_id, ifname)` through the handle; release is
//!    idempotent;
//! 5. address choice: a free address in this node's blocks (never-released, then
//!    oldest-released past the cooldown), else the lowest free block of the first pool with
//!    room, else an address still cooling down in this node's blocks, else (if allowed) a free
//!    address borrowed from another node's block, else "pool exhausted" naming the pools;
//! 6. a guarded release only succeeds while the block's `mod_revision` is the one seen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use cellplane_core::pool::parse_block_id;
use cellplane_core::validation::{validate_container_id, validate_ifname, validate_name};
use cellplane_core::{
    Allocation, BlockRecord, BlockRef, CoreError, HandleRecord, PodRef, Pool, PoolSpec, PoolState,
};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, instrument};

use crate::client::{guard, to_json, Etcd, Kv};
use crate::error::EtcdError;
use crate::now_ms;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("pool exhausted: no free address in {}", pools.join(", "))]
    Exhausted { pools: Vec<String> },
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name}: {reason}")]
    Conflict {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("address {ip} is already allocated to {owner}")]
    AddressInUse { ip: Ipv4Addr, owner: String },
    #[error(transparent)]
    Invalid(#[from] CoreError),
    #[error("gave up after {attempts} attempts: {what} kept changing under us")]
    Contention { what: String, attempts: u32 },
}

impl IpamError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, IpamError::Etcd(e) if e.is_unavailable())
    }
}

type Result<T, E = IpamError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// A released address is not handed out again for this long while others are free.
    pub cooldown: Duration,
    /// Attempts at a transaction that lost a race before giving up.
    pub max_attempts: u32,
    /// When every block is claimed, hand out a free address from another node's block.
    pub borrow: bool,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            cooldown: Duration::from_secs(60),
            max_attempts: 32,
            borrow: true,
        }
    }
}

/// What to allocate, for whom.
#[derive(Debug, Clone, Default)]
pub struct AllocRequest {
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    /// Pools in order of preference; empty means every active pool, by name.
    pub pools: Vec<String>,
    pub pod: PodRef,
    pub netns: Option<String>,
    /// A specific address (static request); it must be free and in one of `pools`.
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocated {
    pub pool: String,
    pub block: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub vlan: u16,
    /// The attachment already had this address (a repeated ADD).
    pub existing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub pool: String,
    pub block: String,
    pub ip: Ipv4Addr,
}

/// A block as read, with the revision a guarded write must compare against.
#[derive(Debug, Clone, Serialize)]
pub struct BlockState {
    pub pool: String,
    pub id: String,
    pub record: BlockRecord,
    pub mod_revision: i64,
}

/// Release of one allocation, valid only while its block is unchanged since `seen_mod_revision`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GuardedRelease {
    pub pool: String,
    pub block: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    pub seen_mod_revision: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub pools: Vec<PoolUsage>,
    pub nodes: Vec<NodeUsage>,
    pub blocks: Vec<BlockUsage>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Addresses that may ever be handed out (network, gateway, broadcast, excluded left out).
    pub capacity: u64,
    pub allocated: u64,
    /// Released recently; not handed out again before the cooldown while others are free.
    pub cooling: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolUsage {
    pub pool: String,
    pub cidr: String,
    pub vlan: u16,
    pub state: PoolState,
    pub blocks_total: u32,
    pub blocks_claimed: u32,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    pub node: String,
    pub pool: String,
    pub blocks: u32,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockUsage {
    pub pool: String,
    pub block: String,
    pub cidr: String,
    pub node: String,
    pub mod_revision: i64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// IPAM operations over one etcd (under its key prefix).
#[derive(Debug, Clone)]
pub struct Ipam {
    etcd: Etcd,
    opts: IpamOptions,
}

/// Where a new allocation goes.
enum Plan {
    /// An ordinal in an existing block, guarded by the block's revision.
    Existing { block: BlockState, ordinal: u32 },
    /// A block nobody has claimed yet, claimed by this node together with the allocation.
    Claim {
        pool: String,
        pool_mod_revision: i64,
        block: BlockRef,
        ordinal: u32,
    },
}

struct PoolRead {
    pool: Pool,
    mod_revision: i64,
}

impl Ipam {
    pub fn new(etcd: Etcd, opts: IpamOptions) -> Ipam {
        Ipam { etcd, opts }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn options(&self) -> &IpamOptions {
        &self.opts
    }

    // ------------------------------------------------------------------ pools

    /// Adds a pool online. Refuses an invalid spec, a name in use, or an overlap with any
    /// existing pool (checked against the pools as read, in the same transaction).
    pub async fn add_pool(&self, name: &str, spec: PoolSpec) -> Result<Pool> {
        let pool = Pool::new(name, spec)?;
        let keys = self.etcd.keys();
        for _ in 0..self.opts.max_attempts {
            let (kvs, rev) = self.etcd.list(&keys.pools()).await?;
            let existing = decode_pools(keys, &kvs)?;
            if existing.iter().any(|p| p.pool.name() == name) {
                return Err(IpamError::Conflict {
                    what: "pool",
                    name: name.into(),
                    reason: "already exists".into(),
                });
            }
            pool.check_no_overlap(existing.iter().map(|p| &p.pool))?;
            let pools_prefix = keys.pools();
            // Nothing under the pools prefix changed since the read (no key modified or
            // created after `rev`), and the new key is absent.
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(pools_prefix.as_str(), CompareOp::Less, rev + 1)
                        .with_prefix(),
                    Compare::version(keys.pool(name), CompareOp::Equal, 0),
                ])
                .and_then([TxnOp::put(keys.pool(name), to_json(pool.spec()), None)]);
            if self.etcd.txn(txn).await?.succeeded() {
                info!(pool = name, cidr = %pool.cidr(), vlan = pool.vlan(), "pool added");
                return Ok(pool);
            }
        }
        Err(IpamError::Contention {
            what: "the pool list".into(),
            attempts: self.opts.max_attempts,
        })
    }

    pub async fn get_pool(&self, name: &str) -> Result<Pool> {
        Ok(self.read_pool(name).await?.pool)
    }

    async fn read_pool(&self, name: &str) -> Result<PoolRead> {
        validate_name("pool name", name)?;
        let key = self.etcd.keys().pool(name);
        match self.etcd.get(&key).await? {
            None => Err(IpamError::NotFound {
                what: "pool",
                name: name.into(),
            }),
            Some(kv) => decode_pool(name, &kv),
        }
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>> {
        let keys = self.etcd.keys();
        let (kvs, _) = self.etcd.list(&keys.pools()).await?;
        Ok(decode_pools(keys, &kvs)?
            .into_iter()
            .map(|p| p.pool)
            .collect())
    }

    /// Sets a pool active or draining (draining: no new addresses from it).
    pub async fn set_pool_state(&self, name: &str, state: PoolState) -> Result<Pool> {
        for _ in 0..self.opts.max_attempts {
            let read = self.read_pool(name).await?;
            let mut spec = read.pool.spec().clone();
            if spec.state == state {
                return Ok(read.pool);
            }
            spec.state = state;
            let key = self.etcd.keys().pool(name);
            if self
                .etcd
                .cas(&key, read.mod_revision, to_json(&spec))
                .await?
            {
                info!(pool = name, %state, "pool state changed");
                return Pool::new(name, spec).map_err(Into::into);
            }
        }
        Err(IpamError::Contention {
            what: format!("pool {name}"),
            attempts: self.opts.max_attempts,
        })
    }

    /// Removes a pool with no allocated address: drains it first (no new claims), then deletes
    /// its empty blocks (each guarded by its revision) and finally the pool.
    pub async fn remove_pool(&self, name: &str) -> Result<()> {
        self.set_pool_state(name, PoolState::Draining).await?;
        let keys = self.etcd.keys();
        let blocks = self.blocks(Some(name)).await?;
        let allocated: usize = blocks.iter().map(|b| b.record.allocations.len()).sum();
        if allocated > 0 {
            return Err(IpamError::Conflict {
                what: "pool",
                name: name.into(),
                reason: format!(
                    "{allocated} addresses are still allocated; it is left draining (release them, then remove it)"
                ),
            });
        }
        // etcd allows 128 operations per transaction by default: two per block.
        for chunk in blocks.chunks(60) {
            let mut cmp = Vec::new();
            let mut ops = Vec::new();
            for b in chunk {
                let key = keys.block(name, &b.id);
                cmp.push(guard(&key, b.mod_revision));
                ops.push(TxnOp::delete(key, None));
                ops.push(TxnOp::delete(
                    keys.affinity(&b.record.node, name, &b.id),
                    None,
                ));
            }
            if !self
                .etcd
                .txn(Txn::new().when(cmp).and_then(ops))
                .await?
                .succeeded()
            {
                return Err(IpamError::Conflict {
                    what: "pool",
                    name: name.into(),
                    reason: "a block changed while it was being removed; run it again".into(),
                });
            }
        }
        let read = self.read_pool(name).await?;
        if !self
            .etcd
            .delete_if(&keys.pool(name), read.mod_revision)
            .await?
        {
            return Err(IpamError::Conflict {
                what: "pool",
                name: name.into(),
                reason: "changed while it was being removed; run it again".into(),
            });
        }
        info!(pool = name, "pool removed");
        Ok(())
    }

    // ------------------------------------------------------------------ reads

    /// Blocks of one pool, or of all pools, in key order.
    pub async fn blocks(&self, pool: Option<&str>) -> Result<Vec<BlockState>> {
        let keys = self.etcd.keys();
        let prefix = match pool {
            Some(p) => {
                validate_name("pool name", p)?;
                keys.blocks(p)
            }
            None => keys.all_blocks(),
        };
        let (kvs, _) = self.etcd.list(&prefix).await?;
        kvs.iter().map(|kv| decode_block(keys, kv)).collect()
    }

    pub async fn get_block(&self, pool: &str, id: &str) -> Result<Option<BlockState>> {
        let keys = self.etcd.keys();
        match self.etcd.get(&keys.block(pool, id)).await? {
            None => Ok(None),
            Some(kv) => decode_block(keys, &kv).map(Some),
        }
    }

    pub async fn get_handle(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<HandleRecord>> {
        let key = self.etcd.keys().handle(container_id, ifname);
        Ok(self.etcd.get_json(&key).await?.map(|(h, _)| h))
    }

    /// Every handle, keyed by `(container_id, ifname)`.
    pub async fn handles(&self) -> Result<Handles> {
        let keys = self.etcd.keys();
        let (kvs, _) = self.etcd.list(&keys.handles()).await?;
        decode_handles(keys, kvs)
    }

    /// Every block and every handle, read concurrently at one revision (a consistent view
    /// for leak checks); returns that revision too.
    pub async fn snapshot(&self) -> Result<(Vec<BlockState>, Handles, i64)> {
        let keys = self.etcd.keys();
        let rev = self.etcd.revision().await?;
        let (blocks_prefix, handles_prefix) = (keys.all_blocks(), keys.handles());
        let (blocks, handles) = tokio::try_join!(
            self.etcd.list_at(&blocks_prefix, rev),
            self.etcd.list_at(&handles_prefix, rev)
        )?;
        let blocks = blocks
            .0
            .iter()
            .map(|kv| decode_block(keys, kv))
            .collect::<Result<Vec<_>>>()?;
        Ok((blocks, decode_handles(keys, handles.0)?, rev))
    }

    /// Usage per pool, per node (and pool) and per block.
    pub async fn usage(&self) -> Result<Usage> {
        let pools = self.list_pools().await?;
        let blocks = self.blocks(None).await?;
        let cutoff = now_ms().saturating_sub(self.opts.cooldown.as_millis() as u64);
        let mut usage = Usage::default();
        let mut per_node: BTreeMap<(String, String), (u32, Counts)> = BTreeMap::new();
        for pool in &pools {
            let mut pc = Counts {
                capacity: pool.capacity(),
                ..Counts::default()
            };
            let mut claimed = 0;
            for b in blocks.iter().filter(|b| b.pool == pool.name()) {
                let Some(bref) = pool.block_by_id(&b.id) else {
                    continue;
                };
                claimed += 1;
                let c = block_counts(pool, bref, &b.record, cutoff);
                pc.allocated += c.allocated;
                pc.cooling += c.cooling;
                let n = per_node
                    .entry((b.record.node.clone(), pool.name().to_string()))
                    .or_default();
                n.0 += 1;
                add_counts(&mut n.1, &c);
                usage.blocks.push(BlockUsage {
                    pool: pool.name().into(),
                    block: b.id.clone(),
                    cidr: b.record.cidr.to_string(),
                    node: b.record.node.clone(),
                    mod_revision: b.mod_revision,
                    counts: c,
                });
            }
            pc.free = pc.capacity - pc.allocated - pc.cooling;
            usage.pools.push(PoolUsage {
                pool: pool.name().into(),
                cidr: pool.cidr().to_string(),
                vlan: pool.vlan(),
                state: pool.state(),
                blocks_total: pool.block_count(),
                blocks_claimed: claimed,
                counts: pc,
            });
        }
        usage.nodes = per_node
            .into_iter()
            .map(|((node, pool), (blocks, counts))| NodeUsage {
                node,
                pool,
                blocks,
                counts,
            })
            .collect();
        Ok(usage)
    }

    /// Which of `pools` (every pool when empty), in order, can still hand out an address:
    /// the first active one with an unclaimed block (counted from the block keys alone) or,
    /// when every block is claimed, with an address not allocated in one of them (cooling
    /// down counts: it is handed out when nothing else is left). `Ok(None)` when none has room;
    /// a named pool that does not exist is `NotFound`. Reads far less than [`Ipam::usage`]:
    /// STATUS asks this on every node, often.
    pub async fn pool_with_room(&self, pools: &[String]) -> Result<Option<String>> {
        let candidates: Vec<Pool> = if pools.is_empty() {
            self.list_pools().await?
        } else {
            let mut v = Vec::with_capacity(pools.len());
            for name in pools {
                v.push(self.get_pool(name).await?);
            }
            v
        };
        let keys = self.etcd.keys();
        for pool in candidates.iter().filter(|p| p.state() == PoolState::Active) {
            let (claimed, _) = self.etcd.list_keys(&keys.blocks(pool.name())).await?;
            if (claimed.len() as u64) < u64::from(pool.block_count()) {
                return Ok(Some(pool.name().to_string()));
            }
            for b in self.blocks(Some(pool.name())).await? {
                let Some(bref) = pool.block_by_id(&b.id) else {
                    continue;
                };
                if pool
                    .allocatable_ordinals(bref)
                    .any(|o| !b.record.allocations.contains_key(&o))
                {
                    return Ok(Some(pool.name().to_string()));
                }
            }
        }
        Ok(None)
    }

    // ------------------------------------------------------------------ allocate

    /// Allocates an address for `(container_id, ifname)` on `node`. Idempotent: a repeated
    /// request returns the address the attachment already has.
    #[instrument(skip(self, req), fields(container_id = %req.container_id, ifname = %req.ifname, node = %req.node))]
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocated> {
        validate_container_id(&req.container_id)?;
        validate_ifname(&req.ifname)?;
        validate_name("node name", &req.node)?;
        for p in &req.pools {
            validate_name("pool name", p)?;
        }
        let keys = self.etcd.keys();
        let handle_key = keys.handle(&req.container_id, &req.ifname);
        for attempt in 0..self.opts.max_attempts {
            // One round trip: the handle, every pool, and this node's affinity index.
            let txn = Txn::new().and_then([
                TxnOp::get(handle_key.as_str(), None),
                TxnOp::get(keys.pools(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(
                    keys.node(&req.node),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            ]);
            let resp = self.etcd.txn(txn).await?;
            let mut ranges = resp.op_responses().into_iter().map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().iter().map(Kv::from).collect::<Vec<_>>(),
                _ => Vec::new(),
            });
            let handle = ranges.next().unwrap_or_default();
            let pool_kvs = ranges.next().unwrap_or_default();
            let affinity = ranges.next().unwrap_or_default();

            let all_pools = decode_pools(keys, &pool_kvs)?;
            if let Some(kv) = handle.first() {
                match self.existing(req, kv, &all_pools).await? {
                    Some(a) => return Ok(a),
                    None => continue, // a stale handle was removed; read again
                }
            }
            let pools = self.candidate_pools(req, all_pools)?;
            let plan = match req.ip {
                Some(ip) => self.plan_static(req, &pools, ip).await?,
                None => self.plan(req, &pools, &affinity).await?,
            };
            let (pool_name, ip, written) = self.write_allocation(req, plan).await?;
            if let Some(block) = written {
                let pool = &pools
                    .iter()
                    .find(|p| p.pool.name() == pool_name)
                    .expect("planned pool is a candidate")
                    .pool;
                debug!(%ip, pool = %pool_name, attempt, "allocated");
                return Ok(Allocated {
                    pool: pool_name,
                    block,
                    ip,
                    prefix_len: pool.prefix(),
                    gateway: pool.gateway(),
                    vlan: pool.vlan(),
                    existing: false,
                });
            }
            debug!(attempt, "allocation lost a race; retrying");
        }
        Err(IpamError::Contention {
            what: "the blocks".into(),
            attempts: self.opts.max_attempts,
        })
    }

    /// The allocation a handle points at, if it is really there; a handle whose block does not
    /// hold it (possible only after manual edits) is removed and `None` returned.
    async fn existing(
        &self,
        req: &AllocRequest,
        handle_kv: &Kv,
        pools: &[PoolRead],
    ) -> Result<Option<Allocated>> {
        let h: HandleRecord = handle_kv.json()?;
        let block = self.get_block(&h.pool, &h.block).await?;
        let owned = block.as_ref().and_then(|b| {
            let o = b.record.ordinal_of(h.ip)?;
            b.record
                .allocations
                .get(&o)?
                .is_for(&req.container_id, &req.ifname)
                .then_some(())
        });
        let pool = pools.iter().find(|p| p.pool.name() == h.pool);
        match (owned, pool) {
            (Some(()), Some(p)) => Ok(Some(Allocated {
                pool: h.pool,
                block: h.block,
                ip: h.ip,
                prefix_len: p.pool.prefix(),
                gateway: p.pool.gateway(),
                vlan: p.pool.vlan(),
                existing: true,
            })),
            _ => {
                tracing::warn!(key = %handle_kv.key, ip = %h.ip, "handle without its allocation; removing it");
                self.etcd
                    .delete_if(&handle_kv.key, handle_kv.mod_revision)
                    .await?;
                Ok(None)
            }
        }
    }

    fn candidate_pools(&self, req: &AllocRequest, all: Vec<PoolRead>) -> Result<Vec<PoolRead>> {
        let mut by_name: BTreeMap<String, PoolRead> = all
            .into_iter()
            .map(|p| (p.pool.name().to_string(), p))
            .collect();
        let ordered: Vec<PoolRead> = if req.pools.is_empty() {
            by_name.into_values().collect()
        } else {
            let mut out = Vec::new();
            for name in &req.pools {
                match by_name.remove(name) {
                    Some(p) => out.push(p),
                    None => {
                        return Err(IpamError::NotFound {
                            what: "pool",
                            name: name.clone(),
                        })
                    }
                }
            }
            out
        };
        let names: Vec<String> = ordered.iter().map(|p| p.pool.name().to_string()).collect();
        let active: Vec<PoolRead> = ordered
            .into_iter()
            .filter(|p| p.pool.state() == PoolState::Active)
            .collect();
        if active.is_empty() {
            return Err(IpamError::Exhausted {
                pools: if names.is_empty() {
                    vec!["(no pools are defined)".into()]
                } else {
                    names
                        .into_iter()
                        .map(|n| format!("{n} (draining)"))
                        .collect()
                },
            });
        }
        Ok(active)
    }

    async fn plan(&self, req: &AllocRequest, pools: &[PoolRead], affinity: &[Kv]) -> Result<Plan> {
        let keys = self.etcd.keys();
        let cutoff = now_ms().saturating_sub(self.opts.cooldown.as_millis() as u64);
        // This node's blocks in the candidate pools, in preference order.
        let mut mine: Vec<(usize, String)> = affinity
            .iter()
            .filter_map(|kv| keys.parse_affinity(&kv.key))
            .filter_map(|(_, pool, id)| {
                pools
                    .iter()
                    .position(|p| p.pool.name() == pool)
                    .map(|i| (i, id))
            })
            .collect();
        mine.sort();
        let mut own_blocks = Vec::new();
        if !mine.is_empty() {
            let txn = Txn::new().and_then(
                mine.iter()
                    .map(|(i, id)| TxnOp::get(keys.block(pools[*i].pool.name(), id), None))
                    .collect::<Vec<_>>(),
            );
            for r in self.etcd.txn(txn).await?.op_responses() {
                if let TxnOpResponse::Get(g) = r {
                    for kv in g.kvs() {
                        let b = decode_block(keys, &Kv::from(kv))?;
                        // An affinity whose block was re-claimed by another node is stale.
                        if b.record.node == req.node {
                            own_blocks.push(b);
                        }
                    }
                }
            }
        }
        // 1. a free, cooled-down address in one of this node's blocks
        for b in &own_blocks {
            let pool = &pool_of(pools, &b.pool).pool;
            if let Some(o) = pick_ordinal(pool, b, cutoff) {
                return Ok(Plan::Existing {
                    block: b.clone(),
                    ordinal: o,
                });
            }
        }
        // 2. the lowest unclaimed block of the first pool with one
        for p in pools {
            let (kvs, _) = self.etcd.list_keys(&keys.blocks(p.pool.name())).await?;
            let claimed: BTreeSet<String> = kvs
                .iter()
                .filter_map(|kv| keys.parse_block(&kv.key).map(|(_, id)| id))
                .collect();
            for block in p.pool.blocks() {
                if claimed.contains(&block.id()) {
                    continue;
                }
                if let Some(o) = p.pool.allocatable_ordinals(block).next() {
                    return Ok(Plan::Claim {
                        pool: p.pool.name().to_string(),
                        pool_mod_revision: p.mod_revision,
                        block,
                        ordinal: o,
                    });
                }
            }
        }
        // 3. an address still cooling down in this node's blocks, oldest released first
        let cooling = own_blocks
            .iter()
            .filter_map(|b| {
                let pool = &pool_of(pools, &b.pool).pool;
                pick_ordinal(pool, b, u64::MAX).map(|o| (b.record.released.get(&o), b, o))
            })
            .min_by_key(|(at, _, _)| at.copied().unwrap_or(0));
        if let Some((_, b, o)) = cooling {
            return Ok(Plan::Existing {
                block: b.clone(),
                ordinal: o,
            });
        }
        // 4. borrow from another node's block
        if self.opts.borrow {
            for p in pools {
                let others = self.blocks(Some(p.pool.name())).await?;
                for pass_cutoff in [cutoff, u64::MAX] {
                    for b in others.iter().filter(|b| b.record.node != req.node) {
                        if let Some(o) = pick_ordinal(&p.pool, b, pass_cutoff) {
                            return Ok(Plan::Existing {
                                block: b.clone(),
                                ordinal: o,
                            });
                        }
                    }
                }
            }
        }
        Err(IpamError::Exhausted {
            pools: pools.iter().map(|p| p.pool.name().to_string()).collect(),
        })
    }

    async fn plan_static(
        &self,
        req: &AllocRequest,
        pools: &[PoolRead],
        ip: Ipv4Addr,
    ) -> Result<Plan> {
        let Some(p) = pools.iter().find(|p| p.pool.contains(ip)) else {
            return Err(CoreError::invalid(
                "ip",
                ip,
                format!(
                    "is not in any active pool of {}",
                    pools
                        .iter()
                        .map(|p| p.pool.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .into());
        };
        if p.pool.is_reserved(ip) {
            return Err(CoreError::invalid(
                "ip",
                ip,
                "is the network, broadcast, gateway or an excluded address of its pool",
            )
            .into());
        }
        let block = p.pool.block_of(ip).expect("pool contains ip");
        let ordinal = block.ordinal_of(ip).expect("block contains ip");
        match self.get_block(p.pool.name(), &block.id()).await? {
            None => Ok(Plan::Claim {
                pool: p.pool.name().to_string(),
                pool_mod_revision: p.mod_revision,
                block,
                ordinal,
            }),
            Some(b) => match b.record.allocations.get(&ordinal) {
                Some(a) if !a.is_for(&req.container_id, &req.ifname) => {
                    Err(IpamError::AddressInUse {
                        ip,
                        owner: format!("{}/{} on {}", a.container_id, a.ifname, a.node),
                    })
                }
                _ => Ok(Plan::Existing { block: b, ordinal }),
            },
        }
    }

    /// Writes the planned allocation and its handle in one transaction. Returns the block id
    /// when it was written, `None` when the transaction lost a race.
    async fn write_allocation(
        &self,
        req: &AllocRequest,
        plan: Plan,
    ) -> Result<(String, Ipv4Addr, Option<String>)> {
        let keys = self.etcd.keys();
        let handle_key = keys.handle(&req.container_id, &req.ifname);
        let alloc = Allocation {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            node: req.node.clone(),
            pod_uid: req.pod.uid.clone(),
            pod: match (&req.pod.namespace, &req.pod.name) {
                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                (None, Some(n)) => Some(n.clone()),
                _ => None,
            },
            netns: req.netns.clone(),
            at: now_ms(),
        };
        match plan {
            Plan::Existing { block, ordinal } => {
                let mut rec = block.record.clone();
                let ip = rec.addr(ordinal);
                rec.released.remove(&ordinal);
                rec.allocations.insert(ordinal, alloc);
                let handle = HandleRecord {
                    pool: block.pool.clone(),
                    block: block.id.clone(),
                    ip,
                    node: req.node.clone(),
                };
                let bkey = keys.block(&block.pool, &block.id);
                let txn = Txn::new()
                    .when([
                        guard(&bkey, block.mod_revision),
                        Compare::version(handle_key.as_str(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(bkey.as_str(), to_json(&rec), None),
                        TxnOp::put(handle_key.as_str(), to_json(&handle), None),
                    ]);
                let ok = self.etcd.txn(txn).await?.succeeded();
                Ok((block.pool, ip, ok.then_some(block.id)))
            }
            Plan::Claim {
                pool: name,
                pool_mod_revision,
                block,
                ordinal,
            } => {
                let id = block.id();
                let ip = block.addr(ordinal).expect("ordinal inside block");
                let mut rec = BlockRecord::new(block.cidr(), &req.node, block.index);
                rec.allocations.insert(ordinal, alloc);
                let handle = HandleRecord {
                    pool: name.clone(),
                    block: id.clone(),
                    ip,
                    node: req.node.clone(),
                };
                let bkey = keys.block(&name, &id);
                let txn = Txn::new()
                    .when([
                        // the pool is unchanged (not drained or removed meanwhile)
                        guard(&keys.pool(&name), pool_mod_revision),
                        Compare::version(bkey.as_str(), CompareOp::Equal, 0),
                        Compare::version(handle_key.as_str(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(bkey.as_str(), to_json(&rec), None),
                        TxnOp::put(
                            keys.affinity(&req.node, &name, &id),
                            to_json(&block.index),
                            None,
                        ),
                        TxnOp::put(handle_key.as_str(), to_json(&handle), None),
                    ]);
                let ok = self.etcd.txn(txn).await?.succeeded();
                if ok {
                    info!(pool = %name, block = %block.cidr(), node = %req.node, "block claimed");
                }
                Ok((name, ip, ok.then_some(id)))
            }
        }
    }

    // ------------------------------------------------------------------ release

    /// Releases the address of `(container_id, ifname)`. `Ok(None)` when it held none:
    /// releasing twice succeeds.
    #[instrument(skip(self))]
    pub async fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Released>> {
        let keys = self.etcd.keys();
        let hkey = keys.handle(container_id, ifname);
        for _ in 0..self.opts.max_attempts {
            let Some((h, hkv)) = self.etcd.get_json::<HandleRecord>(&hkey).await? else {
                return Ok(None);
            };
            let bkey = keys.block(&h.pool, &h.block);
            let block = self.get_block(&h.pool, &h.block).await?;
            let ordinal = block.as_ref().and_then(|b| {
                let o = b.record.ordinal_of(h.ip)?;
                b.record
                    .allocations
                    .get(&o)?
                    .is_for(container_id, ifname)
                    .then_some(o)
            });
            let released = Released {
                pool: h.pool.clone(),
                block: h.block.clone(),
                ip: h.ip,
            };
            let txn = match (block, ordinal) {
                (Some(b), Some(o)) => {
                    let mut rec = b.record;
                    rec.allocations.remove(&o);
                    rec.released.insert(o, now_ms());
                    Txn::new()
                        .when([guard(&bkey, b.mod_revision), guard(&hkey, hkv.mod_revision)])
                        .and_then([
                            TxnOp::put(bkey.as_str(), to_json(&rec), None),
                            TxnOp::delete(hkey.as_str(), None),
                        ])
                }
                // the block does not hold it: only the handle is left to remove
                _ => Txn::new()
                    .when([guard(&hkey, hkv.mod_revision)])
                    .and_then([TxnOp::delete(hkey.as_str(), None)]),
            };
            if self.etcd.txn(txn).await?.succeeded() {
                debug!(ip = %h.ip, "released");
                return Ok(Some(released));
            }
        }
        Err(IpamError::Contention {
            what: format!("the block of {container_id}/{ifname}"),
            attempts: self.opts.max_attempts,
        })
    }

    /// Releases one allocation only if its block is exactly as seen (`mod_revision`) and the
    /// address still belongs to the same attachment. Refused with `Conflict` otherwise: the
    /// caller decides again from a fresh observation.
    #[instrument(skip(self))]
    pub async fn release_guarded(&self, g: &GuardedRelease) -> Result<Released> {
        let keys = self.etcd.keys();
        let name = format!("{} in block {}/{}", g.ip, g.pool, g.block);
        let Some(b) = self.get_block(&g.pool, &g.block).await? else {
            return Err(IpamError::NotFound {
                what: "block",
                name: format!("{}/{}", g.pool, g.block),
            });
        };
        let conflict = |reason: String| IpamError::Conflict {
            what: "address",
            name: name.clone(),
            reason,
        };
        if b.mod_revision != g.seen_mod_revision {
            return Err(conflict(format!(
                "not released: its block changed since it was checked (revision {} then, {} now)",
                g.seen_mod_revision, b.mod_revision
            )));
        }
        let o = b
            .record
            .ordinal_of(g.ip)
            .ok_or_else(|| conflict("is not in that block".into()))?;
        match b.record.allocations.get(&o) {
            Some(a) if a.is_for(&g.container_id, &g.ifname) => {}
            Some(a) => {
                return Err(conflict(format!(
                    "not released: it now belongs to {}/{}",
                    a.container_id, a.ifname
                )))
            }
            None => return Err(conflict("not released: it is not allocated".into())),
        }
        let hkey = keys.handle(&g.container_id, &g.ifname);
        let hkv = self.etcd.get(&hkey).await?;
        let mut rec = b.record;
        rec.allocations.remove(&o);
        rec.released.insert(o, now_ms());
        let bkey = keys.block(&g.pool, &g.block);
        let mut cmp = vec![guard(&bkey, g.seen_mod_revision)];
        let mut ops = vec![TxnOp::put(bkey.as_str(), to_json(&rec), None)];
        if let Some(hkv) = hkv {
            let h: HandleRecord = hkv.json()?;
            if h.ip == g.ip && h.pool == g.pool {
                cmp.push(guard(&hkey, hkv.mod_revision));
                ops.push(TxnOp::delete(hkey.as_str(), None));
            }
        }
        if !self
            .etcd
            .txn(Txn::new().when(cmp).and_then(ops))
            .await?
            .succeeded()
        {
            return Err(conflict(
                "not released: its block changed while releasing".into(),
            ));
        }
        info!(ip = %g.ip, pool = %g.pool, container_id = %g.container_id, ifname = %g.ifname, "guarded release");
        Ok(Released {
            pool: g.pool.clone(),
            block: g.block.clone(),
            ip: g.ip,
        })
    }
}

impl Ipam {
    /// Gives a node's empty block back to the pool: deletes the block and its affinity, only
    /// if the block is unchanged since `seen` and holds no allocation.
    pub async fn release_block(&self, block: &BlockState) -> Result<()> {
        let name = format!("{}/{}", block.pool, block.id);
        if !block.record.allocations.is_empty() {
            return Err(IpamError::Conflict {
                what: "block",
                name,
                reason: format!("still holds {} addresses", block.record.allocations.len()),
            });
        }
        let keys = self.etcd.keys();
        let bkey = keys.block(&block.pool, &block.id);
        let txn = Txn::new()
            .when([guard(&bkey, block.mod_revision)])
            .and_then([
                TxnOp::delete(bkey.as_str(), None),
                TxnOp::delete(
                    keys.affinity(&block.record.node, &block.pool, &block.id),
                    None,
                ),
            ]);
        if !self.etcd.txn(txn).await?.succeeded() {
            return Err(IpamError::Conflict {
                what: "block",
                name,
                reason: "changed since it was read".into(),
            });
        }
        info!(pool = %block.pool, block = %block.record.cidr, node = %block.record.node, "block released");
        Ok(())
    }
}

fn pool_of<'a>(pools: &'a [PoolRead], name: &str) -> &'a PoolRead {
    pools
        .iter()
        .find(|p| p.pool.name() == name)
        .expect("block of a candidate pool")
}

/// A free ordinal of `b` released no later than `cutoff` (never-released ones first, then the
/// longest released), or `None`.
fn pick_ordinal(pool: &Pool, b: &BlockState, cutoff: u64) -> Option<u32> {
    let bref = pool.block_by_id(&b.id)?;
    pool.allocatable_ordinals(bref)
        .filter(|o| !b.record.allocations.contains_key(o))
        .filter_map(|o| match b.record.released.get(&o) {
            None => Some((0, o)),
            Some(&at) if at <= cutoff => Some((at, o)),
            Some(_) => None,
        })
        .min()
        .map(|(_, o)| o)
}

fn block_counts(pool: &Pool, bref: BlockRef, rec: &BlockRecord, cutoff: u64) -> Counts {
    let mut c = Counts::default();
    for o in pool.allocatable_ordinals(bref) {
        c.capacity += 1;
        if rec.allocations.contains_key(&o) {
            c.allocated += 1;
        } else if rec.released.get(&o).is_some_and(|&at| at > cutoff) {
            c.cooling += 1;
        } else {
            c.free += 1;
        }
    }
    c
}

fn add_counts(a: &mut Counts, b: &Counts) {
    a.capacity += b.capacity;
    a.allocated += b.allocated;
    a.cooling += b.cooling;
    a.free += b.free;
}

fn decode_pool(name: &str, kv: &Kv) -> Result<PoolRead> {
    let spec: PoolSpec = kv.json()?;
    let pool = Pool::new(name, spec).map_err(|e| EtcdError::Decode {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(PoolRead {
        pool,
        mod_revision: kv.mod_revision,
    })
}

fn decode_pools(keys: &cellplane_core::Keys, kvs: &[Kv]) -> Result<Vec<PoolRead>> {
    kvs.iter()
        .map(|kv| {
            let name = kv.key.strip_prefix(&keys.pools()).unwrap_or(&kv.key);
            decode_pool(name, kv)
        })
        .collect()
}

type Handles = BTreeMap<(String, String), (HandleRecord, i64)>;

fn decode_handles(keys: &cellplane_core::Keys, kvs: Vec<Kv>) -> Result<Handles> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        let id = keys
            .parse_handle(&kv.key)
            .ok_or_else(|| EtcdError::Decode {
                key: kv.key.clone(),
                reason: "not a handle key".into(),
            })?;
        out.insert(id, (kv.json()?, kv.mod_revision));
    }
    Ok(out)
}

fn decode_block(keys: &cellplane_core::Keys, kv: &Kv) -> Result<BlockState> {
    let (pool, id) = keys.parse_block(&kv.key).ok_or_else(|| EtcdError::Decode {
        key: kv.key.clone(),
        reason: "not a block key".into(),
    })?;
    if parse_block_id(&id).is_none() {
        return Err(EtcdError::Decode {
            key: kv.key.clone(),
            reason: format!("block id {id:?} is not a zero-padded address"),
        }
        .into());
    }
    Ok(BlockState {
        pool,
        id,
        record: kv.json()?,
        mod_revision: kv.mod_revision,
    })
}
