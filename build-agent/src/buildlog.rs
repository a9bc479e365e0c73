//! Build logs: `{work_dir}/logs/{build}.log`, one file per build, every line redacted before
//! it is written. A live log tells its followers (the HTTP `?follow=true` streams) how far it
//! has been written and when it has ended.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::redact::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    /// Bytes written so far.
    pub len: u64,
    /// The build has ended: nothing more will be written.
    pub ended: bool,
}

pub struct BuildLog {
    path: PathBuf,
    file: Mutex<File>,
    state: watch::Sender<LogState>,
    redactor: Redactor,
}

impl BuildLog {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (redacted; a trailing newline is added).
    pub fn line(&self, text: &str) {
        let mut s = self.redactor.redact(text.trim_end_matches(['\n', '\r']));
        s.push('\n');
        let Ok(mut f) = self.file.lock() else { return };
        if let Err(e) = f.write_all(s.as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "could not write the build log");
            return;
        }
        let n = s.len() as u64;
        self.state.send_modify(|st| st.len += n);
    }

    pub fn subscribe(&self) -> watch::Receiver<LogState> {
        self.state.subscribe()
    }

    fn end(&self) {
        self.state.send_modify(|st| st.ended = true);
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

/// The logs directory and the logs of the builds this agent has queued or running.
pub struct LogHub {
    dir: PathBuf,
    redactor: Redactor,
    live: Mutex<HashMap<String, Arc<BuildLog>>>,
}

impl LogHub {
    pub fn new(dir: PathBuf, redactor: Redactor) -> LogHub {
        LogHub {
            dir,
            redactor,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// `{dir}/{build}.log`; `build` has been validated (`validate_build_id`).
    pub fn path(&self, build: &str) -> PathBuf {
        self.dir.join(format!("{build}.log"))
    }

    /// The live log of `build`, opened for appending (created when new).
    pub fn open(&self, build: &str) -> std::io::Result<Arc<BuildLog>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = live.get(build) {
            return Ok(l.clone());
        }
        let path = self.path(build);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (state, _) = watch::channel(LogState { len, ended: false });
        let log = Arc::new(BuildLog {
            path,
            file: Mutex::new(file),
            state,
            redactor: self.redactor.clone(),
        });
        live.insert(build.to_string(), log.clone());
        Ok(log)
    }

    pub fn live(&self, build: &str) -> Option<Arc<BuildLog>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(build)
            .cloned()
    }

    /// The build has ended: followers get the rest of the log and the end.
    pub fn finish(&self, build: &str) {
        let log = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(build);
        if let Some(l) = log {
            l.end();
        }
    }

    /// Ends every live log (the agent is stopping).
    pub fn finish_all(&self) {
        let all: Vec<Arc<BuildLog>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in all {
            l.end();
        }
    }

    /// Deletes logs not modified for `age` (never a live one). Returns how many.
    pub fn prune(&self, age: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(build) = name.strip_suffix(".log") else {
                continue;
            };
            if self.live(build).is_some() {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|d| d > age);
            if old && std::fs::remove_file(e.path()).is_ok() {
                debug!(log = %name, "old build log removed");
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_redacted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::new(
            dir.path().to_path_buf(),
            Redactor::new(["topsecret".to_string()]),
        );
        let log = hub.open("b1").unwrap();
        let rx = log.subscribe();
        log.line("password=topsecret\n");
        log.line("https://u:p4ss@h/x");
        let text = std::fs::read_to_string(hub.path("b1")).unwrap();
        assert_eq!(text, "password=***\nhttps://u:***@h/x\n");
        assert_eq!(rx.borrow().len, text.len() as u64);
        assert!(hub.live("b1").is_some());
        hub.finish("b1");
        assert!(rx.borrow().ended);
        assert!(hub.live("b1").is_none());
        assert_eq!(hub.prune(Duration::from_secs(3600)), 0);
        assert_eq!(hub.prune(Duration::ZERO), 1);
    }
}
