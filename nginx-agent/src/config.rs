//! Agent configuration: a TOML file (`/etc/cellplane/nginx-agent.toml`), `CELLPLANE_*`
//! environment variables and flags. Precedence: defaults < file < env < flags (clap's `env`
//! attribute puts env under flags; the file is read first and overridden field by field).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cellplane_etcd::EtcdConfig;
use clap::Parser;
use serde::Deserialize;

use crate::error::AgentError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cellplane/nginx-agent.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The SLB group this host serves (`slb/{group}/`).
    pub group: String,
    /// Member name under `slb/{group}/members/`; defaults to the host name.
    pub host: String,
    /// Address of the agent's own `/healthz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Quiet time after the last config change before a reload.
    pub debounce_ms: u64,
    /// Longest a pending config change waits under a steady stream of changes.
    pub max_debounce_ms: u64,
    /// TTL of the lease the member status key is bound to.
    pub lease_ttl_secs: i64,
    /// Retry period after a failed etcd read, upstream push or status write.
    pub retry_ms: u64,
    pub etcd: EtcdConfig,
    pub nginx: NginxSettings,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            group: String::new(),
            host: String::new(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            debounce_ms: 500,
            max_debounce_ms: 5_000,
            lease_ttl_secs: 10,
            retry_ms: 1_000,
            etcd: EtcdConfig::default(),
            nginx: NginxSettings::default(),
        }
    }
}

/// The `[nginx]` table: how the agent renders, checks and signals nginx.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NginxSettings {
    pub binary: PathBuf,
    /// nginx's `-p` prefix (relative paths in the config resolve against it).
    pub prefix: PathBuf,
    /// Owned by the agent: `current` (symlink to the live generation), `generations/`,
    /// `upstreams.json` (the snapshot that seeds the shared dict when nginx starts).
    /// nginx runs with `-c {conf_dir}/current/nginx.conf`.
    pub conf_dir: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    /// `off` or a path.
    pub access_log: String,
    pub temp_dir: PathBuf,
    /// Address every domain's `listen` ports bind to.
    pub listen_address: String,
    /// Loopback address of the admin server (upstream pushes, generation check).
    pub admin_listen: SocketAddr,
    pub worker_processes: String,
    pub worker_connections: u32,
    pub worker_shutdown_timeout_secs: u64,
    pub keepalive_requests: u32,
    pub upstream_keepalive: u32,
    pub shared_dict_size: String,
    pub modules: Vec<PathBuf>,
    pub lua_cpath: String,
    /// How long to wait for the new generation to answer after a HUP before rolling back.
    pub reload_confirm_timeout_ms: u64,
    /// Generations kept on disk besides the live one.
    pub keep_generations: usize,
}

impl Default for NginxSettings {
    fn default() -> Self {
        NginxSettings {
            binary: PathBuf::from("nginx"),
            prefix: PathBuf::from("/var/lib/cellplane/nginx"),
            conf_dir: PathBuf::from("/etc/cellplane/nginx"),
            pid_file: PathBuf::from("/run/cellplane-nginx.pid"),
            error_log: PathBuf::from("/var/log/cellplane/nginx-error.log"),
            access_log: "off".into(),
            temp_dir: PathBuf::from("/var/lib/cellplane/nginx/temp"),
            listen_address: "0.0.0.0".into(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9181)),
            worker_processes: "auto".into(),
            worker_connections: 8192,
            worker_shutdown_timeout_secs: 60,
            keepalive_requests: 10_000,
            upstream_keepalive: 64,
            shared_dict_size: "32m".into(),
            modules: vec![
                PathBuf::from("/usr/lib/nginx/modules/ndk_http_module.so"),
                PathBuf::from("/usr/lib/nginx/modules/ngx_http_lua_module.so"),
            ],
            lua_cpath: "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;".into(),
            reload_confirm_timeout_ms: 10_000,
            keep_generations: 2,
        }
    }
}

impl AgentConfig {
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
    pub fn max_debounce(&self) -> Duration {
        Duration::from_millis(self.max_debounce_ms.max(self.debounce_ms))
    }
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms.max(10))
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<AgentConfig, AgentError> {
        toml::from_str(text).map_err(|e| AgentError::Config {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks what cannot be checked by types.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &str, reason: String| AgentError::Config {
            field: field.into(),
            reason,
        };
        cellplane_core::validation::validate_name("group", &self.group)
            .map_err(|e| bad("group", e.to_string()))?;
        cellplane_core::validation::validate_name("host", &self.host)
            .map_err(|e| bad("host", e.to_string()))?;
        self.etcd
            .validate()
            .map_err(|e| bad("etcd", e.to_string()))?;
        if !self.nginx.admin_listen.ip().is_loopback() {
            return Err(bad(
                "nginx.admin_listen",
                format!("{} must be a loopback address", self.nginx.admin_listen),
            ));
        }
        if self.lease_ttl_secs < 2 {
            return Err(bad("lease_ttl_secs", "must be at least 2".into()));
        }
        for (field, p) in [
            ("nginx.conf_dir", &self.nginx.conf_dir),
            ("nginx.prefix", &self.nginx.prefix),
            ("nginx.pid_file", &self.nginx.pid_file),
        ] {
            if !p.is_absolute() {
                return Err(bad(field, format!("{} must be absolute", p.display())));
            }
        }
        Ok(())
    }
}

/// Command line; every flag also reads a `CELLPLANE_*` variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "nginx-agent",
    version,
    about = "etcd watch -> nginx for one SLB group"
)]
pub struct Cli {
    /// Config file; a missing file is an error only when given explicitly.
    #[arg(long, short = 'c', env = "CELLPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: cellplane_etcd::EtcdArgs,
    #[arg(long, env = "CELLPLANE_GROUP")]
    pub group: Option<String>,
    #[arg(long, env = "CELLPLANE_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "CELLPLANE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[arg(long, env = "CELLPLANE_DEBOUNCE_MS")]
    pub debounce_ms: Option<u64>,
    #[arg(long, env = "CELLPLANE_NGINX_BINARY")]
    pub nginx_binary: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_NGINX_CONF_DIR")]
    pub nginx_conf_dir: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_NGINX_PID_FILE")]
    pub nginx_pid_file: Option<PathBuf>,
    #[arg(long, env = "CELLPLANE_NGINX_ADMIN_LISTEN")]
    pub nginx_admin_listen: Option<SocketAddr>,
    /// Log level filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "CELLPLANE_LOG", default_value = "info")]
    pub log: String,
    /// Log format: text or json.
    #[arg(long, env = "CELLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Cli {
    /// defaults < file < env < flags, then validation.
    pub fn load(&self) -> Result<AgentConfig, AgentError> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => AgentConfig::from_toml(&text, &path)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                AgentConfig::default()
            }
            Err(e) => {
                return Err(AgentError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        self.apply(&mut cfg);
        if cfg.host.is_empty() {
            cfg.host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_lowercase();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply(&self, cfg: &mut AgentConfig) {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut cfg.group, &self.group);
        set(&mut cfg.host, &self.host);
        self.etcd.apply(&mut cfg.etcd);
        set(&mut cfg.http_listen, &self.http_listen);
        set(&mut cfg.debounce_ms, &self.debounce_ms);
        set(&mut cfg.nginx.binary, &self.nginx_binary);
        set(&mut cfg.nginx.conf_dir, &self.nginx_conf_dir);
        set(&mut cfg.nginx.pid_file, &self.nginx_pid_file);
        set(&mut cfg.nginx.admin_listen, &self.nginx_admin_listen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "group = \"g1\"\nhost = \"h1\"\ndebounce_ms = 200\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n[nginx]\nconf_dir = \"/tmp/x\"\n",
        )
        .unwrap();
        // file over defaults
        let cli = Cli::try_parse_from(["nginx-agent", "-c", path.to_str().unwrap()]).unwrap();
        let cfg = cli.load().unwrap();
        assert_eq!(cfg.group, "g1");
        assert_eq!(cfg.debounce_ms, 200);
        assert_eq!(cfg.nginx.conf_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.max_debounce_ms, 5_000);
        // flags over file (env is clap's: it fills the same Option when the flag is absent)
        let cli = Cli::try_parse_from([
            "nginx-agent",
            "-c",
            path.to_str().unwrap(),
            "--group",
            "g2",
            "--etcd-endpoints",
            "http://127.0.0.1:2,http://127.0.0.1:3",
        ])
        .unwrap();
        let cfg = cli.load().unwrap();
        assert_eq!(cfg.group, "g2");
        assert_eq!(cfg.etcd.endpoints.len(), 2);
        assert_eq!(cfg.host, "h1");
        // unknown keys are refused
        std::fs::write(&path, "grup = \"g1\"\n").unwrap();
        assert!(
            Cli::try_parse_from(["nginx-agent", "-c", path.to_str().unwrap()])
                .unwrap()
                .load()
                .is_err()
        );
    }
}
