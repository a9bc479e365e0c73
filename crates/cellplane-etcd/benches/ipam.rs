//! IPAM benchmark against a real etcd (data dir on tmpfs when /dev/shm exists, so the figures
//! are cellplane + etcd, not the disk's fsync). Writes `target/bench/ipam.json`.
//!
//! - single node, sequential: each allocation under the host lock, as the CNI plugin does;
//! - 8 nodes concurrently, each node's allocations serialised by its own host lock.

use std::time::{Duration, Instant};

use cellplane_core::{PodRef, PoolSpec, PoolState};
use cellplane_etcd::{AllocRequest, Etcd, EtcdConfig, HostLock, Ipam, IpamOptions};
use cellplane_testkit::bench::{percentile, write_report};
use cellplane_testkit::etcd::EtcdServer;

const SEQ: usize = 500;
const NODES: usize = 8;
const PER_NODE: usize = 64;

fn req(cid: String, node: &str) -> AllocRequest {
    AllocRequest {
        container_id: cid,
        ifname: "eth0".into(),
        node: node.into(),
        pools: vec!["bench".into()],
        pod: PodRef::default(),
        netns: None,
        ip: None,
    }
}

/// A percentile in ms, rounded to the microsecond.
fn pct(v: &[f64], p: f64) -> f64 {
    (percentile(v, p) * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn fresh(server: &EtcdServer, tag: &str) -> Ipam {
    let etcd = Etcd::connect(&EtcdConfig {
        endpoints: vec![server.endpoint()],
        prefix: format!("/bench-{tag}"),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    let ipam = Ipam::new(etcd, IpamOptions::default());
    ipam.add_pool(
        "bench",
        PoolSpec {
            cidr: "10.200.0.0/20".parse().unwrap(),
            vlan: 200,
            gateway: "10.200.0.1".parse().unwrap(),
            block_size: 16,
            exclude: vec![],
            state: PoolState::Active,
        },
    )
    .await
    .unwrap();
    ipam
}

fn locked<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> T {
    let _lock = HostLock::acquire(path, Duration::from_secs(30)).unwrap();
    f()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();

    // single node, sequential
    let ipam = fresh(&server, "seq").await;
    let lock = dir.path().join("seq.lock");
    let mut alloc = Vec::with_capacity(SEQ);
    let start = Instant::now();
    for i in 0..SEQ {
        let t = Instant::now();
        let l = HostLock::acquire(&lock, Duration::from_secs(30)).unwrap();
        ipam.allocate(&req(format!("c{i}"), "node0")).await.unwrap();
        drop(l);
        alloc.push(ms(t.elapsed()));
    }
    let seq_rate = SEQ as f64 / start.elapsed().as_secs_f64();
    let mut release = Vec::with_capacity(SEQ);
    for i in 0..SEQ {
        let t = Instant::now();
        locked(&lock, || ());
        ipam.release(&format!("c{i}"), "eth0").await.unwrap();
        release.push(ms(t.elapsed()));
    }

    // 8 nodes at once
    let ipam = fresh(&server, "conc").await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..NODES)
        .map(|n| {
            let ipam = ipam.clone();
            let lock = dir.path().join(format!("n{n}.lock"));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in 0..PER_NODE {
                    let t = Instant::now();
                    let l = HostLock::acquire(&lock, Duration::from_secs(30)).unwrap();
                    ipam.allocate(&req(format!("n{n}c{i}"), &format!("node{n}")))
                        .await
                        .unwrap();
                    drop(l);
                    lat.push(ms(t.elapsed()));
                }
                lat
            })
        })
        .collect();
    let mut conc = Vec::new();
    for t in tasks {
        conc.extend(t.await.unwrap());
    }
    let conc_rate = (NODES * PER_NODE) as f64 / start.elapsed().as_secs_f64();

    let single = serde_json::json!({
        "allocs_per_sec": seq_rate.round(),
        "alloc_p50_ms": pct(&alloc, 0.50),
        "alloc_p99_ms": pct(&alloc, 0.99),
        "release_p50_ms": pct(&release, 0.50),
        "release_p99_ms": pct(&release, 0.99),
        "n": SEQ,
    });
    let eight = serde_json::json!({
        "allocs_per_sec": conc_rate.round(),
        "alloc_p50_ms": pct(&conc, 0.50),
        "alloc_p99_ms": pct(&conc, 0.99),
        "n": NODES * PER_NODE,
    });
    let out = serde_json::json!({
        "allocs_per_sec": single["allocs_per_sec"],
        "alloc_p50_ms": single["alloc_p50_ms"],
        "alloc_p99_ms": single["alloc_p99_ms"],
        "release_p50_ms": single["release_p50_ms"],
        "single_node_sequential": single,
        "eight_nodes_concurrent": eight,
        "etcd": "3.4, single member on loopback, data dir on tmpfs",
    });
    write_report("ipam", &out);
}
