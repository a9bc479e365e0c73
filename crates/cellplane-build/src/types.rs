//! Records stored under `builds/` (ARCHITECTURE.md, "etcd key schema"):
//!
//! - `builds/agents/{agent}` → [`AgentRecord`], bound to the agent's lease.
//! - `builds/tasks/{agent}/{build}` → [`BuildTask`]: the build assigned to that agent. It exists
//!   while the build is queued or running; the agent deletes it when the build ends.
//! - `builds/status/{build}` → [`BuildStatus`]: state, agent, step timings, image, digest, error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A live build agent (lease-bound: the key disappears when the agent stops keeping it alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The host the agent runs on.
    pub host: String,
    /// Builds it runs at once; more are queued in its task prefix.
    pub capacity: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Base URL of its HTTP server (logs, health), e.g. `http://10.0.0.5:7070`.
    pub endpoint: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub started_at_ms: u64,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}
fn default_context() -> String {
    ".".into()
}
fn default_cache_mount() -> String {
    "/cache".into()
}

/// What a user submits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Git URL: `https://`, `http://`, `ssh://`, `git://`, `file://`, or `user@host:path`.
    pub repo: String,
    /// Branch, tag or commit to build.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The Dockerfile, relative to the repository root.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// The build context, relative to the repository root.
    #[serde(default = "default_context")]
    pub context: String,
    /// Image name without registry or tag, e.g. `team/app`; the agent's registry is prepended.
    pub image: String,
    /// Tag to push; the commit id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// An optional compile step run in a container before the image build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<CompileSpec>,
    /// Run once more on another agent when the agent dies mid-build.
    #[serde(default)]
    pub retry: bool,
    /// Per-step timeout (seconds); the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout_secs: Option<u64>,
}

/// The compile step: `command` runs with `sh -c` in `image`, the checkout mounted at
/// `/workspace` (the working directory) and the repository's dependency cache at `cache_mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileSpec {
    /// A local image (name[:tag]).
    pub image: String,
    /// Shell command, e.g. `mvn -q package` or `./build.sh` from the repository.
    pub command: String,
    /// Where the per-repository dependency cache is mounted, e.g. `/root/.m2`.
    #[serde(default = "default_cache_mount")]
    pub cache_mount: String,
    /// Extra environment for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `builds/tasks/{agent}/{build}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTask {
    pub build: String,
    pub request: BuildRequest,
    /// 0 for the first run, 1 for the retry after a lost agent.
    #[serde(default)]
    pub attempt: u32,
    pub submitted_at_ms: u64,
    /// Who submitted it (token name, or `webhook:<project>`).
    #[serde(default)]
    pub submitted_by: String,
    /// Set by a cancel request; the agent stops the build (or never starts it).
    #[serde(default)]
    pub cancel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }
}

/// One step: `fetch`, `checkout`, `compile`, `build`, `push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub started_at_ms: u64,
    /// Absent while the step runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// Why it failed (or a short note, e.g. a cache hit count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `builds/status/{build}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStatus {
    pub build: String,
    pub state: BuildState,
    /// The agent it is assigned to (or ran on).
    pub agent: String,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub submitted_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The commit the ref resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// The pushed image reference, `registry/name:tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The pushed manifest digest, `sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Earlier attempts and moves, oldest first (e.g. "agent a1 lost during compile").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

impl BuildStatus {
    /// The status written with a new task (a password in the repository URL is masked).
    pub fn queued(task: &BuildTask, agent: &str) -> BuildStatus {
        BuildStatus {
            build: task.build.clone(),
            state: BuildState::Queued,
            agent: agent.to_string(),
            repo: crate::redact::redact_url_userinfo(&task.request.repo),
            git_ref: task.request.git_ref.clone(),
            attempt: task.attempt,
            submitted_at_ms: task.submitted_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            commit: None,
            steps: Vec::new(),
            image: None,
            digest: None,
            error: None,
            failed_step: None,
            history: Vec::new(),
        }
    }

    /// The step that is running (started, no duration yet), if any.
    pub fn running_step(&self) -> Option<&str> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.duration_ms.is_none())
            .map(|s| s.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_defaults_and_unknown_fields() {
        let r: BuildRequest =
            serde_json::from_str(r#"{"repo":"file:///r","ref":"main","image":"a/b"}"#).unwrap();
        assert_eq!(r.dockerfile, "Dockerfile");
        assert_eq!(r.context, ".");
        assert!(r.tag.is_none() && r.compile.is_none() && !r.retry);
        let e = serde_json::from_str::<BuildRequest>(
            r#"{"repo":"file:///r","ref":"main","image":"a/b","tga":"x"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tga"), "{e}");
    }

    #[test]
    fn state_names() {
        assert_eq!(
            serde_json::to_string(&BuildState::Cancelled).unwrap(),
            "\"cancelled\""
        );
        assert!(BuildState::Failed.is_terminal() && !BuildState::Running.is_terminal());
    }
}
