//! Reading what a check compares: etcd, the Kubernetes API, and this node.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use cellplane_etcd::{Etcd, Ipam, IpamOptions};
use kube::api::ListParams;
use serde::Deserialize;

use crate::config::Settings;
use crate::leak::{EtcdView, KubeView, LocalPort, LocalView, PodInfo};

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

/// Blocks and handles at one revision.
pub async fn read_etcd(ipam: &Ipam) -> Result<EtcdView> {
    let (blocks, handles, revision) = ipam.snapshot().await?;
    Ok(EtcdView {
        revision,
        blocks,
        handles,
    })
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

/// The few fields of a pod (or node) a leak check needs. Decoding only these (serde skips the
/// rest) is much cheaper than building full `Pod` objects on a large cluster.
#[derive(Deserialize)]
struct MiniList {
    #[serde(default)]
    metadata: MiniListMeta,
    #[serde(default)]
    items: Vec<MiniObject>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MiniListMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct MiniObject {
    metadata: MiniMeta,
    #[serde(default)]
    spec: Option<MiniSpec>,
    #[serde(default)]
    status: Option<MiniStatus>,
}

#[derive(Deserialize)]
struct MiniMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MiniSpec {
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Deserialize)]
struct MiniStatus {
    #[serde(default)]
    phase: Option<String>,
}

/// Lists every object of a kind, page by page (`limit` / `continue`).
async fn list_all(
    client: &kube::Client,
    url: &str,
    req: kube::core::Request,
) -> Result<(Vec<MiniObject>, String)> {
    let mut items = Vec::new();
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
        let page: MiniList = client
            .request(http)
            .await
            .with_context(|| format!("Kubernetes API at {url}"))?;
        if rv.is_empty() {
            rv = page.metadata.resource_version.unwrap_or_default();
        }
        items.extend(page.items);
        token = page.metadata.cont.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok((items, rv));
        }
    }
}

/// Every pod (by UID) and node, read page by page, pods and nodes at the same time.
pub async fn read_kube(client: &kube::Client, url_for_errors: &str) -> Result<KubeView> {
    let pods = kube::core::Request::new("/api/v1/pods");
    let nodes = kube::core::Request::new("/api/v1/nodes");
    let ((pods, rv), (nodes, _)) = tokio::try_join!(
        list_all(client, url_for_errors, pods),
        list_all(client, url_for_errors, nodes)
    )?;
    let mut view = KubeView {
        resource_version: rv,
        ..KubeView::default()
    };
    for p in pods {
        let Some(uid) = p.metadata.uid else { continue };
        view.pods.insert(
            uid,
            PodInfo {
                namespace: p.metadata.namespace.unwrap_or_default(),
                name: p.metadata.name.unwrap_or_default(),
                node: p.spec.and_then(|s| s.node_name),
                phase: p.status.and_then(|s| s.phase),
            },
        );
    }
    view.nodes
        .extend(nodes.into_iter().filter_map(|n| n.metadata.name));
    Ok(view)
}

/// This node: which recorded namespaces exist, our OVS ports, our host veths.
pub async fn read_local(s: &Settings, ovsdb: &str, etcd: &EtcdView) -> Result<LocalView> {
    let mut netns = HashMap::new();
    for b in &etcd.blocks {
        for a in b.record.allocations.values().filter(|a| a.node == s.node) {
            if let Some(ns) = &a.netns {
                netns.insert(ns.clone(), Path::new(ns).exists());
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
