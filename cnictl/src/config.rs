//! cnictl's settings: defaults < file (/etc/cellplane/cnictl.toml) < environment < flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cellplane_etcd::EtcdConfig;
use serde::Deserialize;

use crate::cli::{Global, Output};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    etcd: EtcdFile,
    kubernetes: KubeFile,
    gc: GcFile,
    node: Option<String>,
    output: Option<String>,
    ovsdb: Option<String>,
    /// The IPAM cooldown, for usage's "cooling" column (seconds).
    cooldown_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EtcdFile {
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct KubeFile {
    kubeconfig: Option<PathBuf>,
    enabled: Option<bool>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GcFile {
    grace_secs: Option<u64>,
    state_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
}

/// Everything a command needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub etcd: EtcdConfig,
    pub kube_enabled: bool,
    pub kubeconfig: Option<PathBuf>,
    pub kube_timeout: Duration,
    pub node: String,
    pub output: Output,
    pub ovsdb: String,
    pub grace: Duration,
    pub state_file: PathBuf,
    pub audit_log: PathBuf,
    pub cooldown: Duration,
}

pub const DEFAULT_CONFIG: &str = "/etc/cellplane/cnictl.toml";
pub const DEFAULT_STATE: &str = "/var/lib/cellplane/cnictl-observations.json";
pub const DEFAULT_AUDIT: &str = "/var/log/cellplane/cnictl-audit.log";
pub const DEFAULT_OVSDB: &str = "unix:/var/run/openvswitch/db.sock";

impl Settings {
    pub fn resolve(g: &Global) -> Result<Settings> {
        let file = match &g.config {
            Some(p) => read_file(p, true)?,
            None => read_file(Path::new(DEFAULT_CONFIG), false)?,
        };
        let mut etcd = EtcdConfig::default();
        // file
        let e = file.etcd;
        if let Some(v) = e.endpoints {
            etcd.endpoints = v;
        }
        if let Some(v) = e.prefix {
            etcd.prefix = v;
        }
        etcd.ca_file = e.ca_file.or(etcd.ca_file);
        etcd.cert_file = e.cert_file.or(etcd.cert_file);
        etcd.key_file = e.key_file.or(etcd.key_file);
        if let Some(v) = e.timeout_ms {
            etcd.timeout_ms = v;
        }
        // environment and flags (clap has already let flags win over the environment)
        g.etcd.apply(&mut etcd);
        etcd.validate().context("etcd settings")?;

        let node = match g.node.clone().or(file.node) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .context("host name")?
                .to_string_lossy()
                .into_owned(),
        };
        let output = match (g.output, file.output.as_deref()) {
            (Some(o), _) => o,
            (None, Some("json")) => Output::Json,
            (None, Some("table")) | (None, None) => Output::Table,
            (None, Some(other)) => {
                bail!("config output = {other:?}: must be \"table\" or \"json\"")
            }
        };
        Ok(Settings {
            etcd,
            kube_enabled: !g.no_kube && file.kubernetes.enabled.unwrap_or(true),
            kubeconfig: g.kubeconfig.clone().or(file.kubernetes.kubeconfig),
            kube_timeout: Duration::from_millis(file.kubernetes.timeout_ms.unwrap_or(5000)),
            node,
            output,
            ovsdb: file.ovsdb.unwrap_or_else(|| DEFAULT_OVSDB.to_string()),
            grace: Duration::from_secs(file.gc.grace_secs.unwrap_or(300)),
            state_file: file.gc.state_file.unwrap_or_else(|| DEFAULT_STATE.into()),
            audit_log: file.gc.audit_log.unwrap_or_else(|| DEFAULT_AUDIT.into()),
            cooldown: Duration::from_secs(file.cooldown_secs.unwrap_or(60)),
        })
    }
}

fn read_file(path: &Path, explicit: bool) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(e).with_context(|| format!("config file {}", path.display())),
    }
}
