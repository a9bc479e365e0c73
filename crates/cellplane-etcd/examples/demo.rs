//! The IPAM part of the demo cell: adds a pool, allocates addresses for simulated pods on two
//! simulated nodes, and prints usage. Run by `make demo` (scripts/demo.sh) against its etcd.
//!
//! usage: demo ETCD_ENDPOINT [PREFIX]

use cellplane_core::{PodRef, PoolSpec, PoolState};
use cellplane_etcd::{AllocRequest, Etcd, EtcdConfig, Ipam, IpamOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: demo ETCD_ENDPOINT [PREFIX]"))?;
    let prefix = args.next().unwrap_or_else(|| "/cellplane-demo".into());
    let etcd = Etcd::connect(&EtcdConfig {
        endpoints: vec![endpoint.clone()],
        prefix,
        ..EtcdConfig::default()
    })
    .await?;
    let ipam = Ipam::new(etcd, IpamOptions::default());

    println!(
        "==> adding pool vlan100: 10.20.0.0/22 on VLAN 100, gateway 10.20.0.1 (etcd {endpoint})"
    );
    let spec = PoolSpec {
        cidr: "10.20.0.0/22".parse()?,
        vlan: 100,
        gateway: "10.20.0.1".parse()?,
        block_size: 16,
        exclude: vec!["10.20.3.240/28".parse()?],
        state: PoolState::Active,
    };
    match ipam.add_pool("vlan100", spec).await {
        Ok(p) => println!("    {} addresses can be handed out", p.capacity()),
        Err(e) => println!("    not added: {e}"),
    }
    for (node, pods) in [("node-a", 20), ("node-b", 5)] {
        println!("==> {node}: starting {pods} simulated pods");
        for i in 0..pods {
            let a = ipam
                .allocate(&AllocRequest {
                    container_id: format!("{node}-pod{i}"),
                    ifname: "eth0".into(),
                    node: node.into(),
                    pools: vec!["vlan100".into()],
                    pod: PodRef {
                        namespace: Some("demo".into()),
                        name: Some(format!("web-{node}-{i}")),
                        uid: None,
                    },
                    netns: None,
                    ip: None,
                })
                .await?;
            if i < 3 || i == pods - 1 {
                println!(
                    "    pod {i:>2} -> {}/{} (block {}, vlan {})",
                    a.ip, a.prefix_len, a.block, a.vlan
                );
            } else if i == 3 {
                println!("    ...");
            }
        }
    }
    println!("==> node-a: deleting pod 0 (its address cools down before reuse)");
    ipam.release("node-a-pod0", "eth0").await?;

    let u = ipam.usage().await?;
    println!("==> usage per pool");
    println!(
        "    {:<10} {:<15} {:>5} {:>9} {:>7} {:>6} {:>6}",
        "POOL", "CIDR", "VLAN", "ALLOCATED", "COOLING", "FREE", "BLOCKS"
    );
    for p in &u.pools {
        println!(
            "    {:<10} {:<15} {:>5} {:>9} {:>7} {:>6} {:>3}/{}",
            p.pool,
            p.cidr,
            p.vlan,
            p.counts.allocated,
            p.counts.cooling,
            p.counts.free,
            p.blocks_claimed,
            p.blocks_total
        );
    }
    println!("==> usage per block");
    println!(
        "    {:<16} {:<8} {:>9} {:>7} {:>5}",
        "BLOCK", "NODE", "ALLOCATED", "COOLING", "FREE"
    );
    for b in &u.blocks {
        println!(
            "    {:<16} {:<8} {:>9} {:>7} {:>5}",
            b.cidr, b.node, b.counts.allocated, b.counts.cooling, b.counts.free
        );
    }
    Ok(())
}
