//! Command lines of the external tools (git, buildah, podman, docker) and the agent's work
//! directory layout. Nothing user-supplied is ever placed where a tool could read it as an
//! option: URLs and paths come after `--` (or are absolute paths the agent made), refs after
//! `--end-of-options`, and every value was checked by `cellplane_build::validate_request`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::process::Cmd;

/// Protocols git may use (ext:: and fd:: transports are never allowed).
pub const GIT_PROTOCOLS: &str = "file:git:http:https:ssh";

/// `{work_dir}/...`.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Per-repository bare mirrors: `git/{key}.git`.
    pub git: PathBuf,
    /// Per-repository dependency caches: `deps/{key}`.
    pub deps: PathBuf,
    /// Per-build checkouts: `workspaces/{build}` (removed when the build ends).
    pub workspaces: PathBuf,
    /// Build logs: `logs/{build}.log`.
    pub logs: PathBuf,
    /// TMPDIR of the tools.
    pub tmp: PathBuf,
    /// The private containers.conf.
    pub containers_conf: PathBuf,
}

impl Dirs {
    /// Creates the layout; removes workspaces left by a previous run (nothing runs yet).
    pub fn ensure(work: &Path) -> Result<Dirs, AgentError> {
        let d = Dirs {
            git: work.join("git"),
            deps: work.join("deps"),
            workspaces: work.join("workspaces"),
            logs: work.join("logs"),
            tmp: work.join("tmp"),
            containers_conf: work.join("containers.conf"),
        };
        for p in [&d.git, &d.deps, &d.workspaces, &d.logs, &d.tmp] {
            std::fs::create_dir_all(p).map_err(|e| AgentError::io(p, e))?;
        }
        if let Ok(entries) = std::fs::read_dir(&d.workspaces) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        Ok(d)
    }
}

/// The containers.conf the agent's buildah and podman read (CONTAINERS_CONF), so that nothing
/// depends on /etc/containers: runc, cgroupfs, the ulimits (FIELD-NOTES "Real CNI runtimes").
pub fn containers_conf(cfg: &AgentConfig) -> String {
    let ulimits: Vec<String> = cfg.ulimits.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "# written by build-agent at start; edit /etc/cellplane/build-agent.toml instead\n\
         [containers]\n\
         default_ulimits = [{}]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         runtime = {:?}\n\
         events_logger = \"file\"\n",
        ulimits.join(", "),
        cfg.compile.runtime,
    )
}

/// A stable directory name for a repository: readable part + hash of the normalized URL
/// (credentials in the URL never reach the file system).
pub fn repo_key(repo: &str) -> String {
    let norm = cellplane_build::rendezvous::normalize_repo(repo);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in norm.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tail = norm
        .rsplit(['/', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or("repo");
    let readable: String = tail
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{readable}-{h:016x}")
}

/// systemd does not set HOME for a root service without `User=`; git, buildah and podman look
/// for their per-user files there (ssh keys, auth lookups).
fn with_home(c: Cmd) -> Cmd {
    if std::env::var_os("HOME").is_some() {
        c
    } else {
        c.env("HOME", "/root")
    }
}

#[derive(Debug, Clone)]
pub struct Tools {
    pub cfg: Arc<AgentConfig>,
    pub dirs: Dirs,
}

impl Tools {
    pub fn git(&self, what: &str) -> Cmd {
        let mut c = Cmd::new(&self.cfg.git, what)
            .args([
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "protocol.fd.allow=never",
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
                "-c",
                "core.hooksPath=/dev/null",
            ])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", GIT_PROTOCOLS)
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("TMPDIR", &self.dirs.tmp);
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            c = c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        with_home(c)
    }

    fn storage_args(&self, mut c: Cmd) -> Cmd {
        let s = &self.cfg.containers;
        if let Some(r) = &s.root {
            c = c.arg("--root").arg(r);
        }
        if let Some(r) = &s.runroot {
            c = c.arg("--runroot").arg(r);
        }
        if let Some(d) = &s.storage_driver {
            c = c.arg("--storage-driver").arg(d);
        }
        with_home(
            c.env("CONTAINERS_CONF", &self.dirs.containers_conf)
                .env("TMPDIR", &self.dirs.tmp),
        )
    }

    pub fn buildah(&self, what: &str) -> Cmd {
        self.storage_args(Cmd::new(&self.cfg.image.buildah, what))
    }

    pub fn podman(&self, what: &str) -> Cmd {
        self.storage_args(Cmd::new(&self.cfg.compile.podman, what))
            .arg("--runtime")
            .arg(&self.cfg.compile.runtime)
            .arg("--cgroup-manager")
            .arg("cgroupfs")
    }

    pub fn docker(&self, what: &str) -> Cmd {
        Cmd::new(&self.cfg.image.docker, what)
    }

    pub fn ulimit_args(&self) -> Vec<String> {
        self.cfg
            .ulimits
            .iter()
            .flat_map(|u| ["--ulimit".to_string(), u.clone()])
            .collect()
    }

    /// The name of a build's compile container (so that it can be removed when killed).
    pub fn compile_container(&self, build: &str) -> String {
        format!("{}{build}", self.compile_container_prefix())
    }

    /// Every compile container of this agent starts with this.
    pub fn compile_container_prefix(&self) -> String {
        format!("cellplane-build-{}-", self.cfg.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_keys() {
        let a = repo_key("https://git.example.com/team/app.git");
        assert_eq!(a, repo_key("https://git.example.com/team/app/"));
        assert!(a.starts_with("app-"), "{a}");
        let b = repo_key("https://user:secret@git.example.com/team/app.git");
        assert!(!b.contains("secret"));
        assert_ne!(a, repo_key("https://git.example.com/other/app.git"));
        assert!(repo_key("git@h:x/y z").starts_with("y_z-"));
    }

    #[test]
    fn containers_conf_has_runtime_and_ulimits() {
        let c = containers_conf(&AgentConfig::default());
        assert!(c.contains("runtime = \"runc\""), "{c}");
        assert!(
            c.contains("\"nofile=20000:20000\", \"nproc=32768:32768\""),
            "{c}"
        );
        assert!(c.contains("cgroup_manager = \"cgroupfs\""));
    }
}
