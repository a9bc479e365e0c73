//! Crate errors: one enum per concern, gathered into [`DiscoveryError`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

/// A push to the control API that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("reading the token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the request for {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("control API {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("control API {url} has no config for the domain yet (404)")]
    NotFound { url: String },
    #[error("control API {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes client: {0}")]
    Kube(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
