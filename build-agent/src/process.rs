//! Running the tools of a step: each command in its own process group, every output line into
//! the build log, the tail of stderr kept for the error message, and a deadline and a stop
//! signal that kill the whole process tree (the group, plus any descendant that left it).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::debug;

use crate::buildlog::BuildLog;

/// Why a build is being stopped from outside its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The task was marked `cancel: true`.
    Cancelled,
    /// The task key is gone or a fenced write was refused: the build is no longer ours.
    Lost,
    /// SIGTERM.
    Shutdown,
    /// The registration lease expired.
    LeaseLost,
}

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 12;

#[derive(Debug)]
pub enum StepError {
    /// A tool exited non-zero.
    Failed {
        what: String,
        status: String,
        tail: String,
    },
    TimedOut {
        secs: u64,
    },
    Stopped(StopReason),
    /// Anything else, already a clear message.
    Other(String),
}

impl StepError {
    pub fn other(msg: impl Into<String>) -> StepError {
        StepError::Other(msg.into())
    }

    pub fn message(&self) -> String {
        match self {
            StepError::Failed { what, status, tail } if tail.is_empty() => {
                format!("{what} {status}")
            }
            StepError::Failed { what, status, tail } => format!("{what} {status}: {tail}"),
            StepError::TimedOut { secs } => format!("timed out after {secs} s"),
            StepError::Stopped(r) => format!("stopped ({r:?})"),
            StepError::Other(m) => m.clone(),
        }
    }
}

/// A command line, shown in the log as `display` (never with secrets: none are passed as
/// arguments).
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Short name for messages, e.g. `git fetch`.
    pub what: String,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>, what: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            what: what.into(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.to_string(), v.into()));
        self
    }

    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// The limits of the current step: when it must end, and the build's stop signal.
pub struct Limits {
    pub deadline: Instant,
    pub timeout_secs: u64,
    pub stop: watch::Receiver<Option<StopReason>>,
}

impl Limits {
    pub fn stopped(&self) -> Option<StopReason> {
        self.stop.borrow().clone()
    }

    pub fn check(&self) -> Result<(), StepError> {
        if let Some(r) = self.stopped() {
            return Err(StepError::Stopped(r));
        }
        if Instant::now() >= self.deadline {
            return Err(StepError::TimedOut {
                secs: self.timeout_secs,
            });
        }
        Ok(())
    }
}

/// What a successful command printed on stdout (when captured).
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
}

/// Runs `cmd` to completion within `limits`, logging every line. `capture_stdout` also returns
/// stdout. `cleanup` runs after the process tree is killed (e.g. `podman rm -f NAME`, since a
/// container does not live in the process tree of `podman run`).
pub async fn run(
    cmd: &Cmd,
    log: &Arc<BuildLog>,
    limits: &mut Limits,
    capture_stdout: bool,
    cleanup: Option<&Cmd>,
) -> Result<Output, StepError> {
    limits.check()?;
    log.line(&format!("$ {}", cmd.display()));
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    if let Some(d) = &cmd.cwd {
        c.current_dir(d);
    }
    // Die with the agent: a SIGKILLed agent must not leave tools running.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| {
        StepError::other(format!(
            "could not run {} ({}): {e}",
            cmd.what,
            cmd.program.display()
        ))
    })?;
    let pid = child.id().unwrap_or(0) as i32;
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let captured: Arc<Mutex<String>> = Arc::default();
    let mut out_task = tokio::spawn(pump(
        child.stdout.take(),
        log.clone(),
        None,
        capture_stdout.then(|| captured.clone()),
    ));
    let mut err_task = tokio::spawn(pump(
        child.stderr.take(),
        log.clone(),
        Some(tail.clone()),
        None,
    ));
    let remaining = limits.deadline.saturating_duration_since(Instant::now());
    let outcome = tokio::select! {
        s = child.wait() => Ok(s),
        _ = tokio::time::sleep(remaining) => Err(StepError::TimedOut { secs: limits.timeout_secs }),
        r = limits.stop.wait_for(|s| s.is_some()) => {
            let reason = r.map(|v| v.clone().unwrap_or(StopReason::Lost)).unwrap_or(StopReason::Lost);
            Err(StepError::Stopped(reason))
        }
    };
    let status = match outcome {
        Ok(s) => s,
        Err(e) => {
            kill_tree(pid);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            if let Some(c) = cleanup {
                run_quiet(c, Duration::from_secs(30)).await;
            }
            out_task.abort();
            err_task.abort();
            log.line(&format!("!!! {} killed: {}", cmd.what, e.message()));
            return Err(e);
        }
    };
    // Descendants that kept the pipes open must not hold the step: give the readers a moment.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = (&mut out_task).await;
        let _ = (&mut err_task).await;
    })
    .await;
    out_task.abort();
    err_task.abort();
    kill_tree(pid);
    let status = status.map_err(|e| StepError::other(format!("waiting for {}: {e}", cmd.what)))?;
    if !status.success() {
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        let status = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("was killed ({status})"),
        };
        return Err(StepError::Failed {
            what: cmd.what.clone(),
            status,
            tail,
        });
    }
    let stdout = captured.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Output { stdout })
}

/// Runs a cleanup command, output discarded, bounded by `timeout`.
pub async fn run_quiet(cmd: &Cmd, timeout: Duration) -> bool {
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    match c.spawn() {
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) => s.success(),
            _ => {
                kill_tree(child.id().unwrap_or(0) as i32);
                false
            }
        },
        Err(e) => {
            debug!(what = %cmd.what, error = %e, "cleanup command could not run");
            false
        }
    }
}

async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    log: Arc<BuildLog>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    capture: Option<Arc<Mutex<String>>>,
) {
    let Some(stream) = stream else { return };
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        let l = &log;
        l.line(line);
        if let Some(t) = &tail {
            if let Ok(mut t) = t.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(l.redactor().redact(line));
            }
        }
        if let Some(c) = &capture {
            if let Ok(mut c) = c.lock() {
                c.push_str(line);
                c.push('\n');
            }
        }
    }
}

/// SIGKILL to the process group of `pid` and to every descendant of `pid` (some tools start
/// their children in new sessions).
pub fn kill_tree(pid: i32) {
    if pid <= 1 {
        return;
    }
    let mut all = descendants(pid);
    all.push(pid);
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    for p in all {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may contain spaces and parentheses
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<i32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}
