//! IPAM against a real etcd (one etcd process per test, unique key prefix).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cellplane_core::{HandleRecord, PodRef, Pool, PoolSpec, PoolState};
use cellplane_etcd::{
    AllocRequest, Etcd, EtcdConfig, GuardedRelease, HostLock, Ipam, IpamError, IpamOptions,
};
use cellplane_testkit::etcd::EtcdServer;

fn spec(cidr: &str, vlan: u16, gw: &str, exclude: &[&str]) -> PoolSpec {
    PoolSpec {
        cidr: cidr.parse().unwrap(),
        vlan,
        gateway: gw.parse().unwrap(),
        block_size: 16,
        exclude: exclude.iter().map(|e| e.parse().unwrap()).collect(),
        state: PoolState::Active,
    }
}

async fn ipam(etcd: &EtcdServer, opts: IpamOptions) -> Ipam {
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        prefix: format!("/{}", cellplane_testkit::unique("t")),
        ..EtcdConfig::default()
    };
    Ipam::new(Etcd::connect(&cfg).await.unwrap(), opts)
}

fn req(cid: &str, node: &str, pools: &[&str]) -> AllocRequest {
    AllocRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: node.into(),
        pools: pools.iter().map(|s| s.to_string()).collect(),
        pod: PodRef {
            namespace: Some("default".into()),
            name: Some(format!("pod-{cid}")),
            uid: Some(format!("uid-{cid}")),
        },
        netns: Some(format!("/run/netns/{cid}")),
        ip: None,
    }
}

/// Reads everything back and checks the invariants: distinct addresses, one owner per block with
/// a matching affinity, handles and allocations in one-to-one correspondence, nothing reserved.
async fn check_invariants(ipam: &Ipam, pools: &[Pool]) -> usize {
    let etcd = ipam.etcd();
    let keys = etcd.keys();
    let blocks = ipam.blocks(None).await.unwrap();
    let handles = ipam.handles().await.unwrap();
    let (aff, _) = etcd.list(&keys.all_nodes()).await.unwrap();
    let affinity: BTreeSet<(String, String, String)> = aff
        .iter()
        .map(|kv| keys.parse_affinity(&kv.key).unwrap())
        .collect();
    let mut seen_ips = BTreeSet::new();
    let mut from_blocks = BTreeMap::new();
    for b in &blocks {
        let pool = pools.iter().find(|p| p.name() == b.pool).unwrap();
        let bref = pool
            .block_by_id(&b.id)
            .expect("block id is a block of its pool");
        assert_eq!(b.record.cidr, bref.cidr());
        let owners: Vec<_> = affinity
            .iter()
            .filter(|(_, p, id)| *p == b.pool && *id == b.id)
            .collect();
        assert_eq!(owners.len(), 1, "block {} has affinities {owners:?}", b.id);
        assert_eq!(
            owners[0].0, b.record.node,
            "affinity names the block's node"
        );
        for (o, a) in &b.record.allocations {
            let ip = b.record.addr(*o);
            assert!(!pool.is_reserved(ip), "reserved address {ip} allocated");
            assert!(seen_ips.insert(ip), "address {ip} allocated twice");
            from_blocks.insert(
                (a.container_id.clone(), a.ifname.clone()),
                (b.pool.clone(), b.id.clone(), ip),
            );
        }
    }
    assert_eq!(
        affinity.len(),
        blocks.len(),
        "an affinity without its block"
    );
    assert_eq!(
        handles.len(),
        from_blocks.len(),
        "handles and allocations differ in number"
    );
    for (id, (h, _)) in &handles {
        let (pool, block, ip) = from_blocks
            .get(id)
            .unwrap_or_else(|| panic!("handle {id:?} has no allocation"));
        assert_eq!(
            (&h.pool, &h.block, &h.ip),
            (pool, block, ip),
            "handle {id:?}"
        );
    }
    seen_ips.len()
}

async fn concurrency_round(round: usize) {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    let pool = ipam
        .add_pool(
            "vlan100",
            spec(
                "10.20.0.0/22",
                100,
                "10.20.0.1",
                &["10.20.1.0/28", "10.20.2.7/32"],
            ),
        )
        .await
        .unwrap();
    let locks = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let lock_path: PathBuf = locks.path().join(format!("node{n}.lock"));
        for i in 0..32 {
            let ipam = ipam.clone();
            let lock_path = lock_path.clone();
            tasks.push(tokio::spawn(async move {
                let node = format!("node{n}");
                // Like the CNI plugin: the host lock serialises a node's allocations.
                let lock = tokio::task::spawn_blocking(move || {
                    HostLock::acquire(&lock_path, Duration::from_secs(60))
                })
                .await
                .unwrap()
                .unwrap();
                let r = ipam
                    .allocate(&req(&format!("r{round}n{n}c{i}"), &node, &["vlan100"]))
                    .await;
                drop(lock);
                (node, r.unwrap())
            }));
        }
    }
    let mut by_ip = BTreeMap::new();
    for t in tasks {
        let (node, a) = t.await.unwrap();
        assert_eq!(
            (a.gateway, a.prefix_len, a.vlan),
            ("10.20.0.1".parse().unwrap(), 22, 100)
        );
        assert!(
            by_ip.insert(a.ip, node).is_none(),
            "{} handed out twice",
            a.ip
        );
    }
    assert_eq!(by_ip.len(), 256);
    assert_eq!(check_invariants(&ipam, &[pool]).await, 256);
    // Each node's addresses lie in blocks it owns (no borrowing was needed: 64 blocks).
    for b in ipam.blocks(Some("vlan100")).await.unwrap() {
        for a in b.record.allocations.values() {
            assert_eq!(a.node, b.record.node);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_8_nodes_x_32_five_times() {
    for round in 0..5 {
        concurrency_round(round).await;
    }
}

/// Without the host lock, the CAS transactions alone keep addresses distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_duplicates_without_host_lock() {
    let etcd = EtcdServer::start();
    let ipam = ipam(
        &etcd,
        IpamOptions {
            max_attempts: 500,
            ..IpamOptions::default()
        },
    )
    .await;
    let pool = ipam
        .add_pool("p", spec("10.30.0.0/24", 7, "10.30.0.254", &[]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let ipam = ipam.clone();
            tokio::spawn(async move {
                ipam.allocate(&req(&format!("c{i}"), &format!("n{}", i % 4), &[]))
                    .await
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.unwrap().unwrap().ip));
    }
    assert_eq!(check_invariants(&ipam, &[pool]).await, 64);
}

#[tokio::test]
async fn exhaustion_names_pools_and_a_new_pool_is_used() {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    // a /28: one block, 16 - network - broadcast - gateway = 13 addresses
    let small = ipam
        .add_pool("small", spec("10.40.0.0/28", 10, "10.40.0.1", &[]))
        .await
        .unwrap();
    assert_eq!(small.capacity(), 13);
    for i in 0..13 {
        ipam.allocate(&req(&format!("c{i}"), "n1", &["small"]))
            .await
            .unwrap();
    }
    let e = ipam
        .allocate(&req("c13", "n1", &["small"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IpamError::Exhausted { pools } if pools == &["small".to_string()]),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "pool exhausted: no free address in small");
    // a second pool added online is used next, when the request lists it
    let second = ipam
        .add_pool("second", spec("10.40.1.0/24", 11, "10.40.1.1", &[]))
        .await
        .unwrap();
    let a = ipam
        .allocate(&req("c13", "n1", &["small", "second"]))
        .await
        .unwrap();
    assert_eq!(a.pool, "second");
    assert_eq!(a.ip, "10.40.1.2".parse::<Ipv4Addr>().unwrap());
    // and with no pool list, every active pool is a candidate
    let b = ipam.allocate(&req("c14", "n1", &[])).await.unwrap();
    assert_eq!(b.pool, "second");
    check_invariants(&ipam, &[small, second]).await;

    // the room query STATUS uses agrees
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(ipam.pool_with_room(&names(&["small"])).await.unwrap(), None);
    assert_eq!(
        ipam.pool_with_room(&names(&["small", "second"]))
            .await
            .unwrap()
            .as_deref(),
        Some("second")
    );
    assert_eq!(
        ipam.pool_with_room(&[]).await.unwrap().as_deref(),
        Some("second")
    );
    assert!(matches!(
        ipam.pool_with_room(&names(&["nope"])).await,
        Err(IpamError::NotFound { .. })
    ));
    // an address released in the full pool (cooling down) is room again
    ipam.release("c0", "eth0").await.unwrap();
    assert_eq!(
        ipam.pool_with_room(&names(&["small"]))
            .await
            .unwrap()
            .as_deref(),
        Some("small")
    );
    ipam.set_pool_state("small", PoolState::Draining)
        .await
        .unwrap();
    assert_eq!(ipam.pool_with_room(&names(&["small"])).await.unwrap(), None);
}

#[tokio::test]
async fn allocation_is_idempotent_and_release_twice_succeeds() {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    let pool = ipam
        .add_pool("p", spec("10.50.0.0/24", 5, "10.50.0.1", &[]))
        .await
        .unwrap();
    let a = ipam.allocate(&req("c1", "n1", &["p"])).await.unwrap();
    assert!(!a.existing);
    let again = ipam.allocate(&req("c1", "n1", &["p"])).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.ip, a.ip);
    let h: HandleRecord = ipam.get_handle("c1", "eth0").await.unwrap().unwrap();
    assert_eq!((h.ip, h.pool.as_str(), h.node.as_str()), (a.ip, "p", "n1"));
    let r = ipam.release("c1", "eth0").await.unwrap().unwrap();
    assert_eq!(r.ip, a.ip);
    assert!(ipam.release("c1", "eth0").await.unwrap().is_none());
    assert!(ipam.release("never-seen", "eth0").await.unwrap().is_none());
    assert!(ipam.get_handle("c1", "eth0").await.unwrap().is_none());
    assert_eq!(check_invariants(&ipam, &[pool]).await, 0);
    // the allocation records who it was for
    let a2 = ipam.allocate(&req("c2", "n1", &["p"])).await.unwrap();
    let b = ipam.get_block("p", &a2.block).await.unwrap().unwrap();
    let rec = b
        .record
        .allocations
        .values()
        .find(|x| x.container_id == "c2")
        .unwrap();
    assert_eq!(rec.pod.as_deref(), Some("default/pod-c2"));
    assert_eq!(rec.pod_uid.as_deref(), Some("uid-c2"));
}

#[tokio::test]
async fn cooldown_keeps_released_addresses_out_while_others_are_free() {
    let etcd = EtcdServer::start();
    let ipam = ipam(
        &etcd,
        IpamOptions {
            cooldown: Duration::from_secs(60),
            ..IpamOptions::default()
        },
    )
    .await;
    ipam.add_pool("p", spec("10.60.0.0/26", 6, "10.60.0.1", &[]))
        .await
        .unwrap();
    let a = ipam.allocate(&req("c1", "n1", &["p"])).await.unwrap();
    ipam.release("c1", "eth0").await.unwrap();
    let mut seen = BTreeSet::new();
    for i in 2..40 {
        let x = ipam
            .allocate(&req(&format!("c{i}"), "n1", &["p"]))
            .await
            .unwrap();
        assert_ne!(
            x.ip, a.ip,
            "a cooling address was reused while others were free"
        );
        seen.insert(x.ip);
    }
    assert_eq!(seen.len(), 38);

    // With a short cooldown, the longest-released address comes back first, once cooled.
    let etcd2 = EtcdServer::start();
    let ipam = ipam_with_cooldown(&etcd2, Duration::from_millis(300)).await;
    ipam.add_pool("small", spec("10.61.0.0/28", 6, "10.61.0.1", &[]))
        .await
        .unwrap();
    let all: Vec<_> = fill(&ipam, 13).await;
    ipam.release("c5", "eth0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ipam.release("c3", "eth0").await.unwrap();
    // the only free addresses are cooling: as a last resort one is used, the oldest first
    let x = ipam.allocate(&req("x1", "n1", &["small"])).await.unwrap();
    assert_eq!(x.ip, all[5]);
    ipam.release("x1", "eth0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let y = ipam.allocate(&req("y1", "n1", &["small"])).await.unwrap();
    assert_eq!(y.ip, all[3], "c3's address was released longest ago");
}

async fn ipam_with_cooldown(etcd: &EtcdServer, cooldown: Duration) -> Ipam {
    ipam(
        etcd,
        IpamOptions {
            cooldown,
            borrow: false,
            ..IpamOptions::default()
        },
    )
    .await
}

async fn fill(ipam: &Ipam, n: usize) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            ipam.allocate(&req(&format!("c{i}"), "n1", &["small"]))
                .await
                .unwrap()
                .ip,
        );
    }
    out
}

#[tokio::test]
async fn guarded_release_refuses_a_changed_block() {
    let etcd = EtcdServer::start();
    let ipam = ipam(
        &etcd,
        IpamOptions {
            cooldown: Duration::ZERO,
            ..IpamOptions::default()
        },
    )
    .await;
    ipam.add_pool("p", spec("10.70.0.0/24", 7, "10.70.0.1", &[]))
        .await
        .unwrap();
    let a = ipam.allocate(&req("old", "n1", &["p"])).await.unwrap();
    let seen = ipam.get_block("p", &a.block).await.unwrap().unwrap();
    let g = GuardedRelease {
        pool: "p".into(),
        block: a.block.clone(),
        ip: a.ip,
        container_id: "old".into(),
        ifname: "eth0".into(),
        seen_mod_revision: seen.mod_revision,
    };
    // ABA: released and re-allocated (same address, new owner) after the observation
    ipam.release("old", "eth0").await.unwrap();
    let mut again = req("new", "n1", &["p"]);
    again.ip = Some(a.ip);
    let b = ipam.allocate(&again).await.unwrap();
    assert_eq!(b.ip, a.ip);
    let e = ipam.release_guarded(&g).await.unwrap_err();
    assert!(matches!(e, IpamError::Conflict { .. }), "{e:?}");
    assert!(
        e.to_string().contains("changed since it was checked"),
        "{e}"
    );
    // still allocated to the new owner
    assert_eq!(
        ipam.get_handle("new", "eth0").await.unwrap().unwrap().ip,
        a.ip
    );
    // a guard with the current revision but the wrong owner is refused too
    let now = ipam.get_block("p", &a.block).await.unwrap().unwrap();
    let wrong_owner = GuardedRelease {
        seen_mod_revision: now.mod_revision,
        ..g.clone()
    };
    let e = ipam.release_guarded(&wrong_owner).await.unwrap_err();
    assert!(e.to_string().contains("now belongs to new/eth0"), "{e}");
    // and the right one goes through
    let ok = GuardedRelease {
        container_id: "new".into(),
        ..wrong_owner
    };
    ipam.release_guarded(&ok).await.unwrap();
    assert!(ipam.get_handle("new", "eth0").await.unwrap().is_none());
}

#[tokio::test]
async fn static_request_and_bad_input() {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    let p = ipam
        .add_pool(
            "p",
            spec("10.80.0.0/24", 8, "10.80.0.1", &["10.80.0.128/28"]),
        )
        .await
        .unwrap();
    let mut r = req("s1", "n1", &["p"]);
    r.ip = Some("10.80.0.77".parse().unwrap());
    assert_eq!(ipam.allocate(&r).await.unwrap().ip, r.ip.unwrap());
    let mut r2 = req("s2", "n2", &["p"]);
    r2.ip = r.ip;
    let e = ipam.allocate(&r2).await.unwrap_err();
    assert!(
        e.to_string().contains("already allocated to s1/eth0 on n1"),
        "{e}"
    );
    for bad in ["10.80.0.1", "10.80.0.130", "10.80.0.255", "10.81.0.5"] {
        r2.ip = Some(bad.parse().unwrap());
        let e = ipam.allocate(&r2).await.unwrap_err();
        assert!(matches!(e, IpamError::Invalid(_)), "{bad}: {e:?}");
    }
    let e = ipam.allocate(&req("x", "n1", &["nope"])).await.unwrap_err();
    assert_eq!(e.to_string(), "pool nope not found");
    let e = ipam
        .allocate(&req("bad/id", "n1", &["p"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("container id"), "{e}");
    // pools: overlap, bad spec, duplicate name
    let e = ipam
        .add_pool("q", spec("10.80.0.0/25", 9, "10.80.0.1", &[]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps pool p"), "{e}");
    let e = ipam
        .add_pool("q", spec("10.90.0.3/24", 9, "10.90.0.1", &[]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("host bits are set"), "{e}");
    let e = ipam
        .add_pool("p", spec("10.91.0.0/24", 9, "10.91.0.1", &[]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(ipam.list_pools().await.unwrap(), vec![p]);
}

#[tokio::test]
async fn drain_and_remove_pool() {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    ipam.add_pool("a", spec("10.100.0.0/24", 1, "10.100.0.1", &[]))
        .await
        .unwrap();
    ipam.add_pool("b", spec("10.100.1.0/24", 2, "10.100.1.1", &[]))
        .await
        .unwrap();
    ipam.allocate(&req("c1", "n1", &["a", "b"])).await.unwrap();
    ipam.set_pool_state("a", PoolState::Draining).await.unwrap();
    let x = ipam.allocate(&req("c2", "n1", &["a", "b"])).await.unwrap();
    assert_eq!(x.pool, "b", "a draining pool hands out nothing new");
    let e = ipam.remove_pool("a").await.unwrap_err();
    assert!(
        e.to_string().contains("1 addresses are still allocated"),
        "{e}"
    );
    ipam.release("c1", "eth0").await.unwrap();
    ipam.remove_pool("a").await.unwrap();
    assert_eq!(ipam.list_pools().await.unwrap().len(), 1);
    assert!(ipam.blocks(Some("a")).await.unwrap().is_empty());
    let keys = ipam.etcd().keys();
    let (aff, _) = ipam.etcd().list(&keys.node("n1")).await.unwrap();
    assert!(
        aff.iter().all(|kv| !kv.key.contains("/a/")),
        "affinities of a removed"
    );
    let u = ipam.usage().await.unwrap();
    assert_eq!(u.pools[0].counts.allocated, 1);
}

#[tokio::test]
async fn usage_counts() {
    let etcd = EtcdServer::start();
    let ipam = ipam(&etcd, IpamOptions::default()).await;
    ipam.add_pool("p", spec("10.110.0.0/24", 3, "10.110.0.1", &[]))
        .await
        .unwrap();
    for i in 0..20 {
        ipam.allocate(&req(
            &format!("c{i}"),
            if i < 15 { "n1" } else { "n2" },
            &["p"],
        ))
        .await
        .unwrap();
    }
    ipam.release("c0", "eth0").await.unwrap();
    let u = ipam.usage().await.unwrap();
    let p = &u.pools[0];
    assert_eq!(
        (p.counts.capacity, p.counts.allocated, p.counts.cooling),
        (253, 19, 1)
    );
    assert_eq!(p.counts.free, 253 - 20);
    // block 0 holds 14 (network and gateway are in it): n1's 15 take two blocks, n2 one
    assert_eq!((p.blocks_total, p.blocks_claimed), (16, 3));
    let n1 = u.nodes.iter().find(|n| n.node == "n1").unwrap();
    assert_eq!(
        (n1.blocks, n1.counts.allocated, n1.counts.cooling),
        (2, 14, 1)
    );
    assert_eq!(n1.counts.capacity, 14 + 16);
    assert_eq!(u.blocks.len(), 3);
}

/// etcd unreachable: a typed error within the deadline, nothing written.
#[tokio::test]
async fn etcd_unreachable_is_a_typed_error_within_the_timeout() {
    // nothing listens on this port
    let cfg = EtcdConfig {
        endpoints: vec![format!(
            "http://127.0.0.1:{}",
            cellplane_testkit::free_port()
        )],
        timeout_ms: 500,
        ..EtcdConfig::default()
    };
    let t = Instant::now();
    let etcd = Etcd::connect(&cfg).await.unwrap();
    let e = Ipam::new(etcd, IpamOptions::default())
        .allocate(&req("c", "n", &[]))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );

    // a hung etcd (stopped with SIGSTOP): the deadline fires
    let mut server = EtcdServer::start();
    let prefix = format!("/{}", cellplane_testkit::unique("t"));
    let cfg = EtcdConfig {
        endpoints: vec![server.endpoint()],
        prefix: prefix.clone(),
        timeout_ms: 500,
        ..EtcdConfig::default()
    };
    let ipam = Ipam::new(Etcd::connect(&cfg).await.unwrap(), IpamOptions::default());
    ipam.add_pool("p", spec("10.120.0.0/24", 3, "10.120.0.1", &[]))
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(server.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let e = ipam.allocate(&req("c", "n", &["p"])).await.unwrap_err();
    let took = t.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // killed outright: refused, typed
    server.stop();
    let e = ipam.allocate(&req("c", "n", &["p"])).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    // nothing was written
    server.restart();
    let ipam = Ipam::new(Etcd::connect(&cfg).await.unwrap(), IpamOptions::default());
    assert!(ipam.get_handle("c", "eth0").await.unwrap().is_none());
    assert!(ipam.blocks(None).await.unwrap().is_empty());
}
