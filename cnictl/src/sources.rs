//! Reading what a check compares: etcd, the Kubernetes API, and this node.
//!
//! A check reads every block and handle and every pod of a cell (tens of thousands of each),
//! so the records are kept as they arrived and the views the check compares borrow from them:
//! no copy of a key or a value, no string allocated per field.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::Path;

use anyhow::{Context, Result};
use cellplane_core::Keys;
use cellplane_etcd::{Etcd, EtcdError, Ipam, IpamOptions};
use etcd_client::{GetOptions, KeyValue};
use ipnetwork::Ipv4Network;
use kube::api::ListParams;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::config::Settings;
use crate::leak::{
    Alloc, Block, EtcdView, FastMap, FastSet, Handle, KubeView, LocalPort, LocalView, PodInfo, Text,
};

pub async fn connect(s: &Settings) -> Result<Ipam> {
    let etcd = Etcd::connect(&s.etcd).await?;
    Ok(Ipam::new(
        etcd,
        IpamOptions {
            cooldown: s.cooldown,
            ..IpamOptions::default()
        },
    ))
}

/// Blocks and handles as etcd returned them, all at one revision. [`EtcdRecords::view`]
/// decodes them.
pub struct EtcdRecords {
    pub revision: i64,
    keys: Keys,
    blocks: Vec<KeyValue>,
    handles: Vec<KeyValue>,
}

/// Blocks and handles at one revision: the store's revision first, then both ranges at once,
/// each in pages at that revision (one consistent snapshot).
pub async fn read_etcd(etcd: &Etcd) -> Result<EtcdRecords> {
    let keys = etcd.keys().clone();
    let revision = current_revision(etcd, &keys).await?;
    let (blocks_prefix, handles_prefix) = (keys.all_blocks(), keys.handles());
    let (blocks, handles) = tokio::try_join!(
        range_at(etcd, &blocks_prefix, revision),
        range_at(etcd, &handles_prefix, revision)
    )?;
    Ok(EtcdRecords {
        revision,
        keys,
        blocks,
        handles,
    })
}

/// The store's revision, from the cheapest read there is (one key at most, no value).
async fn current_revision(etcd: &Etcd, keys: &Keys) -> Result<i64, EtcdError> {
    let prefix = keys.all_blocks();
    let end = prefix_end(prefix.as_bytes());
    let resp = etcd
        .call("get", |mut c| async move {
            let opts = GetOptions::new()
                .with_range(end)
                .with_limit(1)
                .with_keys_only();
            c.get(prefix, Some(opts)).await
        })
        .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}

/// Range reads go in pages: the first of `PAGE_MIN` keys, the next sized to about
/// `PAGE_BYTES` from the keys seen so far, well below the gRPC client's 4 MiB message limit.
const PAGE_MIN: i64 = 500;
const PAGE_MAX: i64 = 20_000;
const PAGE_BYTES: usize = 1 << 20;

/// Every key under `prefix` as of `revision`, as etcd returned them (not copied).
async fn range_at(etcd: &Etcd, prefix: &str, revision: i64) -> Result<Vec<KeyValue>, EtcdError> {
    let end = prefix_end(prefix.as_bytes());
    let mut out: Vec<KeyValue> = Vec::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut limit = PAGE_MIN;
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_revision(revision);
        let key = std::mem::take(&mut start);
        let mut resp = etcd
            .call("list", |mut c| async move { c.get(key, Some(opts)).await })
            .await?;
        let more = resp.more();
        let kvs = resp.take_kvs();
        let bytes: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
        let n = kvs.len();
        out.extend(kvs);
        match (more, out.last()) {
            (true, Some(last)) if n > 0 => {
                start = last.key().to_vec();
                start.push(0);
                // size pages by bytes: small values, bigger pages (fewer round trips)
                let per_key = (bytes / n).max(1);
                limit = ((PAGE_BYTES / per_key) as i64).clamp(PAGE_MIN, PAGE_MAX);
            }
            _ => return Ok(out),
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn decode_error(key: &Text, reason: impl ToString) -> EtcdError {
    EtcdError::Decode {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// `(a, b)` of a key `{prefix}{a}/{b}`, borrowed from the key.
fn split_key<'a>(key: &Text<'a>, prefix: &str) -> Option<(Text<'a>, Text<'a>)> {
    match &key.0 {
        Cow::Borrowed(k) => {
            let (a, b) = k.strip_prefix(prefix)?.split_once('/')?;
            Some((a.into(), b.into()))
        }
        Cow::Owned(k) => {
            let (a, b) = k.strip_prefix(prefix)?.split_once('/')?;
            Some((a.to_string().into(), b.to_string().into()))
        }
    }
}

fn key_text(kv: &KeyValue) -> Text<'_> {
    Text(String::from_utf8_lossy(kv.key()))
}

/// A block record (`BlockRecord`'s fields, the same ones required), with its allocations
/// borrowed.
#[derive(Deserialize)]
struct BlockJson<'a> {
    cidr: Ipv4Network,
    #[serde(borrow, rename = "node")]
    _node: Text<'a>,
    #[serde(rename = "seq")]
    _seq: u32,
    #[serde(borrow, default, deserialize_with = "ordinals")]
    allocations: Vec<(u32, Alloc<'a>)>,
    #[serde(default, rename = "released")]
    _released: BTreeMap<u32, u64>,
}

/// `{"ordinal": allocation, ...}` as a list in ordinal order (the last of a repeated ordinal
/// wins, as in a map).
fn ordinals<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, Alloc<'a>)>, D::Error> {
    struct V<'a>(PhantomData<Alloc<'a>>);
    impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
        type Value = Vec<(u32, Alloc<'a>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of ordinals to allocations")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
            let mut v: Vec<(u32, Alloc<'a>)> = Vec::with_capacity(m.size_hint().unwrap_or(16));
            while let Some(e) = m.next_entry()? {
                v.push(e);
            }
            if v.windows(2).all(|w| w[0].0 < w[1].0) {
                return Ok(v);
            }
            v.sort_by_key(|(o, _)| *o);
            let mut out: Vec<(u32, Alloc<'a>)> = Vec::with_capacity(v.len());
            for e in v {
                match out.last_mut() {
                    Some(last) if last.0 == e.0 => *last = e,
                    _ => out.push(e),
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V(PhantomData))
}

/// A handle record (`HandleRecord`), borrowed.
#[derive(Deserialize)]
struct HandleJson<'a> {
    #[serde(borrow)]
    pool: Text<'a>,
    #[serde(borrow)]
    block: Text<'a>,
    ip: std::net::Ipv4Addr,
    #[serde(borrow)]
    node: Text<'a>,
}

impl EtcdRecords {
    /// The blocks and handles, decoded; a record that is not valid fails the whole read, as
    /// a check must not report on part of the pool.
    pub fn view(&self) -> Result<EtcdView<'_>, EtcdError> {
        // blocks and handles are decoded at the same time (a check is the only work then)
        let (blocks, handles) = std::thread::scope(|scope| {
            let handles = scope.spawn(|| self.handles());
            let blocks = self.blocks();
            (blocks, handles.join())
        });
        let handles = match handles {
            Ok(h) => h,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (blocks, handles) = (blocks?, handles?);
        Ok(EtcdView {
            revision: self.revision,
            blocks,
            handles,
        })
    }

    fn blocks(&self) -> Result<Vec<Block<'_>>, EtcdError> {
        let prefix = self.keys.all_blocks();
        self.blocks
            .iter()
            .map(|kv| {
                let key = key_text(kv);
                let (pool, id) = split_key(&key, &prefix)
                    .ok_or_else(|| decode_error(&key, "not a block key"))?;
                if cellplane_core::pool::parse_block_id(&id).is_none() {
                    return Err(decode_error(
                        &key,
                        format!("block id {:?} is not a zero-padded address", &*id),
                    ));
                }
                let rec: BlockJson =
                    serde_json::from_slice(kv.value()).map_err(|e| decode_error(&key, e))?;
                Ok(Block {
                    pool,
                    id,
                    cidr: rec.cidr,
                    allocations: rec.allocations,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect()
    }

    fn handles(&self) -> Result<Vec<Handle<'_>>, EtcdError> {
        let prefix = self.keys.handles();
        self.handles
            .iter()
            .map(|kv| {
                let key = key_text(kv);
                let (container_id, ifname) = split_key(&key, &prefix)
                    .ok_or_else(|| decode_error(&key, "not a handle key"))?;
                let h: HandleJson =
                    serde_json::from_slice(kv.value()).map_err(|e| decode_error(&key, e))?;
                Ok(Handle {
                    container_id,
                    ifname,
                    pool: h.pool,
                    block: h.block,
                    ip: h.ip,
                    node: h.node,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect()
    }
}

pub async fn kube_client(s: &Settings) -> Result<kube::Client> {
    let mut config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes access (no in-cluster config, no kubeconfig); use --kubeconfig or --no-kube")?,
    };
    config.connect_timeout = Some(s.kube_timeout);
    config.read_timeout = Some(s.kube_timeout);
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).with_context(|| format!("Kubernetes client for {url}"))
}

/// Pods per list page (kubectl uses 500; larger pages mean fewer round trips on big clusters).
const PAGE: u32 = 2000;

/// A list page's own metadata: read as each page arrives, for the next page's token.
#[derive(Deserialize, Default)]
struct ListHead {
    #[serde(default)]
    metadata: MiniListMeta,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MiniListMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

/// The few fields of a pod (or node) a leak check needs, borrowed from the page. Decoding only
/// these (serde skips the rest) is much cheaper than building full `Pod` objects.
#[derive(Deserialize)]
struct MiniList<'a> {
    #[serde(borrow, default)]
    items: Vec<MiniObject<'a>>,
}

#[derive(Deserialize)]
struct MiniObject<'a> {
    #[serde(borrow)]
    metadata: MiniMeta<'a>,
    #[serde(borrow, default)]
    spec: Option<MiniSpec<'a>>,
    #[serde(borrow, default)]
    status: Option<MiniStatus<'a>>,
}

#[derive(Deserialize)]
struct MiniMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Text<'a>>,
    #[serde(borrow, default)]
    uid: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MiniSpec<'a> {
    #[serde(borrow, default)]
    node_name: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct MiniStatus<'a> {
    #[serde(borrow, default)]
    phase: Option<Text<'a>>,
}

/// Every page of a list, as the API server sent it, and the list's resourceVersion.
struct Pages {
    pages: Vec<String>,
    resource_version: String,
}

/// Lists every object of a kind, page by page (`limit` / `continue`).
async fn list_all(client: &kube::Client, url: &str, req: kube::core::Request) -> Result<Pages> {
    let mut pages = Vec::new();
    let mut rv = String::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let http = req
            .list(&lp)
            .with_context(|| format!("list request for {url}"))?;
        let text = client
            .request_text(http)
            .await
            .with_context(|| format!("Kubernetes API at {url}"))?;
        let head: ListHead = serde_json::from_str(&text)
            .map_err(kube::Error::SerdeError)
            .with_context(|| format!("Kubernetes API at {url}"))?;
        if rv.is_empty() {
            rv = head.metadata.resource_version.unwrap_or_default();
        }
        pages.push(text);
        token = head.metadata.cont.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(Pages {
                pages,
                resource_version: rv,
            });
        }
    }
}

/// Every pod and node as the Kubernetes API listed them. [`KubeRecords::view`] decodes them.
pub struct KubeRecords {
    pods: Pages,
    nodes: Pages,
    url: String,
}

/// Every pod and node, read page by page, pods and nodes at the same time.
pub async fn read_kube(client: &kube::Client, url_for_errors: &str) -> Result<KubeRecords> {
    let pods = kube::core::Request::new("/api/v1/pods");
    let nodes = kube::core::Request::new("/api/v1/nodes");
    let (pods, nodes) = tokio::try_join!(
        list_all(client, url_for_errors, pods),
        list_all(client, url_for_errors, nodes)
    )?;
    Ok(KubeRecords {
        pods,
        nodes,
        url: url_for_errors.to_string(),
    })
}

impl KubeRecords {
    /// Pods by UID and node names, borrowed from the pages.
    pub fn view(&self) -> Result<KubeView<'_>> {
        let mut pods = FastMap::default();
        pods.reserve(self.pods.pages.len() * PAGE as usize);
        for page in &self.pods.pages {
            let list = self.parse(page)?;
            for p in list.items {
                let Some(uid) = p.metadata.uid else { continue };
                pods.insert(
                    uid,
                    PodInfo {
                        namespace: p.metadata.namespace.unwrap_or_default(),
                        name: p.metadata.name.unwrap_or_default(),
                        node: p.spec.and_then(|s| s.node_name),
                        phase: p.status.and_then(|s| s.phase),
                    },
                );
            }
        }
        let mut nodes = FastSet::default();
        for page in &self.nodes.pages {
            nodes.extend(
                self.parse(page)?
                    .items
                    .into_iter()
                    .filter_map(|n| n.metadata.name),
            );
        }
        Ok(KubeView {
            pods,
            nodes,
            resource_version: self.pods.resource_version.clone(),
        })
    }

    fn parse<'a>(&self, page: &'a str) -> Result<MiniList<'a>> {
        serde_json::from_str(page)
            .map_err(kube::Error::SerdeError)
            .with_context(|| format!("Kubernetes API at {}", self.url))
    }
}

/// This node: which recorded namespaces exist, our OVS ports, our host veths.
pub async fn read_local(s: &Settings, ovsdb: &str, etcd: &EtcdView<'_>) -> Result<LocalView> {
    let mut netns = HashMap::new();
    for b in &etcd.blocks {
        for (_, a) in b.allocations.iter().filter(|(_, a)| *a.node == s.node) {
            if let Some(ns) = a.netns.as_deref() {
                netns.insert(ns.to_string(), Path::new(ns).exists());
            }
        }
    }
    let mut db = cellplane_net::ovsdb::Ovsdb::connect(ovsdb, std::time::Duration::from_secs(5))
        .await
        .with_context(|| format!("OVSDB at {ovsdb}"))?;
    let mut owner = std::collections::BTreeMap::new();
    owner.insert("owner".to_string(), "cellplane".to_string());
    let ports = db
        .find_ports(&owner)
        .await
        .with_context(|| format!("OVSDB at {ovsdb}"))?
        .into_iter()
        .map(|p| LocalPort {
            container_id: p.external_ids.get("container_id").cloned(),
            ifname: p.external_ids.get("ifname").cloned(),
            name: p.name,
            bridge: p.bridge,
        })
        .collect();
    Ok(LocalView {
        node: s.node.clone(),
        netns,
        ports,
        veths: host_veths()?,
    })
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    info_kind: Option<String>,
}

/// Host veths named as the CNI plugin names them: `cp` and 13 hex digits.
fn host_veths() -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show", "type", "veth"])
        .output()
        .context("run ip -j link")?;
    if !out.status.success() {
        anyhow::bail!("ip link: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let links: Vec<IpLink> = serde_json::from_slice(&out.stdout).context("parse ip -j link")?;
    Ok(links
        .into_iter()
        .filter(|l| l.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()) == Some("veth"))
        .map(|l| l.ifname.split('@').next().unwrap_or_default().to_string())
        .filter(|n| {
            n.len() == 15 && n.starts_with("cp") && n[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect())
}
