use anyhow::Result;
use cellplane_core::{PoolSpec, PoolState};
use cellplane_etcd::Ipam;
use serde_json::json;

use crate::cli::PoolCmd;
use crate::config::Settings;
use crate::output::{print, Table};

pub async fn run(s: &Settings, ipam: &Ipam, cmd: PoolCmd) -> Result<u8> {
    match cmd {
        PoolCmd::Add {
            name,
            cidr,
            vlan,
            gateway,
            exclude,
            block_size,
        } => {
            let pool = ipam
                .add_pool(
                    &name,
                    PoolSpec {
                        cidr,
                        vlan,
                        gateway,
                        block_size,
                        exclude,
                        state: PoolState::Active,
                    },
                )
                .await?;
            println!(
                "pool {name} added: {} on VLAN {}, gateway {}, {} addresses in {} blocks of {}",
                pool.cidr(),
                pool.vlan(),
                pool.gateway(),
                pool.capacity(),
                pool.block_count(),
                pool.block_size()
            );
        }
        PoolCmd::List => {
            let usage = ipam.usage().await?;
            print(s.output, &usage.pools, || {
                let mut t = Table::new(&[
                    "POOL",
                    "CIDR",
                    "VLAN",
                    "STATE",
                    "ALLOCATED",
                    "COOLING",
                    "FREE",
                    "BLOCKS",
                ]);
                for p in &usage.pools {
                    t.row(vec![
                        p.pool.clone(),
                        p.cidr.clone(),
                        p.vlan.to_string(),
                        p.state.to_string(),
                        p.counts.allocated.to_string(),
                        p.counts.cooling.to_string(),
                        p.counts.free.to_string(),
                        format!("{}/{}", p.blocks_claimed, p.blocks_total),
                    ]);
                }
                t.render()
            })?;
        }
        PoolCmd::Show { name } => {
            let pool = ipam.get_pool(&name).await?;
            let usage = ipam.usage().await?;
            let pu = usage.pools.iter().find(|p| p.pool == name).cloned();
            let blocks: Vec<_> = usage
                .blocks
                .iter()
                .filter(|b| b.pool == name)
                .cloned()
                .collect();
            let v = json!({"pool": name, "spec": pool.spec(), "usage": pu, "blocks": blocks});
            print(s.output, &v, || {
                let sp = pool.spec();
                let mut out = format!(
                    "pool:      {name}\ncidr:      {}\nvlan:      {}\ngateway:   {}\nstate:     {}\nblock:     {} addresses\nexclude:   {}\n",
                    sp.cidr,
                    sp.vlan,
                    sp.gateway,
                    sp.state,
                    sp.block_size,
                    if sp.exclude.is_empty() { "-".into() } else { sp.exclude.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ") }
                );
                if let Some(u) = pu {
                    out += &format!(
                        "usage:     {} allocated, {} cooling, {} free of {}; {}/{} blocks claimed\n",
                        u.counts.allocated, u.counts.cooling, u.counts.free, u.counts.capacity, u.blocks_claimed, u.blocks_total
                    );
                }
                out
            })?;
        }
        PoolCmd::Drain { name } => {
            ipam.set_pool_state(&name, PoolState::Draining).await?;
            println!("pool {name} is draining: no new addresses are handed out from it");
        }
        PoolCmd::Activate { name } => {
            ipam.set_pool_state(&name, PoolState::Active).await?;
            println!("pool {name} is active");
        }
        PoolCmd::Remove { name } => {
            ipam.remove_pool(&name).await?;
            println!("pool {name} removed");
        }
    }
    Ok(0)
}
