//! `cnictl check` over 64k allocations against 64k pods: the built binary, a real etcd
//! (seeded directly with 4000 full blocks and their handles) and the in-process Kubernetes API
//! server (64k pods listed in pages of 2000, as cnictl asks). 1% of the allocations are leaks.
//! Writes `target/bench/cnictl.json`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cellplane_core::{Allocation, BlockRecord, HandleRecord, PoolSpec, PoolState};
use cellplane_etcd::{Etcd, EtcdConfig, Ipam, IpamOptions};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::kube::{FakeKube, PodDef};
use etcd_client::{Txn, TxnOp};

const BLOCKS: u32 = 4000;
const PER_BLOCK: u32 = 16;
const RUNS: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = EtcdServer::start();
    let kube = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    kube.write_kubeconfig(dir.path());
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let prefix = "/bench";
    let etcd = Etcd::connect(&EtcdConfig {
        endpoints: vec![server.endpoint()],
        prefix: prefix.into(),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    let ipam = Ipam::new(etcd.clone(), IpamOptions::default());
    ipam.add_pool(
        "big",
        PoolSpec {
            cidr: "10.128.0.0/16".parse().unwrap(),
            vlan: 300,
            gateway: "10.128.255.254".parse().unwrap(),
            block_size: 16,
            exclude: vec![],
            state: PoolState::Active,
        },
    )
    .await
    .unwrap();
    let keys = etcd.keys().clone();
    let nodes = 200;
    let mut ops = Vec::new();
    let mut pods = Vec::new();
    let mut allocations = 0u32;
    for bi in 1..=BLOCKS {
        // block 0 holds the network address: start at 1 so every block is full
        let start = u32::from("10.128.0.0".parse::<std::net::Ipv4Addr>().unwrap()) + bi * PER_BLOCK;
        let cidr = ipnetwork::Ipv4Network::new(start.into(), 28).unwrap();
        let node = format!("node-{:03}", bi % nodes);
        let id = cellplane_core::pool::block_id(start.into());
        let mut rec = BlockRecord::new(cidr, &node, bi);
        for o in 0..PER_BLOCK {
            let n = bi * PER_BLOCK + o;
            let cid = format!("{n:064x}");
            let uid = format!("uid-{n}");
            rec.allocations.insert(
                o,
                Allocation {
                    container_id: cid.clone(),
                    ifname: "eth0".into(),
                    node: node.clone(),
                    pod_uid: Some(uid.clone()),
                    pod: Some(format!("ns-{}/pod-{n}", n % 50)),
                    netns: Some(format!("/var/run/netns/cni-{n:x}")),
                    at: 1,
                },
            );
            let h = HandleRecord {
                pool: "big".into(),
                block: id.clone(),
                ip: rec.addr(o),
                node: node.clone(),
            };
            ops.push(TxnOp::put(
                keys.handle(&cid, "eth0"),
                serde_json::to_vec(&h).unwrap(),
                None,
            ));
            if !n.is_multiple_of(100) {
                pods.push((n, node.clone()));
            }
            allocations += 1;
        }
        ops.push(TxnOp::put(
            keys.block("big", &id),
            serde_json::to_vec(&rec).unwrap(),
            None,
        ));
        ops.push(TxnOp::put(
            keys.affinity(&node, "big", &id),
            bi.to_string(),
            None,
        ));
        if ops.len() >= 100 {
            etcd.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .unwrap();
        }
    }
    if !ops.is_empty() {
        etcd.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    for i in 0..nodes {
        kube.add_node(&format!("node-{i:03}"));
    }
    let names: Vec<(String, String, String)> = pods
        .iter()
        .map(|(n, _)| {
            (
                format!("ns-{}", n % 50),
                format!("pod-{n}"),
                format!("uid-{n}"),
            )
        })
        .collect();
    for ((ns, name, uid), (_, node)) in names.iter().zip(&pods) {
        kube.add_pod(PodDef {
            namespace: ns,
            name,
            uid,
            node,
            phase: "Running",
            ip: None,
        });
    }
    let expected_leaks = allocations as usize - pods.len();
    eprintln!(
        "seeded {allocations} allocations, {} pods, {expected_leaks} leaks",
        pods.len()
    );

    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_cnictl"))
            .args(["check", "-o", "json"])
            .env("CELLPLANE_CNICTL_CONFIG", dir.path().join("none.toml"))
            .env("CELLPLANE_ETCD_ENDPOINTS", server.endpoint())
            .env("CELLPLANE_ETCD_PREFIX", prefix)
            .env("KUBECONFIG", dir.path().join("kubeconfig"))
            .env("CELLPLANE_CNICTL_STATE", dir.path().join("state.json"))
            .env("CELLPLANE_LOG", "info")
            .output()
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["findings"].as_array().unwrap().len(), expected_leaks);
        assert_eq!(v["allocations"].as_u64(), Some(allocations as u64));
        // where the time went, from cnictl's own "observed" log line

        if let Some(l) = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("observed"))
        {
            eprintln!("{ms:.0} ms: {l}");
        }
        times.push(ms);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[RUNS / 2];
    let out = serde_json::json!({
        "check_64k_ms": (median * 10.0).round() / 10.0,
        "check_64k_min_ms": (times[0] * 10.0).round() / 10.0,
        "runs": RUNS,
        "allocations": allocations,
        "pods": pods.len(),
        "leaks_found": expected_leaks,
        "what": "wall time of the cnictl binary: etcd read (paged), Kubernetes pods+nodes list (pages of 2000), both at once; analysis; JSON report",
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    std::fs::create_dir_all(target.join("bench")).unwrap();
    let text = serde_json::to_string_pretty(&out).unwrap();
    std::fs::write(target.join("bench/cnictl.json"), &text).unwrap();
    println!("{text}");
}
