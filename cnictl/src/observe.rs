//! One observation (a check), the report it produces, and the state file that remembers
//! when each leak was first seen, so that nothing is released on a single observation.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use cellplane_etcd::{now_ms, Ipam};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::cli::CheckArgs;
use crate::config::Settings;
use crate::leak::{analyze, Finding, Kind};
use crate::sources;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub observed_at_ms: u64,
    pub node: String,
    /// Which sources of truth were compared with etcd.
    pub sources: Vec<String>,
    pub etcd_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_resource_version: Option<String>,
    pub allocations: usize,
    pub findings: Vec<Finding>,
}

/// Reads etcd, the Kubernetes API (unless disabled) and this node (with `--local`) and
/// returns what leaks.
pub async fn observe(s: &Settings, ipam: &Ipam, args: &CheckArgs) -> Result<Report> {
    let t = std::time::Instant::now();
    let mut src = vec!["etcd".to_string()];
    // etcd and the Kubernetes API are read at the same time; the pods are decoded while etcd
    // is still being read
    let etcd = ipam.etcd().clone();
    let etcd_read = tokio::spawn(async move {
        let records = sources::read_etcd(&etcd).await;
        (records, t.elapsed().as_millis() as u64)
    });
    let kube_read = async {
        if !s.kube_enabled {
            return Ok(None);
        }
        let client = sources::kube_client(s).await?;
        Ok::<_, anyhow::Error>(Some(sources::read_kube(&client, &client_url(s)).await?))
    };
    let (kube_records, kube_error) = match kube_read.await {
        Ok(records) => (records, None),
        Err(e) => (None, Some(e)),
    };
    let kube_ms = kube_records
        .as_ref()
        .map_or(0, |_| t.elapsed().as_millis() as u64);
    let kube = kube_records.as_ref().map(|k| k.view());
    // etcd's error first when both fail
    let (etcd_records, etcd_ms) = etcd_read.await.context("etcd read")?;
    let etcd_records = etcd_records?;
    if let Some(e) = kube_error {
        return Err(e);
    }
    let kube = kube.transpose()?;
    let t1 = std::time::Instant::now();
    let etcd = etcd_records.view()?;
    let decode_ms = t1.elapsed().as_millis() as u64;
    if kube.is_some() {
        src.push("kubernetes".into());
    }
    let local = if args.local {
        let ovsdb = args.ovsdb.clone().unwrap_or_else(|| s.ovsdb.clone());
        src.push(format!("local:{}", s.node));
        Some(sources::read_local(s, &ovsdb, &etcd).await?)
    } else {
        None
    };
    if kube.is_none() && local.is_none() {
        warn!("no Kubernetes API and no --local: only etcd's own consistency is checked");
    }
    let t2 = std::time::Instant::now();
    let findings = analyze(&etcd, kube.as_ref(), local.as_ref());
    tracing::info!(
        etcd_ms,
        kube_ms,
        decode_ms,
        analyze_ms = t2.elapsed().as_millis() as u64,
        total_ms = t.elapsed().as_millis() as u64,
        findings = findings.len(),
        "observed"
    );
    Ok(Report {
        observed_at_ms: now_ms(),
        node: s.node.clone(),
        sources: src,
        etcd_revision: etcd.revision,
        kube_resource_version: kube.map(|k| k.resource_version),
        allocations: etcd.allocations(),
        findings,
    })
}

fn client_url(s: &Settings) -> String {
    s.kubeconfig
        .as_ref()
        .map(|p| format!("(kubeconfig {})", p.display()))
        .unwrap_or_else(|| "(in-cluster)".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub kind: Kind,
}

/// Leaks seen by earlier observations, by [`Finding::key`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub findings: BTreeMap<String, Seen>,
}

impl State {
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read(path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("state file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("state file {}", path.display())),
        }
    }

    /// Records an observation: what is seen now keeps its first sighting; what is not seen
    /// any more is forgotten.
    pub fn record(&mut self, findings: &[Finding], at_ms: u64) {
        let mut next = BTreeMap::new();
        for f in findings {
            let first = self
                .findings
                .get(&f.key())
                .map(|s| s.first_seen_ms)
                .unwrap_or(at_ms);
            next.insert(
                f.key(),
                Seen {
                    first_seen_ms: first,
                    last_seen_ms: at_ms,
                    kind: f.kind,
                },
            );
        }
        self.findings = next;
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("state file {}", path.display()))
    }
}

/// Writes via a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
