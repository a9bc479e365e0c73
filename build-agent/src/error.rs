//! The agent's errors. Step failures are not errors of the agent: they end up in the build's
//! status (see `runner`).

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
    #[error("the registration lease was lost ({0}); exiting so that the service manager restarts the agent")]
    LeaseLost(String),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}
