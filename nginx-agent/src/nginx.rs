//! The nginx binary and master process: `nginx -t` on a staged tree, the version, and the
//! HUP that makes the master load the live tree. The agent never starts or stops nginx.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::config::NginxSettings;
use crate::error::NginxError;

#[derive(Debug, Clone)]
pub struct Nginx {
    binary: PathBuf,
    prefix: PathBuf,
    error_log: PathBuf,
    pid_file: PathBuf,
}

impl Nginx {
    pub fn new(s: &NginxSettings) -> Nginx {
        Nginx {
            binary: s.binary.clone(),
            prefix: s.prefix.clone(),
            error_log: s.error_log.clone(),
            pid_file: s.pid_file.clone(),
        }
    }

    /// `nginx -t` on the whole tree rooted at `conf`.
    pub async fn test(&self, conf: &Path) -> Result<(), NginxError> {
        let out = Command::new(&self.binary)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-e")
            .arg(&self.error_log)
            .arg("-c")
            .arg(conf)
            .output()
            .await
            .map_err(|source| NginxError::Exec {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if output.is_empty() {
            output = format!("exit status {}", out.status);
        }
        Err(NginxError::Rejected {
            conf: conf.to_path_buf(),
            output,
        })
    }

    /// `nginx/1.22.1`, or `unknown`.
    pub async fn version(&self) -> String {
        match Command::new(&self.binary).arg("-v").output().await {
            Ok(out) => String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_string(),
            Err(_) => "unknown".into(),
        }
    }

    /// The running master's pid from the pid file, if that process exists.
    pub fn master_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(&self.pid_file).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        if pid <= 1 {
            return None;
        }
        kill(Pid::from_raw(pid), None).ok()?;
        Some(pid)
    }

    /// `kill -HUP` the master: it parses the config once and replaces its workers.
    pub fn hup(&self, pid: i32) -> Result<(), NginxError> {
        kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|source| NginxError::Signal {
            pid,
            signal: "HUP",
            source,
        })
    }
}
