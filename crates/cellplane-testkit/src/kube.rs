//! A small in-process Kubernetes API server for tests: no API server can run on these
//! machines, so this one speaks the real wire format of list requests for pods and nodes
//! (objects built from k8s-openapi types), with `limit`/`continue` pagination served from a
//! consistent snapshot and a `resourceVersion` that grows with every change.
//!
//! Services (`/api/v1/services`) and EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`)
//! are served for list and for `?watch=1` streaming from a `resourceVersion` (ADDED, MODIFIED,
//! DELETED, BOOKMARK when `allowWatchBookmarks=true`; an ERROR event with a `410 Gone` status for
//! a resourceVersion older than the last [`FakeKube::compact`]). Tests can drop open watches and
//! make these two resources unavailable (503) to simulate API-server outages.
//!
//! It runs on its own thread and runtime (usable from plain and async tests) on a free
//! loopback port, and stops when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// List path, list apiVersion, list kind, object kind of the watchable resources.
const SERVICES: Watchable = Watchable {
    path: "/api/v1/services",
    api_version: "v1",
    kind: "Service",
};
const ENDPOINT_SLICES: Watchable = Watchable {
    path: "/apis/discovery.k8s.io/v1/endpointslices",
    api_version: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
};

#[derive(Clone, Copy)]
struct Watchable {
    path: &'static str,
    api_version: &'static str,
    kind: &'static str,
}

struct WatchEventRec {
    rv: u64,
    path: &'static str,
    line: Arc<str>,
}

struct OpenWatch {
    path: &'static str,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<String>,
}

/// A paginated list's items at one resource version.
type Snapshot = (u64, Arc<Vec<Arc<str>>>);

#[derive(Default)]
struct Inner {
    /// Encoded once when added, as an API server's watch cache does; by "namespace/name".
    pods: BTreeMap<String, Arc<str>>,
    nodes: BTreeMap<String, Arc<str>>,
    resource_version: u64,
    /// Paginated lists in progress: snapshot of items at a resource version.
    snapshots: BTreeMap<String, Snapshot>,
    next_snapshot: u64,
    /// Requests served, per path (for tests that check pagination was used).
    requests: BTreeMap<String, u64>,
    /// Watchable objects by list path, then "namespace/name".
    objects: BTreeMap<&'static str, BTreeMap<String, Arc<str>>>,
    /// Every change to a watchable object since the last compaction.
    events: Vec<WatchEventRec>,
    /// Watches from a resourceVersion below this get `410 Gone`.
    compacted: u64,
    watches: Vec<OpenWatch>,
    /// Services and EndpointSlices answer 503 while set.
    unavailable: bool,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeKube {
    addr: SocketAddr,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a test says about a pod.
#[derive(Debug, Clone)]
pub struct PodDef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    /// Pending, Running, Succeeded, Failed
    pub phase: &'a str,
    pub ip: Option<&'a str>,
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let state: Shared = Arc::new(Mutex::new(Inner::default()));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind loopback");
                addr_tx.send(listener.local_addr().expect("addr")).ok();
                let app = Router::new()
                    .route("/api/v1/pods", get(list_pods))
                    .route("/api/v1/nodes", get(list_nodes))
                    .route(SERVICES.path, get(services))
                    .route(ENDPOINT_SLICES.path, get(endpoint_slices))
                    .route("/version", get(version))
                    .with_state(st);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .ok();
            });
        });
        let addr = addr_rx.recv().expect("fake API server started");
        FakeKube {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn bump(inner: &mut Inner) -> String {
        inner.resource_version += 1;
        inner.resource_version.to_string()
    }

    pub fn add_pod(&self, p: PodDef<'_>) {
        let mut inner = self.state.lock().expect("state");
        let rv = Self::bump(&mut inner);
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(p.name.into()),
                namespace: Some(p.namespace.into()),
                uid: Some(p.uid.into()),
                resource_version: Some(rv),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(p.node.into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(p.phase.into()),
                pod_ip: p.ip.map(str::to_string),
                ..PodStatus::default()
            }),
        };
        inner
            .pods
            .insert(format!("{}/{}", p.namespace, p.name), encode(&pod));
    }

    /// Adds many pods at once (benchmarks).
    pub fn add_pods<'a>(&self, pods: impl IntoIterator<Item = PodDef<'a>>) {
        for p in pods {
            self.add_pod(p);
        }
    }

    pub fn remove_pod(&self, namespace: &str, name: &str) {
        let mut inner = self.state.lock().expect("state");
        Self::bump(&mut inner);
        inner.pods.remove(&format!("{namespace}/{name}"));
    }

    pub fn add_node(&self, name: &str) {
        let mut inner = self.state.lock().expect("state");
        let rv = Self::bump(&mut inner);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        inner.nodes.insert(name.into(), encode(&node));
    }

    pub fn remove_node(&self, name: &str) {
        let mut inner = self.state.lock().expect("state");
        Self::bump(&mut inner);
        inner.nodes.remove(name);
    }

    /// Adds or replaces a Service (MODIFIED when it existed); returns the new resourceVersion.
    pub fn apply_service(&self, svc: &Service) -> u64 {
        self.apply(SERVICES, &svc.metadata, svc)
    }

    pub fn delete_service(&self, namespace: &str, name: &str) -> bool {
        self.delete(SERVICES, namespace, name)
    }

    /// Adds or replaces an EndpointSlice; returns the new resourceVersion.
    pub fn apply_endpoint_slice(&self, slice: &EndpointSlice) -> u64 {
        self.apply(ENDPOINT_SLICES, &slice.metadata, slice)
    }

    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) -> bool {
        self.delete(ENDPOINT_SLICES, namespace, name)
    }

    /// Closes every open watch stream (clients see the connection end and re-watch).
    pub fn drop_watches(&self) {
        self.state.lock().expect("state").watches.clear();
    }

    /// Forgets the event history: a watch from any resourceVersion up to now gets an ERROR
    /// event with `410 Gone` (the client must re-list).
    pub fn compact(&self) {
        let mut inner = self.state.lock().expect("state");
        inner.compacted = inner.resource_version + 1;
        inner.events.clear();
    }

    /// Sends a BOOKMARK at the current resourceVersion to watches that asked for bookmarks.
    pub fn send_bookmarks(&self) {
        let mut inner = self.state.lock().expect("state");
        let rv = inner.resource_version;
        inner.watches.retain(|w| {
            let Some(res) = [SERVICES, ENDPOINT_SLICES]
                .into_iter()
                .find(|r| r.path == w.path)
            else {
                return false;
            };
            !w.bookmarks || w.tx.send(bookmark_line(res, rv)).is_ok()
        });
    }

    /// While set, Services and EndpointSlices (list and watch) answer 503 and open watches
    /// are dropped.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut inner = self.state.lock().expect("state");
        inner.unavailable = unavailable;
        if unavailable {
            inner.watches.clear();
        }
    }

    /// Open watch streams (all resources).
    pub fn open_watches(&self) -> usize {
        let mut inner = self.state.lock().expect("state");
        inner.watches.retain(|w| !w.tx.is_closed());
        inner.watches.len()
    }

    fn apply<T: serde::Serialize>(&self, res: Watchable, meta: &ObjectMeta, obj: &T) -> u64 {
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        let mut value = serde_json::to_value(obj).expect("object json");
        let mut inner = self.state.lock().expect("state");
        let rv = Self::bump(&mut inner);
        value["metadata"]["resourceVersion"] = json!(rv);
        let encoded: Arc<str> = value.to_string().into();
        let existed = inner
            .objects
            .entry(res.path)
            .or_default()
            .insert(key, encoded.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        publish(&mut inner, res, kind, &encoded);
        inner.resource_version
    }

    fn delete(&self, res: Watchable, namespace: &str, name: &str) -> bool {
        let mut inner = self.state.lock().expect("state");
        let key = format!("{namespace}/{name}");
        let Some(old) = inner.objects.entry(res.path).or_default().remove(&key) else {
            return false;
        };
        let rv = Self::bump(&mut inner);
        let mut value: Value = serde_json::from_str(&old).expect("stored json");
        value["metadata"]["resourceVersion"] = json!(rv);
        publish(&mut inner, res, "DELETED", &value.to_string());
        true
    }

    /// How many requests were served for `path` (e.g. `/api/v1/pods`).
    pub fn requests(&self, path: &str) -> u64 {
        let inner = self.state.lock().expect("state");
        inner.requests.get(path).copied().unwrap_or(0)
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    #[serde(rename = "continue")]
    cont: Option<String>,
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "allowWatchBookmarks")]
    allow_watch_bookmarks: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1") | Some("true"))
}

fn publish(inner: &mut Inner, res: Watchable, kind: &str, object: &str) {
    let line: Arc<str> = format!(r#"{{"type":"{kind}","object":{object}}}"#).into();
    let rv = inner.resource_version;
    inner
        .watches
        .retain(|w| w.path != res.path || w.tx.send(format!("{line}\n")).is_ok());
    inner.events.push(WatchEventRec {
        rv,
        path: res.path,
        line,
    });
}

fn bookmark_line(res: Watchable, rv: u64) -> String {
    format!(
        "{}\n",
        json!({"type": "BOOKMARK", "object": {"apiVersion": res.api_version, "kind": res.kind,
            "metadata": {"resourceVersion": rv.to_string()}}})
    )
}

async fn services(State(st): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    watchable(st, q, SERVICES)
}

async fn endpoint_slices(State(st): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    watchable(st, q, ENDPOINT_SLICES)
}

fn watchable(st: Shared, q: ListQuery, res: Watchable) -> Response {
    {
        let mut inner = st.lock().expect("state");
        if inner.unavailable {
            *inner.requests.entry(res.path.to_string()).or_default() += 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": "unavailable (test)", "reason": "ServiceUnavailable", "code": 503}),
                ),
            )
                .into_response();
        }
    }
    if !truthy(&q.watch) {
        let list_kind = format!("{}List", res.kind);
        return list(st, q, res.path, res.api_version, &list_kind, |i| {
            i.objects
                .get(res.path)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        });
    }
    let mut inner = st.lock().expect("state");
    *inner
        .requests
        .entry(format!("{}?watch", res.path))
        .or_default() += 1;
    let from: u64 = q
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    if from != 0 && from < inner.compacted {
        let status = json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status",
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {from} ({})", inner.compacted)}});
        let _ = tx.send(format!("{status}\n"));
        drop(tx);
    } else {
        if from != 0 {
            for ev in inner
                .events
                .iter()
                .filter(|e| e.path == res.path && e.rv > from)
            {
                let _ = tx.send(format!("{}\n", ev.line));
            }
        }
        let bookmarks = truthy(&q.allow_watch_bookmarks);
        if bookmarks {
            let _ = tx.send(bookmark_line(res, inner.resource_version));
        }
        inner.watches.push(OpenWatch {
            path: res.path,
            bookmarks,
            tx,
        });
    }
    drop(inner);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn version() -> Json<Value> {
    Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-cellplane-fake"}))
}

async fn list_pods(State(st): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    list(st, q, "/api/v1/pods", "v1", "PodList", |i| {
        i.pods.values().cloned().collect()
    })
}

async fn list_nodes(State(st): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    list(st, q, "/api/v1/nodes", "v1", "NodeList", |i| {
        i.nodes.values().cloned().collect()
    })
}

fn list(
    st: Shared,
    q: ListQuery,
    path: &str,
    api_version: &str,
    kind: &str,
    items: impl Fn(&Inner) -> Vec<Arc<str>>,
) -> Response {
    let mut inner = st.lock().expect("state");
    *inner.requests.entry(path.to_string()).or_default() += 1;
    // a continued list is served from the snapshot taken when it started
    let (rv, all, offset, snap_id) = match q.cont.as_deref() {
        Some(token) if !token.is_empty() => {
            let Some((id, off)) = token.split_once(':') else {
                return gone("malformed continue token");
            };
            let Some((rv, items)) = inner.snapshots.get(id).cloned() else {
                return gone("the continue token has expired");
            };
            (
                rv,
                items,
                off.parse::<usize>().unwrap_or(0),
                Some(id.to_string()),
            )
        }
        _ => (inner.resource_version, Arc::new(items(&inner)), 0, None),
    };
    let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(all.len());
    let page = &all[offset.min(end)..end];
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < all.len() {
        let id = match snap_id {
            Some(id) => id,
            None => {
                inner.next_snapshot += 1;
                let id = inner.next_snapshot.to_string();
                inner.snapshots.insert(id.clone(), (rv, all.clone()));
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(all.len() - end);
    }
    let mut body = format!(
        r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{metadata},"items":["#
    );
    for (i, item) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn encode<T: serde::Serialize>(obj: &T) -> Arc<str> {
    serde_json::to_string(obj).expect("object json").into()
}

fn gone(msg: &str) -> Response {
    (
        StatusCode::GONE,
        Json(json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": msg, "reason": "Expired", "code": 410
        })),
    )
        .into_response()
}
