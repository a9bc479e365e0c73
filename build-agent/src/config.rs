//! Agent configuration: a TOML file (`/etc/cellplane/build-agent.toml`), `CELLPLANE_*`
//! environment variables and flags. Precedence: defaults < file < env < flags (clap's `env`
//! attribute puts env under flags; the file is read first and overridden field by field).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cellplane_etcd::EtcdConfig;
use clap::Parser;
use serde::Deserialize;

use crate::error::AgentError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cellplane/build-agent.toml";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/cellplane/build-agent";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Agent name under `builds/agents/`; defaults to the host name.
    pub name: String,
    /// Builds run at once; more wait in FIFO order of submission.
    pub capacity: u32,
    /// Free-form labels published in the registration.
    pub labels: BTreeMap<String, String>,
    /// Address of the HTTP server (build logs, `/healthz`, `/metrics`).
    pub http_listen: SocketAddr,
    /// Base URL the control API uses to reach `http_listen` (default `http://{host name}:{port}`).
    pub endpoint: String,
    /// Git caches, dependency caches, workspaces, logs.
    pub work_dir: PathBuf,
    /// Per-step timeout when the request gives none.
    pub step_timeout_secs: u64,
    /// TTL of the lease the registration is bound to.
    pub lease_ttl_secs: i64,
    /// Build logs older than this are deleted (0: keep forever).
    pub log_retention_days: u64,
    /// Longest SIGTERM waits for running builds to be stopped and recorded.
    pub shutdown_timeout_secs: u64,
    /// Retry period after a failed etcd read or write.
    pub retry_ms: u64,
    /// `buildah rmi` the image once pushed (it stays in the registry).
    pub remove_images: bool,
    /// The git binary.
    pub git: PathBuf,
    /// `--ulimit` values given to buildah and podman (FIELD-NOTES: nproc above 32768 is refused).
    pub ulimits: Vec<String>,
    pub registry: RegistrySettings,
    pub image: ImageSettings,
    pub compile: CompileSettings,
    pub containers: ContainersSettings,
    pub etcd: EtcdConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: String::new(),
            capacity: 2,
            labels: BTreeMap::new(),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 9190)),
            endpoint: String::new(),
            work_dir: PathBuf::from(DEFAULT_WORK_DIR),
            step_timeout_secs: 1800,
            lease_ttl_secs: 10,
            log_retention_days: 14,
            shutdown_timeout_secs: 20,
            retry_ms: 1000,
            remove_images: true,
            git: PathBuf::from("git"),
            ulimits: vec!["nofile=20000:20000".into(), "nproc=32768:32768".into()],
            registry: RegistrySettings::default(),
            image: ImageSettings::default(),
            compile: CompileSettings::default(),
            containers: ContainersSettings::default(),
            etcd: EtcdConfig::default(),
        }
    }
}

/// `[registry]`: where images are pushed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// `host[:port]`; images are pushed as `{address}/{image}:{tag}`.
    pub address: String,
    pub tls_verify: bool,
    /// A containers-auth.json (`{"auths": {"host:port": {"auth": "base64(user:password)"}}}`),
    /// passed with `--authfile`; its secrets are redacted from every log line.
    pub auth_file: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            address: "localhost:5000".into(),
            tls_verify: true,
            auth_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    Buildah,
    Docker,
}

/// `[image]`: how images are built and pushed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    /// `buildah` (daemonless, the default) or `docker` (needs a running docker daemon).
    pub builder: Builder,
    pub buildah: PathBuf,
    pub docker: PathBuf,
    /// buildah's `--isolation` for RUN steps.
    pub isolation: String,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            builder: Builder::Buildah,
            buildah: PathBuf::from("buildah"),
            docker: PathBuf::from("docker"),
            isolation: "chroot".into(),
        }
    }
}

/// `[compile]`: the compile container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompileSettings {
    pub podman: PathBuf,
    /// OCI runtime (FIELD-NOTES: crun fails on this kernel's hybrid cgroups; runc works).
    pub runtime: String,
    /// podman `--network` (`host` lets the compile reach the dependency repositories).
    pub network: String,
}

impl Default for CompileSettings {
    fn default() -> Self {
        CompileSettings {
            podman: PathBuf::from("podman"),
            runtime: "runc".into(),
            network: "host".into(),
        }
    }
}

/// `[containers]`: storage passed to buildah and podman (`--root`, `--runroot`,
/// `--storage-driver`); the system's defaults when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersSettings {
    pub root: Option<PathBuf>,
    pub runroot: Option<PathBuf>,
    pub storage_driver: Option<String>,
}

impl AgentConfig {
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms.max(10))
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<AgentConfig, AgentError> {
        toml::from_str(text).map_err(|e| AgentError::Config {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The registry as it appears in image references (`host:port`).
    pub fn image_ref(&self, image: &str, tag: &str) -> String {
        format!(
            "{}/{image}:{tag}",
            self.registry.address.trim_end_matches('/')
        )
    }

    /// Checks what cannot be checked by types.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &str, reason: String| AgentError::Config {
            field: field.into(),
            reason,
        };
        cellplane_core::validation::validate_name("name", &self.name)
            .map_err(|e| bad("name", e.to_string()))?;
        if self.name.contains('/') {
            return Err(bad("name", "must not contain '/'".into()));
        }
        self.etcd
            .validate()
            .map_err(|e| bad("etcd", e.to_string()))?;
        if self.capacity == 0 || self.capacity > 256 {
            return Err(bad("capacity", "must be 1 to 256".into()));
        }
        if self.lease_ttl_secs < 2 {
            return Err(bad("lease_ttl_secs", "must be at least 2".into()));
        }
        if self.step_timeout_secs == 0 {
            return Err(bad("step_timeout_secs", "must be at least 1".into()));
        }
        if !self.work_dir.is_absolute() {
            return Err(bad(
                "work_dir",
                format!("{} must be absolute", self.work_dir.display()),
            ));
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(bad(
                "endpoint",
                format!("{:?} must be an http:// or https:// URL", self.endpoint),
            ));
        }
        let reg = &self.registry.address;
        if reg.is_empty()
            || reg.starts_with('-')
            || reg.contains("://")
            || reg.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "registry.address",
                format!("{reg:?} must be host[:port] (no scheme, no spaces)"),
            ));
        }
        if let Some(f) = &self.registry.auth_file {
            if !f.is_absolute() {
                return Err(bad(
                    "registry.auth_file",
                    format!("{} must be absolute", f.display()),
                ));
            }
            if self.image.builder == Builder::Docker {
                return Err(bad(
                    "registry.auth_file",
                    "is supported with image.builder = \"buildah\" only (docker reads its own config)"
                        .into(),
                ));
            }
        }
        for u in &self.ulimits {
            if u.starts_with('-') || u.chars().any(char::is_whitespace) || !u.contains('=') {
                return Err(bad("ulimits", format!("{u:?} must look like nofile=N:N")));
            }
        }
        for (field, p) in [
            ("containers.root", &self.containers.root),
            ("containers.runroot", &self.containers.runroot),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(bad(field, format!("{} must be absolute", p.display())));
                }
            }
        }
        Ok(())
    }
}

/// Command line; every flag also reads a `CELLPLANE_*` variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "build-agent",
    version,
    about = "cellplane build agent: etcd build tasks -> fetch, compile, image build, push"
)]
pub struct Cli {
    /// Config file; a missing file is an error only when given explicitly.
    #[arg(long, short = 'c', env = "CELLPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: cellplane_etcd::EtcdArgs,
    /// Agent name (default: the host name).
    #[arg(long, env = "CELLPLANE_BUILD_AGENT_NAME")]
    pub name: Option<String>,
    #[arg(long, env = "CELLPLANE_BUILD_CAPACITY")]
    pub capacity: Option<u32>,
    #[arg(long, env = "CELLPLANE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Advertised base URL of the HTTP server.
    #[arg(long, env = "CELLPLANE_BUILD_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, env = "CELLPLANE_BUILD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Registry `host:port`.
    #[arg(long, env = "CELLPLANE_BUILD_REGISTRY")]
    pub registry: Option<String>,
    /// Log level filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "CELLPLANE_LOG", default_value = "info")]
    pub log: String,
    /// Log format: text or json.
    #[arg(long, env = "CELLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_lowercase()
}

impl Cli {
    /// defaults < file < env < flags, then derived defaults, then validation.
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
            Err(e) => return Err(AgentError::io(&path, e)),
        };
        self.apply(&mut cfg);
        fill_defaults(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply(&self, cfg: &mut AgentConfig) {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut cfg.name, &self.name);
        set(&mut cfg.capacity, &self.capacity);
        self.etcd.apply(&mut cfg.etcd);
        set(&mut cfg.http_listen, &self.http_listen);
        set(&mut cfg.endpoint, &self.endpoint);
        set(&mut cfg.work_dir, &self.work_dir);
        set(&mut cfg.registry.address, &self.registry);
    }
}

/// The name defaults to the host name, the endpoint to `http://{host name}:{port}`.
pub fn fill_defaults(cfg: &mut AgentConfig) {
    if cfg.name.is_empty() {
        cfg.name = host_name();
    }
    if cfg.endpoint.is_empty() {
        let ip = cfg.http_listen.ip();
        let host = if ip.is_unspecified() {
            host_name()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        cfg.endpoint = format!("http://{host}:{}", cfg.http_listen.port());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_defaults_file_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "name = \"b1\"\ncapacity = 3\nhttp_listen = \"127.0.0.1:7000\"\n[registry]\naddress = \"127.0.0.1:5000\"\ntls_verify = false\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n[containers]\nroot = \"/tmp/r\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["build-agent", "-c", path.to_str().unwrap()]).unwrap();
        let cfg = cli.load().unwrap();
        assert_eq!(cfg.name, "b1");
        assert_eq!(cfg.capacity, 3);
        assert_eq!(cfg.endpoint, "http://127.0.0.1:7000");
        assert!(!cfg.registry.tls_verify);
        assert_eq!(cfg.containers.root, Some(PathBuf::from("/tmp/r")));
        assert_eq!(cfg.step_timeout_secs, 1800);
        let cli = Cli::try_parse_from([
            "build-agent",
            "-c",
            path.to_str().unwrap(),
            "--name",
            "b2",
            "--endpoint",
            "http://10.0.0.5:7000",
            "--etcd-endpoints",
            "http://127.0.0.1:2,http://127.0.0.1:3",
        ])
        .unwrap();
        let cfg = cli.load().unwrap();
        assert_eq!(cfg.name, "b2");
        assert_eq!(cfg.endpoint, "http://10.0.0.5:7000");
        assert_eq!(cfg.etcd.endpoints.len(), 2);
        assert_eq!(cfg.capacity, 3);
        std::fs::write(&path, "nmae = \"x\"\n").unwrap();
        let e = Cli::try_parse_from(["build-agent", "-c", path.to_str().unwrap()])
            .unwrap()
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }

    #[test]
    fn refuses_bad_settings() {
        let mut c = AgentConfig {
            name: "a1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            ..AgentConfig::default()
        };
        c.validate().unwrap();
        c.registry.address = "https://r:5000".into();
        assert!(c.validate().unwrap_err().to_string().contains("registry"));
        c.registry.address = "r:5000".into();
        c.capacity = 0;
        assert!(c.validate().unwrap_err().to_string().contains("capacity"));
        c.capacity = 1;
        c.work_dir = "rel".into();
        assert!(c.validate().unwrap_err().to_string().contains("work_dir"));
    }

    #[test]
    fn shipped_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-agent/build-agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cfg = AgentConfig::from_toml(&text, &path).unwrap();
        fill_defaults(&mut cfg);
        cfg.validate().unwrap();
    }
}
