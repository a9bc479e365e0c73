//! control-api configuration: TOML file (`/etc/cellplane/control-api.toml`), `CELLPLANE_*`
//! environment variables and flags; defaults < file < env < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cellplane_etcd::EtcdConfig;
use clap::Parser;
use serde::Deserialize;

use crate::auth::Scope;
use crate::error::ConfigError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cellplane/control-api.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub etcd: EtcdConfig,
    /// Bearer tokens. Keep the file readable by the service only.
    pub tokens: Vec<TokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            etcd: EtcdConfig::default(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; appears in the audit log, never the token itself.
    pub name: String,
    pub token: String,
    /// `read`, `slb:write`, `admin` (later issues add `pools:write`, `builds:write`).
    pub scopes: Vec<Scope>,
}

impl ApiConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<ApiConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.etcd.validate().map_err(|e| ConfigError {
            field: "etcd".into(),
            reason: e.to_string(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                return Err(ConfigError {
                    field: format!("tokens[{i}].token"),
                    reason: "must be at least 16 characters".into(),
                });
            }
            if !seen.insert(&t.token) {
                return Err(ConfigError {
                    field: format!("tokens[{i}].token"),
                    reason: "duplicate token".into(),
                });
            }
            if t.name.is_empty() {
                return Err(ConfigError {
                    field: format!("tokens[{i}].name"),
                    reason: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Parser)]
#[command(
    name = "control-api",
    version,
    about = "cellplane control API (HTTP/JSON over etcd)"
)]
pub struct Cli {
    #[arg(long, short = 'c', env = "CELLPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "CELLPLANE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    #[arg(long, env = "CELLPLANE_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    #[arg(long, env = "CELLPLANE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_LOG", default_value = "info")]
    pub log: String,
    #[arg(long, env = "CELLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Cli {
    pub fn load(&self) -> Result<ApiConfig, ConfigError> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => ApiConfig::from_toml(&text, &path)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => ApiConfig::default(),
            Err(e) => {
                return Err(ConfigError {
                    field: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.etcd_endpoints {
            cfg.etcd.endpoints = v.clone();
        }
        if let Some(v) = &self.etcd_prefix {
            cfg.etcd.prefix = v.clone();
        }
        if self.etcd_ca_file.is_some() {
            cfg.etcd.ca_file = self.etcd_ca_file.clone();
        }
        if self.etcd_cert_file.is_some() {
            cfg.etcd.cert_file = self.etcd_cert_file.clone();
        }
        if self.etcd_key_file.is_some() {
            cfg.etcd.key_file = self.etcd_key_file.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
