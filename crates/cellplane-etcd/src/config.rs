//! The `[etcd]` table shared by every component's config, and the CNI config's `etcd` object.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::EtcdError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.11:2379`.
    pub endpoints: Vec<String>,
    /// Root of every cellplane key.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Deadline of each request (and of connecting).
    pub timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: cellplane_core::keys::DEFAULT_PREFIX.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_ms: 3000,
        }
    }
}

impl EtcdConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::Config {
                field: "endpoints",
                reason: "at least one endpoint is needed".into(),
            });
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(EtcdError::Config {
                    field: "endpoints",
                    reason: format!("{e:?} must start with http:// or https://"),
                });
            }
        }
        if self.timeout_ms == 0 {
            return Err(EtcdError::Config {
                field: "timeout_ms",
                reason: "must be greater than 0".into(),
            });
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(EtcdError::Config {
                field: "cert_file",
                reason: "cert_file and key_file go together".into(),
            });
        }
        if !self.prefix.is_empty() && !self.prefix.starts_with('/') {
            return Err(EtcdError::Config {
                field: "prefix",
                reason: format!("{:?} must start with '/'", self.prefix),
            });
        }
        Ok(())
    }
}

/// The etcd flags every daemon and `cnictl` take (`#[command(flatten)]`), each also read from a
/// `CELLPLANE_ETCD_*` variable; clap lets a flag win over its variable, and [`EtcdArgs::apply`]
/// lets both win over the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        global = true,
        env = "CELLPLANE_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Root of every cellplane key.
    #[arg(long, global = true, env = "CELLPLANE_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    #[arg(long, global = true, env = "CELLPLANE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CELLPLANE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CELLPLANE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Deadline of each etcd request, in milliseconds.
    #[arg(long, global = true, env = "CELLPLANE_ETCD_TIMEOUT_MS")]
    pub etcd_timeout_ms: Option<u64>,
}

impl EtcdArgs {
    /// Overrides `cfg` with what was given (empty entries of the endpoint list are dropped).
    pub fn apply(&self, cfg: &mut EtcdConfig) {
        if let Some(v) = &self.etcd_endpoints {
            cfg.endpoints = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = &self.etcd_prefix {
            cfg.prefix = v.clone();
        }
        for (dst, src) in [
            (&mut cfg.ca_file, &self.etcd_ca_file),
            (&mut cfg.cert_file, &self.etcd_cert_file),
            (&mut cfg.key_file, &self.etcd_key_file),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        if let Some(v) = self.etcd_timeout_ms {
            cfg.timeout_ms = v;
        }
    }
}

#[cfg(test)]
mod args_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn flags_override_only_what_is_given() {
        let cli = Cli::parse_from([
            "x",
            "--etcd-endpoints",
            "http://a:1, ,http://b:2",
            "--etcd-ca-file",
            "/ca.pem",
            "--etcd-timeout-ms",
            "700",
        ]);
        let mut cfg = EtcdConfig {
            prefix: "/from-file".into(),
            cert_file: Some("/c.pem".into()),
            key_file: Some("/k.pem".into()),
            ..EtcdConfig::default()
        };
        cli.etcd.apply(&mut cfg);
        assert_eq!(cfg.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(cfg.prefix, "/from-file");
        assert_eq!(
            cfg.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            cfg.cert_file.as_deref(),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(cfg.timeout_ms, 700);
    }
}
