//! Shared harness: the nginx-agent test harness (real etcd, agent, nginx, backends) plus the
//! control API and discovery running in-process against the fake Kubernetes API server.
#![allow(dead_code)]

#[path = "../../../nginx-agent/tests/common/mod.rs"]
pub mod agent;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use agent::{wait_for, Harness, GROUP};
use cellplane_discovery::DiscoveryConfig;
use cellplane_slb::UpstreamList;
use cellplane_testkit::kube::FakeKube;
use cellplane_testkit::nginx::http_get;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "discovery-test-token-0123456789";
pub const NS: &str = "shop";

type Running = (
    oneshot::Sender<()>,
    JoinHandle<Result<(), cellplane_control_api::RunError>>,
);

/// A control API that can be stopped and started again on the same address.
pub struct ControlApi {
    pub addr: SocketAddr,
    cfg: cellplane_control_api::ApiConfig,
    running: Option<Running>,
}

impl ControlApi {
    pub async fn start(h: &Harness) -> ControlApi {
        let addr = SocketAddr::from(([127, 0, 0, 1], cellplane_testkit::free_port()));
        let cfg = cellplane_control_api::ApiConfig {
            listen: addr,
            etcd: h.config.etcd.clone(),
            tokens: vec![cellplane_control_api::TokenConfig {
                name: "discovery".into(),
                token: TOKEN.into(),
                scopes: vec![cellplane_control_api::auth::Scope::SlbWrite],
            }],
            ..Default::default()
        };
        let mut api = ControlApi {
            addr,
            cfg,
            running: None,
        };
        api.resume().await;
        api
    }

    pub async fn resume(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cellplane_control_api::run(self.cfg.clone(), async {
            let _ = rx.await;
        }));
        self.running = Some((tx, task));
        let addr = self.addr;
        wait_for(Duration::from_secs(10), "control-api up", move || {
            http_get(addr, "api", "/healthz")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.await
                .expect("control-api task")
                .expect("control-api run");
        }
    }

    /// PUT a domain config (creates the domain).
    pub async fn put_domain(&self, domain: &str, config: &cellplane_slb::DomainConfig) {
        let (addr, path) = (self.addr, format!("/v1/slb/{GROUP}/domains/{domain}"));
        let body = serde_json::to_string(config).expect("config json");
        let status = tokio::task::spawn_blocking(move || {
            cellplane_testkit::nginx::http_request(
                addr,
                "PUT",
                "api",
                &path,
                &[("Authorization", &format!("Bearer {TOKEN}"))],
                body.as_bytes(),
            )
            .map(|r| r.status)
            .unwrap_or(0)
        })
        .await
        .expect("put domain");
        assert!(
            status == 200 || status == 201,
            "PUT domain {domain}: {status}"
        );
    }
}

impl Drop for ControlApi {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}

/// discovery running in-process.
pub struct Discovery {
    pub cfg: DiscoveryConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cellplane_discovery::DiscoveryError>>>,
}

impl Discovery {
    pub fn config(kube: &FakeKube, api: &ControlApi, dir: &std::path::Path) -> DiscoveryConfig {
        let token_file = dir.join("discovery.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        DiscoveryConfig {
            kubeconfig: Some(kube.write_kubeconfig(dir)),
            control_api: format!("http://{}", api.addr),
            token_file,
            http_listen: SocketAddr::from(([127, 0, 0, 1], cellplane_testkit::free_port())),
            coalesce_ms: 50,
            retry_min_ms: 100,
            retry_max_ms: 1000,
            request_timeout_ms: 2000,
            keep_on_opt_out: false,
        }
    }

    pub async fn start(cfg: DiscoveryConfig) -> Discovery {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cellplane_discovery::run(cfg.clone(), async {
            let _ = rx.await;
        }));
        let addr = cfg.http_listen;
        wait_for(Duration::from_secs(15), "discovery /healthz", move || {
            http_get(addr, "d", "/healthz")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
        Discovery {
            cfg,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.cfg.http_listen, "d", "/metrics")
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

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("discovery stops in time")
                .expect("discovery task")
                .expect("discovery run");
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn service(name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        ..Service::default()
    }
}

/// Opt-in annotations for `domain` in [`GROUP`], port named `http`.
pub fn opt_in(domain: &str) -> Vec<(&'static str, String)> {
    vec![
        (cellplane_discovery::annotations::GROUP, GROUP.to_string()),
        (cellplane_discovery::annotations::DOMAIN, domain.to_string()),
        (cellplane_discovery::annotations::PORT, "http".to_string()),
    ]
}

pub fn opted_service(name: &str, domain: &str) -> Service {
    let a = opt_in(domain);
    let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    service(name, &pairs)
}

#[derive(Debug, Clone, Copy)]
pub enum State {
    Ready,
    NotReady,
    Terminating,
}

/// An EndpointSlice of Service `svc` with port `http` = `port` and the given endpoints.
pub fn slice(name: &str, svc: &str, port: u16, endpoints: &[(&str, State)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(
                [("kubernetes.io/service-name".to_string(), svc.to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, st)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(match st {
                        State::Ready => EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        },
                        State::NotReady => EndpointConditions {
                            ready: Some(false),
                            serving: Some(false),
                            terminating: Some(false),
                        },
                        State::Terminating => EndpointConditions {
                            ready: Some(false),
                            serving: Some(true),
                            terminating: Some(true),
                        },
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port.into()),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// The upstream list stored in etcd for `domain` (sorted addresses), `None` when unset.
pub async fn stored_upstreams(h: &Harness, domain: &str) -> Option<Vec<String>> {
    let key = h.etcd.keys().slb_domain_upstreams(GROUP, domain);
    let kv = h.etcd.get(&key).await.ok()??;
    let list: UpstreamList = serde_json::from_slice(&kv.value).ok()?;
    let mut v: Vec<String> = list.servers.into_iter().map(|s| s.addr).collect();
    v.sort();
    Some(v)
}

/// Waits until etcd holds exactly `want` (any order) for `domain`.
pub async fn wait_upstreams(h: &Harness, domain: &str, want: &[String], timeout: Duration) {
    let mut want = want.to_vec();
    want.sort();
    let start = Instant::now();
    loop {
        let got = stored_upstreams(h, domain).await;
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{domain}: upstreams {got:?}, want {want:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
