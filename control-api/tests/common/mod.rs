//! control-api in-process against its own real etcd, for every test file: start with the
//! tokens and settings a test needs, call routes over HTTP, stop.

#![allow(dead_code)] // each test crate uses a different part

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cellplane_control_api::auth::Scope;
use cellplane_control_api::{ApiConfig, TokenConfig};
use cellplane_etcd::{Etcd, EtcdConfig};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::nginx::http_request;
use cellplane_testkit::{free_port, unique};
use serde_json::Value;

pub struct Api {
    pub _etcd_server: EtcdServer,
    /// A client on the same etcd and prefix as the API.
    pub etcd: Etcd,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn token(name: &str, token: &str, scope: Scope) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        scopes: vec![scope],
    }
}

impl Api {
    /// Starts an etcd and the API (keys under a unique prefix starting with `tag`) with
    /// `tokens`; `configure` may change anything else. Returns once `/healthz` answers 200.
    pub async fn start_with(
        tag: &str,
        tokens: Vec<TokenConfig>,
        configure: impl FnOnce(&mut ApiConfig),
    ) -> Api {
        let etcd_server = EtcdServer::start();
        let etcd_cfg = EtcdConfig {
            endpoints: vec![etcd_server.endpoint()],
            prefix: format!("/{}", unique(tag)),
            ..EtcdConfig::default()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = ApiConfig {
            listen: addr,
            etcd: etcd_cfg.clone(),
            tokens,
            ..ApiConfig::default()
        };
        configure(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            cellplane_control_api::run(config, async {
                let _ = rx.await;
            })
            .await
            .expect("control-api run");
        });
        let etcd = Etcd::connect(&etcd_cfg).await.expect("etcd");
        let api = Api {
            _etcd_server: etcd_server,
            etcd,
            addr,
            stop: Some(tx),
            task: Some(task),
        };
        let start = Instant::now();
        while api.call("GET", "/healthz", None, "").await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "control-api not healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        api
    }

    /// A request with a JSON content type and `headers`: (status, body as JSON, or as a JSON
    /// string when it is not JSON; status 0 when the request failed).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let addr = self.addr;
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
            h.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            match http_request(addr, &method, "api", &path, &h, body.as_bytes()) {
                Ok(r) => (
                    r.status,
                    serde_json::from_str(&r.body).unwrap_or(Value::String(r.body)),
                ),
                Err(e) => (0, Value::String(e.to_string())),
            }
        })
        .await
        .unwrap()
    }

    /// A request with `Authorization: Bearer <token>`; a `token` with a space in it is sent as
    /// the whole header value (to test other schemes).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let auth = token.map(|t| {
            if t.contains(' ') {
                t.to_string()
            } else {
                format!("Bearer {t}")
            }
        });
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.request(method, path, &headers, body).await
    }

    /// Every key under `sub` (relative to the root prefix; "" for all).
    pub async fn keys_under(&self, sub: &str) -> Vec<String> {
        let (kvs, _) = self
            .etcd
            .list(&format!("{}/{sub}", self.etcd.keys().root()))
            .await
            .unwrap();
        kvs.into_iter().map(|kv| kv.key).collect()
    }

    /// Asks the API to stop and waits (at most 10 s) until it has.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("control-api stops within 10 s")
                .unwrap();
        }
    }
}
