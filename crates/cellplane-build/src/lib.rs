//! Build dispatch shared by the control API and the build agents.
//!
//! - [`types`]: the records under `builds/` (agent registration, task, status).
//! - [`validate`]: what a submitted build may contain (repository URL, ref, paths, image, tag);
//!   the control API refuses anything else with 400 and the agent checks again before running.
//! - [`rendezvous`]: which agent a repository goes to (same repository, same agent).
//! - [`dispatch`]: the etcd transactions: submit, cancel, status updates fenced by the task
//!   key, and recovery of the tasks of an agent whose lease expired.

pub mod dispatch;
pub mod redact;
pub mod rendezvous;
pub mod types;
pub mod validate;

pub use dispatch::{DispatchError, Recovery};
pub use types::{
    AgentRecord, BuildRequest, BuildState, BuildStatus, BuildTask, CompileSpec, StepRecord,
};
pub use validate::{validate_build_id, validate_request, InvalidInput};
