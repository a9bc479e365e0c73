//! One build, step by step: `fetch`, `checkout`, optional `compile`, `build`, `push`.
//!
//! The status is written at every step's start and end through `dispatch::update_status`, and
//! the last time through `dispatch::finish`; both are fenced by the task key. When a fenced
//! write is refused the build is no longer ours: it stops at once and writes nothing more.
//! The workspace is removed when the build ends; the git and dependency caches stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellplane_build::dispatch;
use cellplane_build::{BuildState, BuildStatus, BuildTask, StepRecord};
use cellplane_etcd::{now_ms, Etcd};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::buildlog::{BuildLog, LogHub};
use crate::config::{AgentConfig, Builder};
use crate::metrics::Metrics;
use crate::process::{self, Cmd, Limits, StepError, StopReason};
use crate::redact::Redactor;
use crate::tools::{repo_key, Tools};

/// What the agent's builds share.
pub struct Ctx {
    pub cfg: Arc<AgentConfig>,
    pub etcd: Etcd,
    pub hub: Arc<LogHub>,
    pub metrics: Arc<Metrics>,
    pub redactor: Redactor,
    pub tools: Tools,
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ctx {
    pub fn new(
        cfg: Arc<AgentConfig>,
        etcd: Etcd,
        hub: Arc<LogHub>,
        metrics: Arc<Metrics>,
        redactor: Redactor,
        tools: Tools,
    ) -> Ctx {
        Ctx {
            cfg,
            etcd,
            hub,
            metrics,
            redactor,
            tools,
            repo_locks: Mutex::new(HashMap::new()),
        }
    }

    fn repo_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Writes `status` while we hold the task, retrying etcd failures a few times.
    /// `Ok(false)`: the task is no longer ours.
    pub async fn write_status(&self, status: &BuildStatus, last: bool) -> Result<bool, String> {
        let me = &self.cfg.name;
        // a repository URL with credentials in it is never written back with them
        let redacted;
        let status = if self.redactor.redact(&status.repo) != status.repo {
            redacted = BuildStatus {
                repo: self.redactor.redact(&status.repo),
                ..status.clone()
            };
            &redacted
        } else {
            status
        };
        let mut delay = self.cfg.retry().min(Duration::from_millis(500));
        let mut last_err = String::new();
        for _ in 0..6 {
            let r = if last {
                dispatch::finish(&self.etcd, me, status).await
            } else {
                dispatch::update_status(&self.etcd, me, status).await
            };
            match r {
                Ok(ours) => return Ok(ours),
                Err(e) => {
                    Metrics::inc(&self.metrics.etcd_errors);
                    last_err = e.to_string();
                    warn!(build = %status.build, error = %e, "status write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Err(last_err)
    }
}

/// How a build ended on this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// No longer ours (moved, removed, or the status could not be written): nothing written.
    Lost,
}

struct Run {
    ctx: Arc<Ctx>,
    task: BuildTask,
    status: BuildStatus,
    log: Arc<BuildLog>,
    stop: watch::Receiver<Option<StopReason>>,
    ws: PathBuf,
    timeout_secs: u64,
    step_started: Instant,
    repo_key: String,
    commit: String,
    dockerfile: PathBuf,
    context: PathBuf,
    image_ref: String,
    /// The name the image is built under on this agent: per build, so that two builds of the
    /// same image and tag at once never untag or remove each other's image.
    local_ref: String,
    built: bool,
    /// Set just before the final write: the task key's deletion that follows is ours.
    ending: Arc<AtomicBool>,
}

/// Runs `task` to its end. `status` is its current status (queued).
pub async fn run_build(
    ctx: Arc<Ctx>,
    task: BuildTask,
    mut status: BuildStatus,
    stop: watch::Receiver<Option<StopReason>>,
    ending: Arc<AtomicBool>,
) -> Outcome {
    let build = task.build.clone();
    let log = match ctx.hub.open(&build) {
        Ok(l) => l,
        Err(e) => {
            warn!(%build, error = %e, "cannot open the build log");
            return fail_without_log(&ctx, status, e.to_string()).await;
        }
    };
    status.state = BuildState::Running;
    status.agent = ctx.cfg.name.clone();
    status.started_at_ms = Some(now_ms());
    status.attempt = task.attempt;
    let timeout_secs = task
        .request
        .step_timeout_secs
        .unwrap_or(ctx.cfg.step_timeout_secs)
        .max(1);
    let mut run = Run {
        ws: ctx.tools.dirs.workspaces.join(&build),
        repo_key: repo_key(&task.request.repo),
        ctx: ctx.clone(),
        task,
        status,
        log,
        stop,
        timeout_secs,
        step_started: Instant::now(),
        commit: String::new(),
        dockerfile: PathBuf::new(),
        context: PathBuf::new(),
        image_ref: String::new(),
        local_ref: String::new(),
        built: false,
        ending,
    };
    Metrics::inc(&ctx.metrics.started);
    let started = Instant::now();
    let result = run.steps().await;
    run.remove_workspace().await;
    let outcome = run.conclude(result, started).await;
    run.remove_image().await;
    ctx.hub.finish(&build);
    outcome
}

async fn fail_without_log(ctx: &Ctx, mut status: BuildStatus, reason: String) -> Outcome {
    status.state = BuildState::Failed;
    status.error = Some(format!(
        "agent {}: cannot write the build log: {reason}",
        ctx.cfg.name
    ));
    status.finished_at_ms = Some(now_ms());
    Metrics::inc(&ctx.metrics.failed);
    match ctx.write_status(&status, true).await {
        Ok(true) => Outcome::Failed,
        _ => Outcome::Lost,
    }
}

impl Run {
    fn limits(&self) -> Limits {
        Limits {
            deadline: self.step_started + Duration::from_secs(self.timeout_secs),
            timeout_secs: self.timeout_secs,
            stop: self.stop.clone(),
        }
    }

    fn stopped(&self) -> Option<StopReason> {
        self.stop.borrow().clone()
    }

    async fn write(&mut self) -> Result<(), StepError> {
        if let Some(r) = self.stopped() {
            return Err(StepError::Stopped(r));
        }
        match self.ctx.write_status(&self.status, false).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StepError::Stopped(StopReason::Lost)),
            // etcd does not answer: the build fails (its end is written once etcd is back)
            Err(e) => Err(StepError::other(format!(
                "cannot record the build's progress in etcd: {e}"
            ))),
        }
    }

    async fn begin(&mut self, name: &str) -> Result<(), StepError> {
        self.step_started = Instant::now();
        self.status.steps.push(StepRecord {
            name: name.to_string(),
            started_at_ms: now_ms(),
            duration_ms: None,
            ok: None,
            message: None,
        });
        self.log.line(&format!(
            "==> step {name} (build {}, agent {}, timeout {} s)",
            self.task.build, self.ctx.cfg.name, self.timeout_secs
        ));
        self.write().await
    }

    /// Records the end of the running step (not written yet).
    fn close_step(&mut self, ok: bool, message: Option<String>) {
        let ms = self.step_started.elapsed().as_millis() as u64;
        if let Some(s) = self.status.steps.last_mut() {
            s.duration_ms = Some(ms);
            s.ok = Some(ok);
            s.message = message.clone();
            self.ctx.metrics.observe_step(&s.name, ms);
            let verdict = if ok { "ok" } else { "FAILED" };
            let note = message.map(|m| format!(": {m}")).unwrap_or_default();
            self.log
                .line(&format!("<== step {} {verdict} in {ms} ms{note}", s.name));
        }
    }

    async fn step(&mut self, name: &str) -> Result<(), StepError> {
        self.begin(name).await?;
        let r = match name {
            "fetch" => self.fetch().await,
            "checkout" => self.checkout().await,
            "compile" => self.compile().await,
            "build" => self.image_build().await,
            _ => self.push().await,
        };
        match r {
            Ok(msg) => {
                self.close_step(true, Some(msg));
                self.write().await
            }
            Err(StepError::Stopped(r)) => Err(StepError::Stopped(r)),
            Err(e) => {
                let msg = self.ctx.redactor.redact(&e.message());
                self.close_step(false, Some(msg));
                Err(e)
            }
        }
    }

    async fn steps(&mut self) -> Result<(), StepError> {
        self.log.line(&format!(
            "build {} of {} at {} (attempt {}) on agent {}",
            self.task.build,
            self.ctx.redactor.redact(&self.task.request.repo),
            self.task.request.git_ref,
            self.task.attempt,
            self.ctx.cfg.name
        ));
        self.step("fetch").await?;
        self.step("checkout").await?;
        if self.task.request.compile.is_some() {
            self.step("compile").await?;
        }
        self.step("build").await?;
        self.step("push").await
    }

    async fn conclude(&mut self, result: Result<(), StepError>, started: Instant) -> Outcome {
        let build = self.task.build.clone();
        let now = now_ms();
        let step = self
            .status
            .steps
            .last()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "start".into());
        let me = self.ctx.cfg.name.clone();
        let (state, error, outcome) = match &result {
            Ok(()) => (BuildState::Succeeded, None, Outcome::Succeeded),
            Err(StepError::Stopped(StopReason::Lost)) => {
                self.log
                    .line("!!! the task is no longer this agent's (moved or removed); stopped");
                info!(%build, "build stopped: the task is no longer ours");
                Metrics::inc(&self.ctx.metrics.lost);
                return Outcome::Lost;
            }
            Err(StepError::Stopped(StopReason::Cancelled)) => (
                BuildState::Cancelled,
                Some(format!("cancelled during step {step}")),
                Outcome::Cancelled,
            ),
            Err(StepError::Stopped(StopReason::Shutdown)) => (
                BuildState::Failed,
                Some(format!("agent {me} shut down during step {step}")),
                Outcome::Failed,
            ),
            Err(StepError::Stopped(StopReason::LeaseLost)) => (
                BuildState::Failed,
                Some(format!(
                    "agent {me} lost its etcd registration (lease) during step {step}"
                )),
                Outcome::Failed,
            ),
            Err(e) => (
                BuildState::Failed,
                Some(format!(
                    "step {step} failed: {}",
                    self.ctx.redactor.redact(&e.message())
                )),
                Outcome::Failed,
            ),
        };
        // steps still open (stopped from outside) are closed with the reason
        if let Some(s) = self.status.steps.last() {
            if s.duration_ms.is_none() {
                self.close_step(false, error.clone());
            }
        }
        self.status.state = state;
        self.status.error = error.clone();
        self.status.failed_step = (state == BuildState::Failed).then(|| step.clone());
        self.status.finished_at_ms = Some(now);
        let total = started.elapsed().as_millis();
        match &error {
            None => self.log.line(&format!(
                "==> build {build} succeeded in {total} ms: {} {}",
                self.image_ref,
                self.status.digest.clone().unwrap_or_default()
            )),
            Some(e) => self.log.line(&format!(
                "==> build {build} {} after {total} ms: {e}",
                state.as_str()
            )),
        }
        self.ending.store(true, Ordering::SeqCst);
        match self.write_final().await {
            Ok(true) => {
                let c = match outcome {
                    Outcome::Succeeded => &self.ctx.metrics.succeeded,
                    Outcome::Cancelled => &self.ctx.metrics.cancelled,
                    _ => &self.ctx.metrics.failed,
                };
                Metrics::inc(c);
                info!(%build, state = state.as_str(), ms = total as u64, error = error.as_deref().unwrap_or(""), "build ended");
                outcome
            }
            Ok(false) => {
                Metrics::inc(&self.ctx.metrics.lost);
                info!(%build, "build ended but the task is no longer ours; nothing written");
                Outcome::Lost
            }
            Err(e) => {
                Metrics::inc(&self.ctx.metrics.lost);
                warn!(%build, error = %e, "could not record the end of the build");
                Outcome::Lost
            }
        }
    }

    /// The final status, retried while etcd does not answer, until the agent stops (lease lost
    /// or shutdown): an ended build never stays `running` while its agent lives.
    async fn write_final(&self) -> Result<bool, String> {
        loop {
            match self.ctx.write_status(&self.status, true).await {
                Ok(ours) => return Ok(ours),
                Err(e) => {
                    let stopping = matches!(
                        self.stopped(),
                        Some(StopReason::Shutdown | StopReason::LeaseLost)
                    );
                    if stopping {
                        return Err(e);
                    }
                    warn!(build = %self.task.build, error = %e, "the end of the build is not recorded yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Before the final status: a build that has ended has no workspace left.
    async fn remove_workspace(&mut self) {
        let ws = self.ws.clone();
        let digest = self.digest_file();
        let _ = tokio::task::spawn_blocking(move || {
            if ws.exists() {
                if let Err(e) = std::fs::remove_dir_all(&ws) {
                    warn!(workspace = %ws.display(), error = %e, "could not remove the workspace");
                }
            }
            let _ = std::fs::remove_file(digest);
        })
        .await;
    }

    /// After the final status (the image is in the registry; this only frees space).
    async fn remove_image(&mut self) {
        if self.built
            && self.ctx.cfg.remove_images
            && self.ctx.cfg.image.builder == Builder::Buildah
        {
            let c = self
                .ctx
                .tools
                .buildah("buildah rmi")
                .arg("rmi")
                .arg(&self.local_ref);
            process::run_quiet(&c, Duration::from_secs(60)).await;
        }
    }

    fn digest_file(&self) -> PathBuf {
        self.ctx
            .tools
            .dirs
            .workspaces
            .join(format!("{}.digest", self.task.build))
    }

    async fn exec(&mut self, cmd: &Cmd) -> Result<String, StepError> {
        let mut lim = self.limits();
        process::run(cmd, &self.log, &mut lim, false, None)
            .await
            .map(|o| o.stdout)
    }

    // ---- fetch ----

    async fn fetch(&mut self) -> Result<String, StepError> {
        let repo = self.task.request.repo.clone();
        let dirs = self.ctx.tools.dirs.clone();
        let cache = dirs.git.join(format!("{}.git", self.repo_key));
        // one fetch per repository at a time (builds of other repositories are not held)
        let lock = self.ctx.repo_lock(&self.repo_key);
        let mut lim = self.limits();
        let _guard = tokio::select! {
            g = lock.lock_owned() => g,
            _ = tokio::time::sleep_until(lim.deadline.into()) => return Err(StepError::TimedOut { secs: self.timeout_secs }),
            r = lim.stop.wait_for(|s| s.is_some()) => {
                return Err(StepError::Stopped(r.map(|v| v.clone().unwrap_or(StopReason::Lost)).unwrap_or(StopReason::Lost)));
            }
        };
        if cache.join("HEAD").is_file() {
            let c = self
                .ctx
                .tools
                .git("git fetch")
                .arg("-C")
                .arg(&cache)
                .args(["fetch", "--prune", "--force", "--no-write-fetch-head", "--"])
                .arg(&repo)
                .arg("+refs/*:refs/*");
            self.exec(&c).await?;
            Ok("updated the cached clone".into())
        } else {
            let tmp = dirs
                .git
                .join(format!(".{}.{}.tmp", self.repo_key, self.task.build));
            if tmp.exists() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            let c = self
                .ctx
                .tools
                .git("git clone")
                .args(["clone", "--mirror", "--"])
                .arg(&repo)
                .arg(&tmp);
            let r = self.exec(&c).await;
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &cache).map_err(|e| {
                StepError::other(format!(
                    "could not move the new clone into the cache {}: {e}",
                    cache.display()
                ))
            })?;
            Ok("cloned into the cache".into())
        }
    }

    // ---- checkout ----

    async fn checkout(&mut self) -> Result<String, StepError> {
        let git_ref = self.task.request.git_ref.clone();
        let cache = self
            .ctx
            .tools
            .dirs
            .git
            .join(format!("{}.git", self.repo_key));
        let c = self
            .ctx
            .tools
            .git("git rev-parse")
            .arg("-C")
            .arg(&cache)
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{git_ref}^{{commit}}"));
        let mut lim = self.limits();
        let out = match process::run(&c, &self.log, &mut lim, true, None).await {
            Ok(o) => o.stdout,
            Err(StepError::Failed { .. }) => {
                return Err(StepError::other(format!(
                    "ref {git_ref:?} was not found in {} (no such branch, tag or commit)",
                    self.ctx.redactor.redact(&self.task.request.repo)
                )))
            }
            Err(e) => return Err(e),
        };
        let commit = out.trim().to_string();
        if !(commit.len() == 40 || commit.len() == 64)
            || !commit.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(StepError::other(format!(
                "git rev-parse gave {commit:?} for ref {git_ref:?}, not a commit id"
            )));
        }
        self.commit = commit.clone();
        self.status.commit = Some(commit.clone());
        if self.ws.exists() {
            let _ = std::fs::remove_dir_all(&self.ws);
        }
        let c = self
            .ctx
            .tools
            .git("git clone")
            .args(["clone", "--shared", "--no-checkout", "--quiet", "--"])
            .arg(&cache)
            .arg(&self.ws);
        self.exec(&c).await?;
        let c = self
            .ctx
            .tools
            .git("git checkout")
            .arg("-C")
            .arg(&self.ws)
            .args([
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "--quiet",
                "--detach",
            ])
            .arg(&commit);
        self.exec(&c).await?;
        let ws = self
            .ws
            .canonicalize()
            .map_err(|e| StepError::other(format!("workspace {}: {e}", self.ws.display())))?;
        self.dockerfile = inside(&ws, &self.task.request.dockerfile, "dockerfile", false)?;
        self.context = inside(&ws, &self.task.request.context, "context", true)?;
        Ok(format!("{git_ref} is {commit}"))
    }

    // ---- compile ----

    async fn compile(&mut self) -> Result<String, StepError> {
        let Some(spec) = self.task.request.compile.clone() else {
            return Ok("no compile step".into());
        };
        let cache = self.ctx.tools.dirs.deps.join(&self.repo_key);
        std::fs::create_dir_all(&cache)
            .map_err(|e| StepError::other(format!("dependency cache {}: {e}", cache.display())))?;
        let before = count_files(&cache);
        let name = self.ctx.tools.compile_container(&self.task.build);
        let tools = &self.ctx.tools;
        // a container of an earlier attempt with the same name would make `run` fail
        let rm = tools
            .podman("podman rm")
            .args(["rm", "--force", "--time", "0", "--"])
            .arg(&name);
        process::run_quiet(&rm, Duration::from_secs(30)).await;
        let mut c = tools
            .podman("podman run (compile)")
            .args(["run", "--rm", "--pull=never", "--name"])
            .arg(&name)
            .args(tools.ulimit_args())
            .arg(format!("--network={}", self.ctx.cfg.compile.network))
            .arg("--volume")
            .arg(volume(&self.ws, "/workspace"))
            .arg("--volume")
            .arg(volume(&cache, &spec.cache_mount))
            .args(["--workdir", "/workspace", "--entrypoint", "/bin/sh"]);
        for (k, v) in &spec.env {
            c = c.arg("--env").arg(format!("{k}={v}"));
        }
        c = c.arg(&spec.image).arg("-c").arg(&spec.command);
        let mut lim = self.limits();
        process::run(&c, &self.log, &mut lim, false, Some(&rm)).await?;
        let after = count_files(&cache);
        Ok(format!(
            "dependency cache: {} reused, {} added",
            before.min(after),
            after.saturating_sub(before)
        ))
    }

    // ---- build ----

    async fn image_build(&mut self) -> Result<String, StepError> {
        let req = &self.task.request;
        let tag = req.tag.clone().unwrap_or_else(|| self.commit.clone());
        self.image_ref = self.ctx.cfg.image_ref(&req.image, &tag);
        self.local_ref = match self.ctx.cfg.image.builder {
            Builder::Buildah => format!("localhost/cellplane-build/{}:latest", self.task.build),
            Builder::Docker => self.image_ref.clone(),
        };
        let labels = [
            format!("io.cellplane.build={}", self.task.build),
            format!("io.cellplane.commit={}", self.commit),
        ];
        let tools = &self.ctx.tools;
        let c = match self.ctx.cfg.image.builder {
            Builder::Buildah => {
                let mut c = tools
                    .buildah("buildah bud")
                    .arg("bud")
                    .arg(format!("--isolation={}", self.ctx.cfg.image.isolation))
                    .args(tools.ulimit_args());
                for l in &labels {
                    c = c.arg("--label").arg(l);
                }
                c.arg("--file")
                    .arg(&self.dockerfile)
                    .arg("--tag")
                    .arg(&self.local_ref)
                    .arg("--")
                    .arg(&self.context)
            }
            Builder::Docker => {
                let mut c = tools.docker("docker build").arg("build");
                for l in &labels {
                    c = c.arg("--label").arg(l);
                }
                c.arg("--file")
                    .arg(&self.dockerfile)
                    .arg("--tag")
                    .arg(&self.image_ref)
                    .arg("--")
                    .arg(&self.context)
            }
        };
        self.built = true;
        self.exec(&c).await?;
        Ok(self.image_ref.clone())
    }

    // ---- push ----

    async fn push(&mut self) -> Result<String, StepError> {
        let cfg = self.ctx.cfg.clone();
        let tools = &self.ctx.tools;
        let digest = match cfg.image.builder {
            Builder::Buildah => {
                let file = self.digest_file();
                let _ = std::fs::remove_file(&file);
                let mut c = tools
                    .buildah("buildah push")
                    .arg("push")
                    .arg(format!("--tls-verify={}", cfg.registry.tls_verify))
                    .arg("--digestfile")
                    .arg(&file);
                if let Some(a) = &cfg.registry.auth_file {
                    c = c.arg("--authfile").arg(a);
                }
                c = c
                    .arg("--")
                    .arg(&self.local_ref)
                    .arg(format!("docker://{}", self.image_ref));
                self.exec(&c).await?;
                std::fs::read_to_string(&file)
                    .map_err(|e| StepError::other(format!("buildah push wrote no digest: {e}")))?
                    .trim()
                    .to_string()
            }
            Builder::Docker => {
                let c = tools
                    .docker("docker push")
                    .arg("push")
                    .arg("--")
                    .arg(&self.image_ref);
                let mut lim = self.limits();
                let out = process::run(&c, &self.log, &mut lim, true, None).await?;
                out.stdout
                    .split_whitespace()
                    .find(|w| w.starts_with("sha256:"))
                    .unwrap_or_default()
                    .to_string()
            }
        };
        if !digest.starts_with("sha256:") {
            return Err(StepError::other(format!(
                "the push reported no manifest digest (got {digest:?})"
            )));
        }
        self.status.image = Some(self.image_ref.clone());
        self.status.digest = Some(digest.clone());
        Ok(digest)
    }
}

/// `rel` inside the workspace `ws` (canonical) after resolving every symlink; a file or a
/// directory as asked.
fn inside(ws: &Path, rel: &str, field: &str, dir: bool) -> Result<PathBuf, StepError> {
    let p = ws.join(rel);
    let c = p.canonicalize().map_err(|_| {
        StepError::other(format!(
            "{field} {rel:?} does not exist in the repository at this commit"
        ))
    })?;
    if !c.starts_with(ws) {
        return Err(StepError::other(format!(
            "{field} {rel:?} resolves outside the repository (through a symlink); refused"
        )));
    }
    if c.starts_with(ws.join(".git")) {
        return Err(StepError::other(format!(
            "{field} {rel:?} is inside .git; refused"
        )));
    }
    let ok = if dir { c.is_dir() } else { c.is_file() };
    if !ok {
        return Err(StepError::other(format!(
            "{field} {rel:?} is not a {}",
            if dir { "directory" } else { "file" }
        )));
    }
    Ok(c)
}

fn volume(host: &Path, container: &str) -> String {
    format!("{}:{container}", host.display())
}

/// Regular files under `dir` (bounded: stops counting at 1,000,000).
fn count_files(dir: &Path) -> u64 {
    let mut n = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
            if n >= 1_000_000 {
                return n;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink("../outside", ws.join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("etc")).unwrap();
        std::os::unix::fs::symlink("Dockerfile", ws.join("ok-link")).unwrap();
        let ws = ws.canonicalize().unwrap();
        inside(&ws, "Dockerfile", "dockerfile", false).unwrap();
        inside(&ws, "ok-link", "dockerfile", false).unwrap();
        inside(&ws, ".", "context", true).unwrap();
        inside(&ws, "sub", "context", true).unwrap();
        let e = inside(&ws, "evil", "dockerfile", false).unwrap_err();
        assert!(
            e.message().contains("outside the repository"),
            "{}",
            e.message()
        );
        let e = inside(&ws, "etc", "context", true).unwrap_err();
        assert!(e.message().contains("outside the repository"));
        let e = inside(&ws, "missing", "dockerfile", false).unwrap_err();
        assert!(e.message().contains("does not exist"));
        let e = inside(&ws, "sub", "dockerfile", false).unwrap_err();
        assert!(e.message().contains("not a file"));
    }
}
