//! control-api configuration: TOML file (`/etc/cellplane/control-api.toml`), `CELLPLANE_*`
//! environment variables and flags; defaults < file < env < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cellplane_build::{validate_request, BuildRequest, CompileSpec};
use cellplane_etcd::EtcdConfig;
use clap::Parser;
use serde::Deserialize;

use crate::auth::Scope;
use crate::error::ConfigError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cellplane/control-api.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub etcd: EtcdConfig,
    /// Bearer tokens. Keep the file readable by the service only.
    pub tokens: Vec<TokenConfig>,
    /// `[builds]`: recovery of lost agents' tasks, the log proxy.
    pub builds: BuildsConfig,
    /// `[webhook]`: the GitLab push webhook and the projects it builds.
    pub webhook: WebhookConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            etcd: EtcdConfig::default(),
            tokens: Vec::new(),
            builds: BuildsConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildsConfig {
    /// Seconds between full scans for tasks of lost agents (a deleted registration is handled
    /// at once through a watch; the scan catches the rest).
    pub recovery_rescan_secs: u64,
    /// Connecting to an agent and waiting for its response headers when proxying a log (ms).
    pub agent_timeout_ms: u64,
    /// The status of a build that ended is deleted this many hours after it ended (checked
    /// every hour); 0 keeps every status forever.
    pub status_retention_hours: u64,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        BuildsConfig {
            recovery_rescan_secs: 10,
            agent_timeout_ms: 5000,
            status_retention_hours: 24 * 7,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The secret token GitLab sends in `X-Gitlab-Token`.
    pub gitlab_secret: Option<String>,
    /// Or a file holding it (trailing white space ignored).
    pub gitlab_secret_file: Option<PathBuf>,
    /// The projects whose pushes are built.
    pub projects: Vec<WebhookProject>,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}
fn default_context() -> String {
    ".".into()
}

/// `[[webhook.projects]]`: how pushes to one GitLab project are built.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookProject {
    /// GitLab's `path_with_namespace`, e.g. `team/app`.
    pub path: String,
    /// The URL agents clone; the event's `git_http_url` when absent.
    #[serde(default)]
    pub repo: Option<String>,
    /// Image name without registry or tag; the tag is the pushed commit.
    pub image: String,
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default = "default_context")]
    pub context: String,
    /// Branches to build (exact names, or a prefix ending in `*`); every branch when empty.
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub compile: Option<CompileSpec>,
    #[serde(default)]
    pub retry: bool,
    #[serde(default)]
    pub step_timeout_secs: Option<u64>,
}

impl WebhookProject {
    /// The build of `commit` from `repo` (the configured repo wins over the event's URL).
    pub fn request(&self, event_repo: &str, commit: &str) -> BuildRequest {
        BuildRequest {
            repo: self.repo.clone().unwrap_or_else(|| event_repo.to_string()),
            git_ref: commit.to_string(),
            dockerfile: self.dockerfile.clone(),
            context: self.context.clone(),
            image: self.image.clone(),
            tag: None,
            compile: self.compile.clone(),
            retry: self.retry,
            step_timeout_secs: self.step_timeout_secs,
        }
    }

    /// Whether pushes to `branch` are built.
    pub fn builds_branch(&self, branch: &str) -> bool {
        self.branches.is_empty()
            || self.branches.iter().any(|b| match b.strip_suffix('*') {
                Some(prefix) => branch.starts_with(prefix),
                None => b == branch,
            })
    }
}

impl WebhookConfig {
    /// The secret, read from `gitlab_secret_file` if that is the one set.
    pub fn secret(&self) -> Result<Option<String>, ConfigError> {
        match (&self.gitlab_secret, &self.gitlab_secret_file) {
            (Some(_), Some(_)) => Err(ConfigError {
                field: "webhook.gitlab_secret_file".into(),
                reason: "set either webhook.gitlab_secret or webhook.gitlab_secret_file, not both"
                    .into(),
            }),
            (Some(s), None) => Ok(Some(s.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end().to_string()))
                .map_err(|e| ConfigError {
                    field: "webhook.gitlab_secret_file".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                }),
            (None, None) => Ok(None),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.secret()?;
        let secret_field = if self.gitlab_secret_file.is_some() {
            "webhook.gitlab_secret_file"
        } else {
            "webhook.gitlab_secret"
        };
        match &secret {
            Some(s) if s.len() < 16 => {
                return Err(ConfigError {
                    field: secret_field.into(),
                    reason: "must be at least 16 characters".into(),
                })
            }
            None if !self.projects.is_empty() => {
                return Err(ConfigError {
                    field: "webhook.gitlab_secret".into(),
                    reason: "required when webhook.projects are configured (or gitlab_secret_file)"
                        .into(),
                })
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            let at = |field: &str| format!("webhook.projects[{i}].{field}");
            if p.path.is_empty() || p.path.starts_with('/') || p.path.ends_with('/') {
                return Err(ConfigError {
                    field: at("path"),
                    reason: format!(
                        "{:?}: must be the project's path with namespace, e.g. \"team/app\"",
                        p.path
                    ),
                });
            }
            if !seen.insert(p.path.to_ascii_lowercase()) {
                return Err(ConfigError {
                    field: at("path"),
                    reason: format!("{:?}: configured twice", p.path),
                });
            }
            // everything a build of this project will contain, with a stand-in repo and commit
            let sample = p.request(
                "https://gitlab.invalid/stand-in.git",
                "0123456789abcdef0123456789abcdef01234567",
            );
            validate_request(&sample).map_err(|e| ConfigError {
                field: at(e.field),
                reason: format!("{:?}: {}", e.value, e.reason),
            })?;
            for (j, b) in p.branches.iter().enumerate() {
                let name = b.strip_suffix('*').unwrap_or(b);
                let ok = (name.is_empty() && b == "*")
                    || cellplane_build::validate::validate_ref(name.trim_end_matches('/')).is_ok();
                if !ok {
                    return Err(ConfigError {
                        field: at(&format!("branches[{j}]")),
                        reason: format!(
                            "{b:?}: must be a branch name, or a prefix followed by '*'"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; appears in the audit log, never the token itself.
    pub name: String,
    pub token: String,
    /// `read`, `slb:write`, `builds:write`, `pools:write`, `admin`.
    pub scopes: Vec<Scope>,
}

impl ApiConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<ApiConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.etcd.validate().map_err(|e| ConfigError {
            field: "etcd".into(),
            reason: e.to_string(),
        })?;
        if self.builds.recovery_rescan_secs == 0 {
            return Err(ConfigError {
                field: "builds.recovery_rescan_secs".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.builds.agent_timeout_ms == 0 {
            return Err(ConfigError {
                field: "builds.agent_timeout_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        self.webhook.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                return Err(ConfigError {
                    field: format!("tokens[{i}].token"),
                    reason: "must be at least 16 characters".into(),
                });
            }
            if !seen.insert(&t.token) {
                return Err(ConfigError {
                    field: format!("tokens[{i}].token"),
                    reason: "duplicate token".into(),
                });
            }
            if t.name.is_empty() {
                return Err(ConfigError {
                    field: format!("tokens[{i}].name"),
                    reason: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Parser)]
#[command(
    name = "control-api",
    version,
    about = "cellplane control API (HTTP/JSON over etcd)"
)]
pub struct Cli {
    #[arg(long, short = 'c', env = "CELLPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: cellplane_etcd::EtcdArgs,
    #[arg(long, env = "CELLPLANE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "CELLPLANE_LOG", default_value = "info")]
    pub log: String,
    #[arg(long, env = "CELLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Cli {
    pub fn load(&self) -> Result<ApiConfig, ConfigError> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => ApiConfig::from_toml(&text, &path)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => ApiConfig::default(),
            Err(e) => {
                return Err(ConfigError {
                    field: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        self.etcd.apply(&mut cfg.etcd);
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ApiConfig, ConfigError> {
        let cfg = ApiConfig::from_toml(text, Path::new("t.toml"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    const PROJECT: &str = "[webhook]\ngitlab_secret = \"0123456789abcdef\"\n[[webhook.projects]]\npath = \"team/app\"\nimage = \"team/app\"\n";

    #[test]
    fn webhook_settings() {
        let cfg = load(&format!(
            "{PROJECT}branches = [\"main\", \"release/*\"]\n[webhook.projects.compile]\nimage = \"maven:3\"\ncommand = \"mvn -q package\"\ncache_mount = \"/root/.m2\"\n"
        ))
        .unwrap();
        let p = &cfg.webhook.projects[0];
        assert!(p.builds_branch("main") && p.builds_branch("release/1.2"));
        assert!(!p.builds_branch("feature/x"));
        assert_eq!(p.dockerfile, "Dockerfile");
        assert_eq!(cfg.builds.recovery_rescan_secs, 10);
        let r = p.request("https://gitlab/team/app.git", "abc");
        assert_eq!(
            (r.repo.as_str(), r.git_ref.as_str()),
            ("https://gitlab/team/app.git", "abc")
        );
        assert!(r.tag.is_none());
    }

    #[test]
    fn webhook_errors_name_the_key() {
        let cases = [
            (
                "[[webhook.projects]]\npath = \"a/b\"\nimage = \"a/b\"\n",
                "webhook.gitlab_secret",
            ),
            (
                "[webhook]\ngitlab_secret = \"short\"\n",
                "webhook.gitlab_secret",
            ),
            (
                &format!("{PROJECT}dockerfile = \"../../etc/passwd\"\n"),
                "webhook.projects[0].dockerfile",
            ),
            (
                &format!("{PROJECT}repo = \"ext::sh -c x\"\n"),
                "webhook.projects[0].repo",
            ),
            (
                &format!("{PROJECT}branches = [\"--x\"]\n"),
                "webhook.projects[0].branches[0]",
            ),
            (
                &PROJECT.replace("image = \"team/app\"", "image = \"Team\""),
                "webhook.projects[0].image",
            ),
            (
                &format!("{PROJECT}[[webhook.projects]]\npath = \"team/app\"\nimage = \"x\"\n"),
                "webhook.projects[1].path",
            ),
            (
                "[builds]\nrecovery_rescan_secs = 0\n",
                "builds.recovery_rescan_secs",
            ),
        ];
        for (text, field) in cases {
            let e = load(text).expect_err(text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
        let e = load("[webhook]\ngitlab_secret_file = \"/nonexistent/secret\"\n").unwrap_err();
        assert_eq!(e.field, "webhook.gitlab_secret_file");
        let e = load("[webhook]\nsecret = \"x\"\n").unwrap_err();
        assert!(e.reason.contains("secret"), "{e}");
    }
}
