//! Shared harness: a real etcd, the agent running in-process, a real nginx on the agent's tree,
//! and real backends, all on loopback and all removed on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cellplane_etcd::{Etcd, EtcdConfig};
use cellplane_nginx_agent::{AgentConfig, NginxSettings};
use cellplane_slb::{DomainConfig, Listen, MemberStatus, UpstreamList, UpstreamServer};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::nginx::{http_get, Backend, HttpResponse, NginxProcess};
use cellplane_testkit::{free_port, unique};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const GROUP: &str = "g1";
pub const HOST: &str = "h1";

/// Only one nginx test at a time: wrk and reload timings need the two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cellplane_nginx_agent::AgentError>>>,
}

impl Agent {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("agent task").expect("agent run");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub struct Harness {
    pub etcd_server: EtcdServer,
    pub etcd: Etcd,
    pub dir: tempfile::TempDir,
    pub config: AgentConfig,
    pub port: u16,
    pub agent: Option<Agent>,
    pub nginx: Option<NginxProcess>,
}

impl Harness {
    /// etcd + config; nothing running yet.
    pub async fn new(debounce_ms: u64) -> Harness {
        let etcd_server = EtcdServer::start();
        let dir = tempfile::Builder::new()
            .prefix("cp-nginx-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let etcd_cfg = EtcdConfig {
            endpoints: vec![etcd_server.endpoint()],
            prefix: format!("/{}", unique("t")),
            ..EtcdConfig::default()
        };
        let config = AgentConfig {
            group: GROUP.into(),
            host: HOST.into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            debounce_ms,
            max_debounce_ms: debounce_ms * 10,
            lease_ttl_secs: 5,
            retry_ms: 200,
            etcd: etcd_cfg.clone(),
            nginx: NginxSettings {
                prefix: root.join("prefix"),
                conf_dir: root.join("conf"),
                pid_file: root.join("nginx.pid"),
                error_log: root.join("error.log"),
                temp_dir: root.join("temp"),
                listen_address: "127.0.0.1".into(),
                admin_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
                worker_processes: "2".into(),
                worker_connections: 1024,
                worker_shutdown_timeout_secs: 5,
                reload_confirm_timeout_ms: 10_000,
                ..NginxSettings::default()
            },
        };
        let etcd = Etcd::connect(&etcd_cfg).await.expect("etcd connect");
        Harness {
            etcd_server,
            etcd,
            dir,
            config,
            port: free_port(),
            agent: None,
            nginx: None,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn domain_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A domain config listening on the harness port.
    pub fn domain_config(&self) -> DomainConfig {
        DomainConfig {
            listen: vec![Listen {
                port: self.port,
                tls: false,
                http2: false,
            }],
            ..DomainConfig::default()
        }
    }

    pub async fn put_config(&self, domain: &str, c: &DomainConfig) {
        let key = self.etcd.keys().slb_domain_config(GROUP, domain);
        self.etcd
            .put(&key, serde_json::to_vec(c).unwrap())
            .await
            .expect("put config");
    }

    pub async fn put_upstreams(&self, domain: &str, addrs: &[SocketAddr]) -> i64 {
        let key = self.etcd.keys().slb_domain_upstreams(GROUP, domain);
        let u = UpstreamList {
            servers: addrs
                .iter()
                .map(|a| UpstreamServer {
                    addr: a.to_string(),
                    weight: 1,
                })
                .collect(),
            revision: 0,
        };
        self.etcd
            .put(&key, serde_json::to_vec(&u).unwrap())
            .await
            .expect("put upstreams")
    }

    pub async fn start_agent(&mut self) {
        let (tx, rx) = oneshot::channel();
        let cfg = self.config.clone();
        let task = tokio::spawn(async move {
            cellplane_nginx_agent::run(cfg, async {
                let _ = rx.await;
            })
            .await
        });
        self.agent = Some(Agent {
            stop: Some(tx),
            task: Some(task),
        });
        // ready = first reconcile done (tree rendered)
        let url = self.config.http_listen;
        wait_for(Duration::from_secs(15), "agent /healthz ready", move || {
            http_get(url, "agent", "/healthz")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
    }

    pub async fn stop_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
    }

    pub fn start_nginx(&mut self) {
        let n = &self.config.nginx;
        self.nginx = Some(NginxProcess::start(
            &n.prefix,
            &n.conf_dir.join("current/nginx.conf"),
            &n.pid_file,
            &n.error_log,
            n.admin_listen,
        ));
    }

    pub fn nginx(&self) -> &NginxProcess {
        self.nginx.as_ref().expect("nginx running")
    }

    /// (master, workers)
    pub fn pids(&self) -> (u32, Vec<u32>) {
        let n = self.nginx();
        (n.master_pid(), n.worker_pids())
    }

    pub fn get(&self, host: &str) -> HttpResponse {
        http_get(self.domain_addr(), host, "/").unwrap_or_default()
    }

    pub async fn member(&self) -> Option<MemberStatus> {
        let key = self.etcd.keys().slb_member(GROUP, HOST);
        self.etcd
            .get(&key)
            .await
            .ok()?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.config.http_listen, "agent", "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(f64::NAN)
    }

    /// Waits until `host` is served by `backend`.
    pub async fn wait_served_by(&self, host: &str, backend: &Backend, timeout: Duration) {
        let addr = self.domain_addr();
        let (h, name) = (host.to_string(), backend.name().to_string());
        wait_for(timeout, &format!("{host} served by {name}"), move || {
            http_get(addr, &h, "/")
                .map(|r| r.status == 200 && r.body == name)
                .unwrap_or(false)
        })
        .await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // nginx first (its drop waits for the workers), then the agent, then etcd.
        self.nginx.take();
        self.agent.take();
    }
}

/// Polls `f` (blocking calls are fine: it runs on a blocking thread) until true.
pub async fn wait_for(timeout: Duration, what: &str, f: impl Fn() -> bool + Send + Sync + 'static) {
    let f = std::sync::Arc::new(f);
    let start = Instant::now();
    loop {
        let g = f.clone();
        if tokio::task::spawn_blocking(move || g())
            .await
            .unwrap_or(false)
        {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_member(
    h: &Harness,
    timeout: Duration,
    what: &str,
    f: impl Fn(&MemberStatus) -> bool,
) -> MemberStatus {
    let start = Instant::now();
    loop {
        if let Some(m) = h.member().await {
            if f(&m) {
                return m;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for member status: {what}; last: {m:?}");
            }
        } else if start.elapsed() > timeout {
            panic!("timed out waiting for member status: {what}; no status");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Harness {
    /// A key outside the SLB tree (to move the store revision).
    pub async fn put(&self, rel: &str, v: &str) {
        let key = format!("{}/{rel}", self.etcd.keys().root());
        self.etcd
            .put(&key, v.as_bytes().to_vec())
            .await
            .expect("put");
    }
}

/// A TCP proxy on loopback that a test can cut (existing connections reset, new ones closed at
/// once) and restore: a network partition between the agent and etcd, while the test still
/// reaches etcd directly.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    pub fn start(target: SocketAddr) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c2, s2, k2) = (cut.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for inc in l.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inc) = inc else { continue };
                if c2.load(Ordering::Relaxed) {
                    drop(inc);
                    continue;
                }
                let Ok(out) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let pairs = [
                    (inc.try_clone(), out.try_clone()),
                    (out.try_clone(), inc.try_clone()),
                ];
                if let Ok(mut k) = k2.lock() {
                    k.extend([inc, out]);
                }
                for (r, w) in pairs {
                    if let (Ok(mut r), Ok(mut w)) = (r, w) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut r, &mut w);
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            let _ = r.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        CutProxy {
            addr,
            cut,
            stop,
            conns,
        }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
        if cut {
            if let Ok(mut k) = self.conns.lock() {
                for c in k.drain(..) {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_cut(true);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}
