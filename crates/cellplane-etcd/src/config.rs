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
