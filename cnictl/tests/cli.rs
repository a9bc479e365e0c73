//! cnictl as operators run it: the built binary against a real etcd and an in-process
//! Kubernetes API server speaking the real list wire format.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use cellplane_core::PodRef;
use cellplane_etcd::{AllocRequest, Etcd, EtcdConfig, Ipam, IpamOptions};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::kube::{FakeKube, PodDef};
use serde_json::Value;

struct Env {
    etcd: EtcdServer,
    kube: FakeKube,
    dir: tempfile::TempDir,
    prefix: String,
    ipam: Ipam,
}

impl Env {
    async fn new() -> Env {
        let etcd = EtcdServer::start();
        let kube = FakeKube::start();
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("/{}", cellplane_testkit::unique("t"));
        std::fs::write(
            dir.path().join("cnictl.toml"),
            format!(
                "[gc]\ngrace_secs = 3600\naudit_log = \"{}\"\n",
                dir.path().join("audit.log").display()
            ),
        )
        .unwrap();
        kube.write_kubeconfig(dir.path());
        let cfg = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.clone(),
            ..EtcdConfig::default()
        };
        let ipam = Ipam::new(Etcd::connect(&cfg).await.unwrap(), IpamOptions::default());
        Env {
            etcd,
            kube,
            dir,
            prefix,
            ipam,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cnictl"));
        c.args(args)
            .env_remove("CELLPLANE_ETCD_CA_FILE")
            .env("CELLPLANE_CNICTL_CONFIG", self.path("cnictl.toml"))
            .env("CELLPLANE_ETCD_ENDPOINTS", self.etcd.endpoint())
            .env("CELLPLANE_ETCD_PREFIX", &self.prefix)
            .env("CELLPLANE_CNICTL_STATE", self.path("state.json"))
            .env("KUBECONFIG", self.path("kubeconfig"))
            .env("CELLPLANE_NODE", "n1")
            .env("CELLPLANE_LOG", "error");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cnictl")
    }

    async fn alloc(&self, cid: &str, node: &str, uid: Option<&str>, pod: &str) -> Ipv4Addr {
        self.alloc_ip(cid, node, uid, pod, None).await
    }

    async fn alloc_ip(
        &self,
        cid: &str,
        node: &str,
        uid: Option<&str>,
        pod: &str,
        ip: Option<Ipv4Addr>,
    ) -> Ipv4Addr {
        self.ipam
            .allocate(&AllocRequest {
                container_id: cid.into(),
                ifname: "eth0".into(),
                node: node.into(),
                pools: vec![],
                pod: PodRef {
                    namespace: Some("default".into()),
                    name: Some(pod.into()),
                    uid: uid.map(Into::into),
                },
                netns: None,
                ip,
            })
            .await
            .unwrap()
            .ip
    }

    fn pod(&self, name: &str, uid: &str, node: &str) {
        self.kube.add_pod(PodDef {
            namespace: "default",
            name,
            uid,
            node,
            phase: "Running",
            ip: None,
        });
    }

    async fn holder(&self, cid: &str) -> Option<Ipv4Addr> {
        self.ipam
            .get_handle(cid, "eth0")
            .await
            .unwrap()
            .map(|h| h.ip)
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(o), stderr(o)))
}

fn finding_owners(report: &Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["container_id"].as_str().unwrap_or("").to_string())
        .collect()
}

fn add_pool(env: &Env) {
    let o = env.run(&[
        "pool",
        "add",
        "p",
        "--cidr",
        "10.244.0.0/22",
        "--vlan",
        "100",
        "--gateway",
        "10.244.0.1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("pool p added: 10.244.0.0/22 on VLAN 100"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn check_finds_exactly_the_leaks_and_gc_twice_releases_exactly_them() {
    let env = Env::new().await;
    for n in ["n1", "n2", "n3"] {
        env.kube.add_node(n);
    }
    add_pool(&env);
    // live pods
    let live1 = env.alloc("live-1", "n1", Some("u-live1"), "live-1").await;
    env.pod("live-1", "u-live1", "n1");
    let live2 = env.alloc("live-2", "n2", Some("u-live2"), "live-2").await;
    env.pod("live-2", "u-live2", "n2");
    // a pod deleted without CNI DEL (the runtime crashed)
    env.alloc("crashed", "n1", Some("u-crashed"), "crashed")
        .await;
    // web-0 recreated: same name, new UID; the old sandbox's address was never released
    env.alloc("web-old", "n2", Some("u-web-old"), "web-0").await;
    let web_new = env.alloc("web-new", "n2", Some("u-web-new"), "web-0").await;
    env.pod("web-0", "u-web-new", "n2");
    // a node that vanished, with its pod still bound to it
    env.alloc("on-n3", "n3", Some("u-n3"), "on-n3").await;
    env.pod("on-n3", "u-n3", "n3");
    env.kube.remove_node("n3");
    // an allocation without pod metadata (podman): nothing to judge it by, left alone
    let podman = env.alloc("podman-1", "n1", None, "podman-1").await;
    // enough pods that listing them takes several pages (cnictl asks for 2000 a page)
    for i in 0..4100 {
        env.pod(&format!("filler-{i}"), &format!("u-filler-{i}"), "n1");
    }

    let o = env.run(&[
        "check",
        "-o",
        "json",
        "--textfile",
        env.path("leaks.prom").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "findings → exit 1; {}", stderr(&o));
    let report = json(&o);
    assert_eq!(
        finding_owners(&report),
        ["crashed", "on-n3", "web-old"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let kinds: BTreeSet<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["node-gone", "pod-gone"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    for f in report["findings"].as_array().unwrap() {
        assert!(
            f["block_revision"].as_i64().unwrap() > 0,
            "each finding has its block revision"
        );
        assert!(!f["evidence"].as_array().unwrap().is_empty());
    }
    assert!(
        env.kube.requests("/api/v1/pods") >= 3,
        "pods were listed page by page"
    );
    let prom = std::fs::read_to_string(env.path("leaks.prom")).unwrap();
    assert!(
        prom.contains("cellplane_ipam_leaked_addresses{pool=\"p\",node=\"n1\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("cellplane_ipam_leaked_addresses{pool=\"p\",node=\"n2\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("cellplane_ipam_check_findings{kind=\"node-gone\"} 1"),
        "{prom}"
    );

    // gc run 1: first observation (own state file) → releases nothing
    let gc = |env: &Env| {
        let o = env.run(&[
            "gc",
            "--apply",
            "--grace",
            "2s",
            "--state-file",
            env.path("gc.json").to_str().unwrap(),
            "-o",
            "json",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        json(&o)
    };
    let first = gc(&env);
    assert_eq!(first["released"], 0, "{first}");
    assert!(env.holder("crashed").await.is_some());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // gc run 2, after the grace period: releases exactly the three
    let second = gc(&env);
    assert_eq!(second["released"], 3, "{second}");
    for leaked in ["crashed", "web-old", "on-n3"] {
        assert!(env.holder(leaked).await.is_none(), "{leaked} released");
    }
    assert_eq!(env.holder("live-1").await, Some(live1));
    assert_eq!(env.holder("live-2").await, Some(live2));
    assert_eq!(env.holder("web-new").await, Some(web_new));
    assert_eq!(env.holder("podman-1").await, Some(podman));
    let audit = std::fs::read_to_string(env.path("audit.log")).unwrap();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"released\":true"))
            .count(),
        3,
        "{audit}"
    );
    assert!(audit.contains("\"actor\""), "who is logged");
    // now clean
    let o = env.run(&["check"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("no leaks: 4 allocations checked against etcd, kubernetes"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn release_refuses_an_address_reallocated_since_the_check() {
    let env = Env::new().await;
    env.kube.add_node("n1");
    add_pool(&env);
    let victim = env.alloc("victim", "n1", Some("u-victim"), "victim").await;
    let other = env
        .alloc("other-leak", "n1", Some("u-other"), "other")
        .await;
    let report = env.path("report.json");
    let o = env.run(&["check", "--report", report.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    // between check and release: the address is released and handed to a new pod
    env.ipam.release("victim", "eth0").await.unwrap();
    let again = env
        .alloc_ip("newpod", "n1", Some("u-new"), "newpod", Some(victim))
        .await;
    assert_eq!(again, victim);
    env.pod("newpod", "u-new", "n1");
    // a release before the grace period has passed is refused too
    let o = env.run(&[
        "release",
        "--from-report",
        report.to_str().unwrap(),
        "--grace",
        "1h",
    ]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("waiting for the grace period"),
        "{}",
        stdout(&o)
    );
    assert_eq!(env.holder("other-leak").await, Some(other));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let o = env.run(&[
        "release",
        "--from-report",
        report.to_str().unwrap(),
        "--grace",
        "1s",
    ]);
    assert_eq!(code(&o), 1, "one refused → exit 1; {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("addr:p/{victim}/victim/eth0")) && out.contains("not released"),
        "{out}"
    );
    // the new owner keeps the address; the other leak (unchanged) is released
    assert_eq!(env.holder("newpod").await, Some(victim));
    assert!(env.holder("other-leak").await.is_none(), "{out}");
    // release of an address that is not leaked at all
    let o = env.run(&["release", &victim.to_string()]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("not leaked now"), "{}", stdout(&o));
    assert_eq!(env.holder("newpod").await, Some(victim));
}

/// The guard itself: the plan is made from an observation, the block changes (the address
/// is released and re-allocated to a new pod), and the guarded release is refused by etcd.
#[tokio::test]
async fn guarded_release_refuses_a_block_changed_after_the_observation() {
    use cellplane_cnictl::cli::Cli;
    use cellplane_cnictl::config::Settings;
    use clap::Parser;
    let env = Env::new().await;
    env.kube.add_node("n1");
    add_pool(&env);
    let victim = env.alloc("victim", "n1", Some("u-victim"), "victim").await;
    let cli = Cli::parse_from([
        "cnictl",
        "--config",
        env.path("cnictl.toml").to_str().unwrap(),
        "--etcd-endpoints",
        &env.etcd.endpoint(),
        "--etcd-prefix",
        &env.prefix,
        "--kubeconfig",
        env.path("kubeconfig").to_str().unwrap(),
        "check",
    ]);
    let s = Settings::resolve(&cli.global).unwrap();
    let args = cellplane_cnictl::cli::CheckArgs::default();
    let report = cellplane_cnictl::observe::observe(&s, &env.ipam, &args)
        .await
        .unwrap();
    let first = report.observed_at_ms - 10_000;
    let (planned, _) = cellplane_cnictl::release::plan(
        &report.findings,
        |_| Some(first),
        report.observed_at_ms,
        Duration::from_secs(1),
    );
    assert_eq!(planned.len(), 1);
    env.ipam.release("victim", "eth0").await.unwrap();
    env.alloc_ip("newpod", "n1", Some("u-new"), "newpod", Some(victim))
        .await;
    let exec = cellplane_cnictl::release::Executor {
        ipam: &env.ipam,
        ovsdb: None,
        audit_log: &env.path("audit.log"),
        command: "test",
    };
    let out = exec.run(&planned).await;
    assert!(!out[0].released);
    assert!(
        out[0]
            .result
            .contains("its block changed since it was checked"),
        "{}",
        out[0].result
    );
    assert_eq!(env.holder("newpod").await, Some(victim));
}

#[tokio::test]
async fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let env = Env::new().await;
    env.kube.add_node("n1");
    add_pool(&env);
    let before = env.ipam.etcd().list(&env.prefix).await.unwrap().0;
    let dead = format!("http://127.0.0.1:{}", cellplane_testkit::free_port());
    // (arguments, extra environment, what the one-line error must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["pool", "show", "nope"], vec![], "pool nope not found"),
        (
            vec!["usage", "--pool", "nope"],
            vec![],
            "pool nope not found",
        ),
        (
            vec![
                "pool",
                "add",
                "q",
                "--cidr",
                "10.300.0.0/22",
                "--vlan",
                "1",
                "--gateway",
                "10.0.0.1",
            ],
            vec![],
            "--cidr",
        ),
        (
            vec![
                "pool",
                "add",
                "q",
                "--cidr",
                "10.244.3.0/24",
                "--vlan",
                "101",
                "--gateway",
                "10.244.3.1",
            ],
            vec![],
            "overlaps pool p",
        ),
        (
            vec![
                "pool",
                "add",
                "q",
                "--cidr",
                "10.245.0.0/24",
                "--vlan",
                "5000",
                "--gateway",
                "10.245.0.1",
            ],
            vec![],
            "vlan",
        ),
        (
            vec![
                "pool",
                "add",
                "q",
                "--cidr",
                "10.245.0.0/24",
                "--vlan",
                "5",
                "--gateway",
                "10.246.0.1",
            ],
            vec![],
            "outside the pool",
        ),
        (
            vec!["usage", "--etcd-timeout-ms", "500"],
            vec![("CELLPLANE_ETCD_ENDPOINTS", dead.as_str())],
            "unreachable",
        ),
        (
            vec!["check"],
            vec![("KUBECONFIG", "/nonexistent/kubeconfig")],
            "kubeconfig /nonexistent/kubeconfig",
        ),
    ];
    for (args, envs, want) in cases {
        let mut c = env.cmd(&args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} should name {want:?}");
    }
    // an API server that does not answer
    let kc = env.path("dead-kubeconfig");
    std::fs::write(
        &kc,
        std::fs::read_to_string(env.path("kubeconfig"))
            .unwrap()
            .replace(&env.kube.url(), &dead),
    )
    .unwrap();
    let o = env.cmd(&["check"]).env("KUBECONFIG", &kc).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("Kubernetes API"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // nothing was written by any of them
    let after = env.ipam.etcd().list(&env.prefix).await.unwrap().0;
    assert_eq!(before, after);
}

#[tokio::test]
async fn pools_usage_blocks_and_node_remove() {
    let env = Env::new().await;
    env.kube.add_node("n1");
    add_pool(&env);
    let o = env.run(&[
        "pool",
        "add",
        "q",
        "--cidr",
        "10.245.0.0/28",
        "--vlan",
        "200",
        "--gateway",
        "10.245.0.1",
        "--exclude",
        "10.245.0.10",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for i in 0..5 {
        env.alloc(&format!("a{i}"), "n1", None, "x").await;
    }
    for i in 0..3 {
        env.alloc(&format!("b{i}"), "n2", None, "x").await;
    }
    let o = env.run(&["pool", "list", "-o", "json"]);
    let pools = json(&o);
    assert_eq!(pools.as_array().unwrap().len(), 2);
    let p = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "p")
        .unwrap();
    assert_eq!(
        (p["allocated"].as_u64(), p["capacity"].as_u64()),
        (Some(8), Some(1021))
    );
    let o = env.run(&["usage", "--for-node", "n2"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("n2"), "{}", stdout(&o));
    let o = env.run(&["blocks", "-o", "json"]);
    let blocks = json(&o);
    assert_eq!(blocks.as_array().unwrap().len(), 2, "{blocks}");
    let o = env.run(&["pool", "show", "q"]);
    assert!(
        stdout(&o).contains("exclude:   10.245.0.10/32"),
        "{}",
        stdout(&o)
    );
    // exhaustion warning: q has 12 addresses; take 11
    for i in 0..11 {
        env.ipam
            .allocate(&AllocRequest {
                container_id: format!("q{i}"),
                ifname: "eth0".into(),
                node: "n1".into(),
                pools: vec!["q".into()],
                ..AllocRequest::default()
            })
            .await
            .unwrap();
    }
    let o = env.run(&["usage"]);
    assert!(
        stdout(&o).contains("WARNING: pool q is nearly exhausted: 1 of 12 addresses free"),
        "{}",
        stdout(&o)
    );
    // remove refuses while allocated
    let o = env.run(&["pool", "remove", "q"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("11 addresses are still allocated"),
        "{}",
        stderr(&o)
    );
    // node remove: refused while Kubernetes lists it
    let o = env.run(&["node", "remove", "n1"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("still in the Kubernetes API"),
        "{}",
        stderr(&o)
    );
    // n2 is not in Kubernetes: its addresses and its block go
    let o = env.run(&["node", "remove", "n2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for i in 0..3 {
        assert!(env.holder(&format!("b{i}")).await.is_none());
    }
    assert!(env
        .ipam
        .blocks(None)
        .await
        .unwrap()
        .iter()
        .all(|b| b.record.node != "n2"));
    let keys = env.ipam.etcd().keys();
    assert!(env
        .ipam
        .etcd()
        .list(&keys.node("n2"))
        .await
        .unwrap()
        .0
        .is_empty());
    assert!(env.holder("a0").await.is_some(), "n1 untouched");
}

/// `--local`: a pod's netns deleted without DEL, and a port left on the bridge with our owner
/// tag, found on a real OVS and real namespaces.
#[tokio::test]
async fn local_check_finds_a_deleted_netns_and_a_leftover_port() {
    use cellplane_testkit::netns::{require_priv, veth_pair, TestNetns};
    use cellplane_testkit::ovs::{Ovs, OVS_BINARIES};
    if !require_priv("local_check", OVS_BINARIES) {
        return;
    }
    let env = Env::new().await;
    env.kube.add_node("n1");
    add_pool(&env);
    let node = TestNetns::new("cpn");
    let ovs = Ovs::start(&node);
    ovs.add_bridge("brcp");
    let mut pods = Vec::new();
    for cid in ["alive", "crashed"] {
        let ns = TestNetns::new("cpp");
        let host = cellplane_net::names::host_veth_name(cid, "eth0");
        veth_pair(&host, &node, "eth0", &ns);
        ovs.vsctl(&[
            "add-port",
            "brcp",
            &host,
            "tag=100",
            "--",
            "set",
            "port",
            &host,
            &format!("external_ids:container_id={cid}"),
            "external_ids:ifname=eth0",
            "external_ids:owner=cellplane",
        ]);
        env.ipam
            .allocate(&AllocRequest {
                container_id: cid.into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                netns: Some(ns.path()),
                ..AllocRequest::default()
            })
            .await
            .unwrap();
        pods.push(ns);
    }
    // a port left behind: owner tag, no allocation
    let stale = cellplane_net::names::host_veth_name("stale", "eth0");
    let spare = TestNetns::new("cps");
    veth_pair(&stale, &node, "eth0", &spare);
    ovs.vsctl(&[
        "add-port",
        "brcp",
        &stale,
        "--",
        "set",
        "port",
        &stale,
        "external_ids:container_id=stale",
        "external_ids:ifname=eth0",
        "external_ids:owner=cellplane",
    ]);
    // the "crashed" pod's netns disappears without a CNI DEL
    pods[1].delete();
    let o = env.run(&[
        "check",
        "--local",
        "--no-kube",
        "--ovsdb",
        &ovs.db_url(),
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = json(&o);
    let got: BTreeSet<(String, String)> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["container_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("netns-gone", "crashed"), ("orphan-port", "stale")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        "{r}"
    );
    // gc --apply twice across the grace period: address released, port removed; alive untouched
    for _ in 0..2 {
        let o = env.run(&[
            "gc",
            "--apply",
            "--local",
            "--no-kube",
            "--ovsdb",
            &ovs.db_url(),
            "--grace",
            "1s",
            "--state-file",
            env.path("l.json").to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(env.holder("crashed").await.is_none());
    assert!(env.holder("alive").await.is_some());
    let ports = ovs.ports("brcp");
    assert!(!ports.contains(&stale), "{ports:?}");
    assert!(ports.contains(&cellplane_net::names::host_veth_name("alive", "eth0")));
}

/// defaults < file < environment < flags, for the etcd settings.
#[tokio::test]
async fn config_precedence_file_env_flags() {
    let env = Env::new().await;
    add_pool(&env); // under env.prefix
    let other = format!("/{}", cellplane_testkit::unique("o"));
    let cfg = Etcd::connect(&EtcdConfig {
        endpoints: vec![env.etcd.endpoint()],
        prefix: other.clone(),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    Ipam::new(cfg, IpamOptions::default())
        .add_pool(
            "from-flag",
            cellplane_core::PoolSpec {
                cidr: "10.9.0.0/24".parse().unwrap(),
                vlan: 9,
                gateway: "10.9.0.1".parse().unwrap(),
                block_size: 16,
                exclude: vec![],
                state: cellplane_core::PoolState::Active,
            },
        )
        .await
        .unwrap();
    // the file names the real etcd and a prefix with nothing in it
    let file = env.path("precedence.toml");
    std::fs::write(
        &file,
        format!(
            "[etcd]\nendpoints = [\"{}\"]\nprefix = \"/empty\"\n",
            env.etcd.endpoint()
        ),
    )
    .unwrap();
    let names = |o: &Output| -> Vec<String> {
        assert_eq!(code(o), 0, "{}", stderr(o));
        json(o)
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pool"].as_str().unwrap().to_string())
            .collect()
    };
    // file only
    let o = env
        .cmd(&["pool", "list", "-o", "json"])
        .env("CELLPLANE_CNICTL_CONFIG", &file)
        .env_remove("CELLPLANE_ETCD_ENDPOINTS")
        .env_remove("CELLPLANE_ETCD_PREFIX")
        .output()
        .unwrap();
    assert!(names(&o).is_empty());
    // environment over file
    let o = env
        .cmd(&["pool", "list", "-o", "json"])
        .env("CELLPLANE_CNICTL_CONFIG", &file)
        .env_remove("CELLPLANE_ETCD_ENDPOINTS")
        .output()
        .unwrap();
    assert_eq!(names(&o), vec!["p".to_string()]);
    // flag over environment
    let o = env
        .cmd(&["pool", "list", "-o", "json", "--etcd-prefix", &other])
        .env("CELLPLANE_CNICTL_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(names(&o), vec!["from-flag".to_string()]);
    // a config file with a wrong key is refused, naming it
    std::fs::write(&file, "[etcd]\nendpoint = \"x\"\n").unwrap();
    let o = env
        .cmd(&["pool", "list"])
        .env("CELLPLANE_CNICTL_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("unknown field `endpoint`"),
        "{}",
        stderr(&o)
    );
}
