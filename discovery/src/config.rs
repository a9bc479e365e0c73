//! discovery configuration: TOML file (`/etc/cellplane/discovery.toml`), `CELLPLANE_*`
//! environment variables and flags. Precedence: defaults < file < env < flags (clap's `env`
//! fills the same option as the flag when the flag is absent).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::error::{ConfigError, DiscoveryError};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cellplane/discovery.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Kubeconfig; none: in-cluster config or `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Base URL of the control API (`http://`).
    pub control_api: String,
    /// File holding the bearer token (scope `slb:write`); re-read before every push.
    pub token_file: PathBuf,
    /// `/healthz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Changes to one domain within this window are pushed together (bounded: later changes
    /// do not extend it).
    pub coalesce_ms: u64,
    /// Backoff of failed pushes: first retry after `retry_min_ms`, doubling up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Deadline of one control API request.
    pub request_timeout_ms: u64,
    /// When a Service stops opting in (annotations removed, Service deleted): `false` (default)
    /// pushes an empty list for its domain; `true` leaves the last list in place.
    pub keep_on_opt_out: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            kubeconfig: None,
            control_api: "http://127.0.0.1:8080".into(),
            token_file: PathBuf::from("/etc/cellplane/discovery.token"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9482)),
            coalesce_ms: 50,
            retry_min_ms: 200,
            retry_max_ms: 5000,
            request_timeout_ms: 5000,
            keep_on_opt_out: false,
        }
    }
}

impl DiscoveryConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<DiscoveryConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &str, reason: &str| ConfigError {
            field: field.into(),
            reason: reason.into(),
        };
        if !self.control_api.starts_with("http://") {
            return Err(err("control_api", "must be an http:// URL"));
        }
        if self.coalesce_ms > 10_000 {
            return Err(err("coalesce_ms", "at most 10000"));
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err(err(
                "retry_min_ms",
                "must be > 0 and not above retry_max_ms",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(err("request_timeout_ms", "must be > 0"));
        }
        Ok(())
    }
}

/// Command line; every flag also reads a `CELLPLANE_*` variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "discovery",
    version,
    about = "Kubernetes EndpointSlices -> SLB upstreams"
)]
pub struct Cli {
    /// Config file; a missing file is an error only when given explicitly.
    #[arg(long, short = 'c', env = "CELLPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_CONTROL_API")]
    pub control_api: Option<String>,
    #[arg(long, env = "CELLPLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[arg(long, env = "CELLPLANE_COALESCE_MS")]
    pub coalesce_ms: Option<u64>,
    #[arg(long, env = "CELLPLANE_KEEP_ON_OPT_OUT")]
    pub keep_on_opt_out: Option<bool>,
    /// Log level filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "CELLPLANE_LOG", default_value = "info")]
    pub log: String,
    /// Log format: text or json.
    #[arg(long, env = "CELLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Cli {
    /// defaults < file < env < flags, then validation.
    pub fn load(&self) -> Result<DiscoveryConfig, DiscoveryError> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => DiscoveryConfig::from_toml(&text, &path)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                DiscoveryConfig::default()
            }
            Err(source) => return Err(DiscoveryError::Io { path, source }),
        };
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        if self.kubeconfig.is_some() {
            cfg.kubeconfig = self.kubeconfig.clone();
        }
        set(&mut cfg.control_api, &self.control_api);
        set(&mut cfg.token_file, &self.token_file);
        set(&mut cfg.http_listen, &self.http_listen);
        set(&mut cfg.coalesce_ms, &self.coalesce_ms);
        set(&mut cfg.keep_on_opt_out, &self.keep_on_opt_out);
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_defaults_file_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(
            &path,
            "control_api = \"http://127.0.0.1:9000\"\ncoalesce_ms = 20\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["discovery", "-c", path.to_str().unwrap()]).unwrap();
        let c = cli.load().unwrap();
        assert_eq!(c.control_api, "http://127.0.0.1:9000");
        assert_eq!(c.coalesce_ms, 20);
        assert_eq!(c.retry_max_ms, DiscoveryConfig::default().retry_max_ms);
        let cli = Cli::try_parse_from([
            "discovery",
            "-c",
            path.to_str().unwrap(),
            "--coalesce-ms",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.load().unwrap().coalesce_ms, 5);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let cli = Cli::try_parse_from(["discovery", "-c", path.to_str().unwrap()]).unwrap();
        assert!(cli.load().is_err(), "unknown keys are refused");
        let cli = Cli::try_parse_from(["discovery", "-c", "/nonexistent/d.toml"]).unwrap();
        assert!(cli.load().is_err(), "an explicit missing file is an error");
    }
}
