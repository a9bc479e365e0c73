use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid setting {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Etcd(#[from] cellplane_etcd::EtcdError),
    #[error(transparent)]
    Nginx(#[from] NginxError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}

#[derive(Debug, Error)]
pub enum NginxError {
    #[error("nginx rejected {conf}: {output}")]
    Rejected { conf: PathBuf, output: String },
    #[error("could not run {binary}: {source}")]
    Exec {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signal {signal} to nginx master {pid} failed: {source}")]
    Signal {
        pid: i32,
        signal: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("nginx master {pid} did not serve generation {generation} within {timeout_ms} ms after HUP (last seen: {seen})")]
    ReloadNotConfirmed {
        pid: i32,
        generation: String,
        seen: String,
        timeout_ms: u64,
    },
}

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("nginx admin at {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("nginx admin at {addr} answered {status} to {path}: {body}")]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
}
