use anyhow::Result;
use cellplane_etcd::Ipam;

use crate::config::Settings;
use crate::output::{print, Table};

/// Pools whose free addresses fall below this share get a warning.
const LOW_WATER: f64 = 0.10;

pub async fn run(
    s: &Settings,
    ipam: &Ipam,
    pool: Option<String>,
    node: Option<String>,
) -> Result<u8> {
    if let Some(p) = &pool {
        ipam.get_pool(p).await?; // unknown pool: a clear error
    }
    let mut u = ipam.usage().await?;
    if let Some(p) = &pool {
        u.pools.retain(|x| &x.pool == p);
        u.nodes.retain(|x| &x.pool == p);
        u.blocks.retain(|x| &x.pool == p);
    }
    if let Some(n) = &node {
        u.nodes.retain(|x| &x.node == n);
        u.blocks.retain(|x| &x.node == n);
    }
    let warnings: Vec<String> = u
        .pools
        .iter()
        .filter(|p| {
            p.counts.capacity > 0 && (p.counts.free as f64) < LOW_WATER * p.counts.capacity as f64
        })
        .map(|p| {
            format!(
                "pool {} is nearly exhausted: {} of {} addresses free{}",
                p.pool,
                p.counts.free,
                p.counts.capacity,
                if p.counts.cooling > 0 {
                    format!(" ({} more cooling down)", p.counts.cooling)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let v = serde_json::json!({"pools": u.pools, "nodes": u.nodes, "blocks": u.blocks, "warnings": warnings});
    print(s.output, &v, || {
        let mut t = Table::new(&[
            "POOL",
            "CIDR",
            "VLAN",
            "STATE",
            "CAPACITY",
            "ALLOCATED",
            "COOLING",
            "FREE",
            "BLOCKS",
        ]);
        for p in &u.pools {
            t.row(vec![
                p.pool.clone(),
                p.cidr.clone(),
                p.vlan.to_string(),
                p.state.to_string(),
                p.counts.capacity.to_string(),
                p.counts.allocated.to_string(),
                p.counts.cooling.to_string(),
                p.counts.free.to_string(),
                format!("{}/{}", p.blocks_claimed, p.blocks_total),
            ]);
        }
        let mut n = Table::new(&[
            "NODE",
            "POOL",
            "BLOCKS",
            "CAPACITY",
            "ALLOCATED",
            "COOLING",
            "FREE",
        ]);
        for x in &u.nodes {
            n.row(vec![
                x.node.clone(),
                x.pool.clone(),
                x.blocks.to_string(),
                x.counts.capacity.to_string(),
                x.counts.allocated.to_string(),
                x.counts.cooling.to_string(),
                x.counts.free.to_string(),
            ]);
        }
        let mut b = Table::new(&["BLOCK", "POOL", "NODE", "ALLOCATED", "COOLING", "FREE"]);
        for x in &u.blocks {
            b.row(vec![
                x.cidr.clone(),
                x.pool.clone(),
                x.node.clone(),
                x.counts.allocated.to_string(),
                x.counts.cooling.to_string(),
                x.counts.free.to_string(),
            ]);
        }
        let mut out = format!("{}\n{}\n{}", t.render(), n.render(), b.render());
        for w in &warnings {
            out += &format!("WARNING: {w}\n");
        }
        out
    })?;
    Ok(0)
}
