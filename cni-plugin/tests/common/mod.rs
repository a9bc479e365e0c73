//! Harness for the binary contract tests: a real etcd, simulated nodes (a netns each with
//! its own private OVS and a userspace bridge), and the built `cellplane` binary exec'd
//! inside a node's namespace with the CNI environment, as a runtime does.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellplane_core::{PoolSpec, PoolState};
use cellplane_etcd::{Etcd, EtcdConfig, Ipam, IpamOptions};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::netns::{require_priv, unique_name, LoopbackForward, TestNetns};
use cellplane_testkit::ovs::{Ovs, OVS_BINARIES};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_cellplane");

/// Root, OVS, etcd and ip available (fails under CELLPLANE_REQUIRE_PRIV=1 when not).
pub fn privileged(test: &str) -> bool {
    let mut bins = OVS_BINARIES.to_vec();
    bins.extend(["etcd", "ip"]);
    require_priv(test, &bins)
}

/// One simulated node: its namespace, its OVS, its bridge, its lock file.
pub struct Node {
    pub name: String,
    /// The test etcd made reachable on the node namespace's loopback.
    pub forwards: Vec<LoopbackForward>,
    pub ovs: Ovs,
    pub ns: TestNetns,
    pub bridge: String,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new(name: &str) -> Node {
        let ns = TestNetns::new("cpt-n");
        let ovs = Ovs::start(&ns);
        let bridge = unique_name("cpbr");
        ovs.add_bridge(&bridge);
        Node {
            name: name.to_string(),
            forwards: Vec::new(),
            ovs,
            ns,
            bridge,
            dir: tempfile::Builder::new().prefix("cpcni").tempdir().unwrap(),
        }
    }

    /// Makes `endpoint` (`http://127.0.0.1:PORT` of the caller) reachable from the node.
    pub fn reach(&mut self, endpoint: &str) {
        let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        self.forwards.push(LoopbackForward::start(&self.ns, port));
    }

    /// The plugin config for this node.
    pub fn conf(&self, etcd: &str, prefix: &str, pools: &[&str], version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "cell",
            "type": "cellplane",
            "bridge": self.bridge,
            "mtu": 1500,
            "pools": pools,
            "node": self.name,
            "etcd": {"endpoints": [etcd], "prefix": prefix, "timeoutMs": 2000},
            "ovsdb": self.ovs.db_url(),
            "gratuitousArp": true,
            "lockFile": self.dir.path().join("ipam.lock"),
            "lockTimeoutMs": 10000,
            "logFile": self.dir.path().join("cni.log"),
            "logLevel": "debug",
        })
    }

    /// Links in the node namespace made by the plugin (host veth ends).
    pub fn plugin_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("cp") && l.len() == 15)
            .collect()
    }

    /// [`Node::plugin_links`] once DEL's detached veth deletions are done: polls until there
    /// are none or 5 s have passed, and returns what is left (a leak, then).
    pub fn plugin_links_settled(&self) -> Vec<String> {
        settle(|| self.plugin_links())
    }

    /// Every port of the node's OVS except the bridge's own internal port.
    pub fn plugin_ports(&self) -> Vec<String> {
        self.ovs
            .all_ports()
            .into_iter()
            .filter(|p| p != &self.bridge && p.starts_with("cp") && p.len() == 15)
            .collect()
    }
}

/// Polls `f` until it returns an empty list or 5 s have passed (DEL deletes veths after it
/// answers, from a detached child); returns the last answer.
pub fn settle<T>(f: impl Fn() -> Vec<T>) -> Vec<T> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let v = f();
        if v.is_empty() || Instant::now() > until {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The links of a pod namespace other than `lo`, once DEL's detached veth deletions are done
/// (see [`settle`]).
pub fn pod_links_settled(pod: &TestNetns) -> Vec<String> {
    settle(|| pod.links().into_iter().filter(|l| l != "lo").collect())
}

/// The output of one exec.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
    /// The CNI error code on stdout (asserting a non-zero exit).
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, stdout={}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

/// One invocation.
pub struct Call<'a> {
    pub node: &'a Node,
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a str>,
    pub args: Option<&'a str>,
    /// `PATH` of the plugin's environment.
    pub path: &'a str,
    pub stdin: Vec<u8>,
}

impl<'a> Call<'a> {
    pub fn new(node: &'a Node, command: &'a str, conf: &Value) -> Call<'a> {
        Call {
            node,
            command,
            container_id: "",
            ifname: "eth0",
            netns: None,
            args: None,
            path: "/usr/sbin:/usr/bin:/sbin:/bin",
            stdin: serde_json::to_vec(conf).unwrap(),
        }
    }
    pub fn cid(mut self, c: &'a str) -> Self {
        self.container_id = c;
        self
    }
    pub fn netns(mut self, n: &'a str) -> Self {
        self.netns = Some(n);
        self
    }
    pub fn ifname(mut self, i: &'a str) -> Self {
        self.ifname = i;
        self
    }
    pub fn args(mut self, a: &'a str) -> Self {
        self.args = Some(a);
        self
    }

    /// The command, entering the node's namespace between fork and exec.
    pub fn command(&self) -> (Command, File) {
        let ns = File::open(self.node.ns.path()).unwrap();
        let fd = ns.as_raw_fd();
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", self.path)
            .env("CNI_COMMAND", self.command);
        if !self.container_id.is_empty() {
            c.env("CNI_CONTAINERID", self.container_id);
        }
        if !self.ifname.is_empty() {
            c.env("CNI_IFNAME", self.ifname);
        }
        if let Some(n) = self.netns {
            c.env("CNI_NETNS", n);
        }
        c.env(
            "CNI_ARGS",
            self.args.unwrap_or(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;K8S_POD_UID=uid-1",
            ),
        );
        c.env("CNI_PATH", "/opt/cni/bin");
        // SAFETY: setns/prctl only, between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (c, ns)
    }

    pub fn spawn(&self) -> Child {
        let (mut c, _ns) = self.command();
        let mut child = c.spawn().expect("spawn plugin");
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&self.stdin);
        drop(stdin);
        child
    }

    pub fn run(&self) -> Out {
        let t = Instant::now();
        let out = self.spawn().wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t.elapsed(),
        }
    }
}

/// A real etcd with a key prefix for the test, and an IPAM client over it.
pub struct Store {
    pub etcd: EtcdServer,
    pub prefix: String,
    pub ipam: Ipam,
}

impl Store {
    pub async fn start() -> Store {
        let etcd = EtcdServer::start();
        let prefix = format!("/{}", unique_name("cpt"));
        let cfg = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.clone(),
            ..EtcdConfig::default()
        };
        let ipam = Ipam::new(Etcd::connect(&cfg).await.unwrap(), IpamOptions::default());
        Store { etcd, prefix, ipam }
    }

    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    pub async fn add_pool(&self, name: &str, cidr: &str, vlan: u16, gw: &str) {
        self.ipam
            .add_pool(
                name,
                PoolSpec {
                    cidr: cidr.parse().unwrap(),
                    vlan,
                    gateway: gw.parse().unwrap(),
                    block_size: 16,
                    exclude: vec![],
                    state: PoolState::Active,
                },
            )
            .await
            .unwrap();
    }

    /// `(container_id, ifname)` of every handle (retrying while etcd comes back).
    pub async fn handles(&self) -> Vec<(String, String)> {
        for _ in 0..50 {
            if let Ok(h) = self.ipam.handles().await {
                return h.into_keys().collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not answer");
    }

    /// Every allocated address in every block (retrying while etcd comes back).
    pub async fn allocations(&self) -> usize {
        for _ in 0..50 {
            if let Ok(b) = self.ipam.blocks(None).await {
                return b.iter().map(|b| b.record.allocations.len()).sum();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not answer");
    }
}

/// A pod namespace for the test.
pub fn pod_ns() -> TestNetns {
    TestNetns::new("cpt-p")
}

/// Result with `prevResult` for CHECK/DEL.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

pub fn log_path(node: &Node) -> PathBuf {
    node.dir.path().join("cni.log")
}
