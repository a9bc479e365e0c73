//! build-agent: runs the builds the control API assigns to this host.
//!
//! `run(config, shutdown)` is the whole daemon (see `agent` for its behaviour); `main.rs` only
//! parses arguments, installs the tracing subscriber and waits for SIGTERM/SIGINT.
//!
//! - [`config`]: `/etc/cellplane/build-agent.toml`, environment, flags.
//! - [`agent`]: registration, the task prefix, the queue, shutdown.
//! - [`runner`]: one build's steps (`fetch`, `checkout`, `compile`, `build`, `push`).
//! - [`process`]: the tools' processes: logging, timeouts, killing the process tree.
//! - [`tools`]: git/buildah/podman command lines and the work directory layout.
//! - [`buildlog`], [`http`]: build logs on disk and over HTTP (`/v1/builds/{build}/log`).
//! - [`redact`]: secrets never reach a log or a status.

pub mod agent;
pub mod buildlog;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod process;
pub mod redact;
pub mod runner;
pub mod tools;

pub use agent::run;
pub use config::{AgentConfig, Cli};
pub use error::AgentError;
