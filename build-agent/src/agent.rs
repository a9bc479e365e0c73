//! The daemon: registration, the task prefix, the queue, shutdown.
//!
//! - **Start**: connect to etcd, grant a lease, register `builds/agents/{name}` under it, read
//!   `builds/tasks/{name}/` once and take every task in it — a task whose status says it is
//!   `running` on this agent was left by an earlier run of the agent (killed or crashed), so it
//!   is marked failed ("agent NAME restarted during step X"); queued ones are queued — then
//!   watch the prefix from the revision read. READY=1 goes to systemd only then.
//! - **Tasks**: a task key is taken only if its build id is valid and equal to the task's
//!   `build`, and the request passes `cellplane_build::validate_request`; otherwise the build
//!   is failed with the reason. Up to `capacity` builds run at once; the others wait in order of
//!   submission. `cancel: true` stops the build (status `cancelled`). A task key deleted by
//!   someone else stops the build at once: it is no longer ours.
//! - **Lease lost**: running builds are stopped and marked failed where the fence still lets
//!   us, and `run` returns an error: the process exits non-zero and systemd restarts it, which
//!   registers again and takes what is left in its prefix. (Re-registering in place could race
//!   the control API's recovery moving our queued tasks; a restart starts from etcd's truth.)
//! - **SIGTERM**: no new task is started; running builds are stopped and marked failed ("agent
//!   NAME shut down during step X"), bounded by `shutdown_timeout_secs`; queued tasks stay in
//!   etcd. The lease is revoked last, so the registration disappears at once and the control
//!   API's recovery moves the queued tasks to another agent (or this one takes them back when
//!   it starts again first).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellplane_build::dispatch;
use cellplane_build::{AgentRecord, BuildState, BuildStatus, BuildTask};
use cellplane_daemon::Notifier;
use cellplane_etcd::client::to_json;
use cellplane_etcd::{now_ms, watch_prefix, Etcd, EventKind, Kv, LeaseKeeper, WatchUpdate};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::buildlog::LogHub;
use crate::config::{AgentConfig, Builder};
use crate::error::AgentError;
use crate::http::{self, Shared};
use crate::metrics::Metrics;
use crate::process::{self, StopReason};
use crate::redact::Redactor;
use crate::runner::{self, Ctx, Outcome};
use crate::tools::{containers_conf, Dirs, Tools};

/// Runs the agent until `shutdown` resolves (or the lease is lost: then an error).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    config.validate()?;
    let cfg = Arc::new(config);
    let notifier = Notifier::from_env();
    let dirs = Dirs::ensure(&cfg.work_dir)?;
    std::fs::write(&dirs.containers_conf, containers_conf(&cfg))
        .map_err(|e| AgentError::io(&dirs.containers_conf, e))?;
    let redactor = match &cfg.registry.auth_file {
        Some(f) => Redactor::from_auth_file(f)?,
        None => Redactor::default(),
    };
    let hub = Arc::new(LogHub::new(dirs.logs.clone(), redactor.clone()));
    prune_logs(&cfg, &hub);
    let tools = Tools {
        cfg: cfg.clone(),
        dirs,
    };
    if cfg.image.builder == Builder::Docker {
        check_docker(&tools).await?;
    }
    remove_stale_containers(&tools).await;
    let metrics = Arc::new(Metrics::default());
    let shared = Shared::new(hub.clone(), metrics.clone(), &cfg.name);
    let listener = http::bind(cfg.http_listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        let app = http::router(shared.clone());
        tokio::spawn(async move {
            let graceful = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                warn!(error = %e, "http server failed");
            }
        })
    };
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    info!(agent = %cfg.name, endpoint = %cfg.endpoint, work_dir = %cfg.work_dir.display(), capacity = cfg.capacity, "build-agent starting");

    let etcd = loop {
        match Etcd::connect(&cfg.etcd).await {
            Ok(e) => break Some(e),
            Err(e) => {
                warn!(error = %e, "etcd not reachable yet");
                tokio::select! {
                    _ = &mut shutdown => break None,
                    _ = tokio::time::sleep(cfg.retry()) => {}
                }
            }
        }
    };
    let result = match etcd {
        Some(etcd) => {
            let ctx = Arc::new(Ctx::new(
                cfg.clone(),
                etcd,
                hub.clone(),
                metrics,
                redactor,
                tools,
            ));
            main_loop(ctx, shared, &notifier, &mut shutdown).await
        }
        None => Ok(()),
    };
    notifier.stopping();
    hub.finish_all();
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        debug!("http server did not stop within 5 s; leaving it");
    }
    match &result {
        Ok(()) => info!("build-agent stopped"),
        Err(e) => error!(error = %e, "build-agent stopped"),
    }
    result
}

fn prune_logs(cfg: &AgentConfig, hub: &LogHub) {
    if cfg.log_retention_days > 0 {
        let n = hub.prune(Duration::from_secs(cfg.log_retention_days * 86_400));
        if n > 0 {
            info!(removed = n, "old build logs removed");
        }
    }
}

/// Compile containers left by an earlier run (killed with the agent): nothing runs yet, so
/// every `cellplane-build-{agent}-*` container is stale.
async fn remove_stale_containers(tools: &Tools) {
    let prefix = tools.compile_container_prefix();
    let ps = tools
        .podman("podman ps")
        .args(["ps", "--all", "--format", "{{.Names}}", "--filter"])
        .arg(format!("name=^{prefix}"));
    let mut c = tokio::process::Command::new(&ps.program);
    c.args(&ps.args).kill_on_drop(true);
    for (k, v) in &ps.env {
        c.env(k, v);
    }
    let out = match tokio::time::timeout(Duration::from_secs(30), c.output()).await {
        Ok(Ok(o)) if o.status.success() => o.stdout,
        Ok(Ok(o)) => {
            warn!(stderr = %String::from_utf8_lossy(&o.stderr).trim(), "podman ps failed; stale compile containers not checked");
            return;
        }
        _ => {
            warn!("podman ps did not run; stale compile containers not checked");
            return;
        }
    };
    for name in String::from_utf8_lossy(&out).split_whitespace() {
        if !name.starts_with(&prefix) {
            continue;
        }
        let rm = tools
            .podman("podman rm")
            .args(["rm", "--force", "--time", "0", "--", name]);
        if process::run_quiet(&rm, Duration::from_secs(30)).await {
            info!(
                container = name,
                "removed a compile container left by an earlier run"
            );
        }
    }
}

async fn check_docker(tools: &Tools) -> Result<(), AgentError> {
    let c = tools
        .docker("docker version")
        .args(["version", "--format", "{{.Server.Version}}"]);
    if process::run_quiet(&c, Duration::from_secs(15)).await {
        return Ok(());
    }
    Err(AgentError::Config {
        field: "image.builder".into(),
        reason: format!(
            "\"docker\" needs a running docker daemon, and `{} version` found none (use builder = \"buildah\", which needs no daemon)",
            tools.cfg.image.docker.display()
        ),
    })
}

struct Running {
    stop: watch::Sender<Option<StopReason>>,
    handle: JoinHandle<()>,
    /// The build is writing its final status (and deleting its task key) itself.
    ending: Arc<AtomicBool>,
}

struct Queued {
    task: BuildTask,
    status: BuildStatus,
}

/// The builds of this agent: running ones and the queue (ordered by submission time, then by
/// the task key's creation revision).
struct Scheduler {
    ctx: Arc<Ctx>,
    prefix: String,
    running: HashMap<String, Running>,
    queue: BTreeMap<(u64, i64, String), Queued>,
    done_tx: mpsc::UnboundedSender<(String, Outcome)>,
    accepting: bool,
}

impl Scheduler {
    fn me(&self) -> &str {
        &self.ctx.cfg.name
    }

    fn queued_key(&self, build: &str) -> Option<(u64, i64, String)> {
        self.queue.keys().find(|k| k.2 == build).cloned()
    }

    fn update_gauges(&self) {
        Metrics::set(&self.ctx.metrics.running, self.running.len() as u64);
        Metrics::set(&self.ctx.metrics.queued, self.queue.len() as u64);
    }

    /// The whole prefix as read (at start, or after the watch had to resync).
    async fn resync(&mut self, kvs: Vec<Kv>) {
        let present: std::collections::HashSet<String> = kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .chain(self.queue.keys().map(|k| &k.2))
            .filter(|b| !present.contains(*b))
            .cloned()
            .collect();
        for b in gone {
            self.on_delete(&b);
        }
        for kv in kvs {
            self.on_put(&kv).await;
        }
    }

    async fn on_put(&mut self, kv: &Kv) {
        let Some(build) = kv.key.strip_prefix(&self.prefix) else {
            warn!(key = %kv.key, "ignoring a key outside this agent's task prefix");
            return;
        };
        if build.contains('/') || cellplane_build::validate_build_id(build).is_err() {
            Metrics::inc(&self.ctx.metrics.refused);
            warn!(key = %kv.key, "ignoring a task key whose build id is not valid");
            return;
        }
        let build = build.to_string();
        let task: Result<BuildTask, _> = kv.json();
        if let Some(r) = self.running.get(&build) {
            if let Ok(t) = &task {
                if t.cancel && r.stop.borrow().is_none() {
                    info!(%build, "cancel requested; stopping the build");
                    let _ = r.stop.send(Some(StopReason::Cancelled));
                }
            }
            return;
        }
        if let Some(k) = self.queued_key(&build) {
            match task {
                Ok(t) if t.cancel => {
                    if let Some(q) = self.queue.remove(&k) {
                        self.cancel_queued(q).await;
                    }
                }
                Ok(t) => {
                    if let Some(q) = self.queue.get_mut(&k) {
                        q.task = t;
                    }
                }
                Err(_) => {}
            }
            return;
        }
        self.accept(build, kv, task).await;
    }

    async fn accept(
        &mut self,
        build: String,
        kv: &Kv,
        task: Result<BuildTask, cellplane_etcd::EtcdError>,
    ) {
        let task = match task {
            Ok(t) => t,
            Err(e) => {
                return self
                    .refuse(&build, None, format!("the task is not readable: {e}"))
                    .await
            }
        };
        if task.build != build {
            let msg = format!(
                "the task key names build {build} but the task is for build {:?}; refused",
                task.build
            );
            return self.refuse(&build, Some(&task), msg).await;
        }
        if let Err(e) = cellplane_build::validate_request(&task.request) {
            return self
                .refuse(&build, Some(&task), format!("refused: {e}"))
                .await;
        }
        let status = match dispatch::get_status(&self.ctx.etcd, &build).await {
            Ok(s) => s.map(|(s, _)| s),
            Err(e) => {
                Metrics::inc(&self.ctx.metrics.etcd_errors);
                warn!(%build, error = %e, "could not read the build's status; taking the task as queued");
                None
            }
        };
        let me = self.me().to_string();
        let mut status = match status {
            Some(s) if s.state.is_terminal() => {
                // ended, but its task key was left: remove it (fenced), keep the status
                let _ = self.ctx.write_status(&s, true).await;
                return;
            }
            Some(s) if s.state == BuildState::Running && s.agent == me => {
                return self.fail_restarted(s).await;
            }
            Some(s) => s,
            None => BuildStatus::queued(&task, &me),
        };
        status.agent = me.clone();
        if task.cancel {
            return self.cancel_queued(Queued { task, status }).await;
        }
        match self.ctx.hub.open(&build) {
            Ok(log) => log.line(&format!(
                "queued on agent {me} (attempt {}, submitted by {})",
                task.attempt,
                if task.submitted_by.is_empty() {
                    "?"
                } else {
                    &task.submitted_by
                }
            )),
            Err(e) => warn!(%build, error = %e, "cannot open the build log"),
        }
        debug!(%build, "task queued");
        self.queue.insert(
            (task.submitted_at_ms, kv.create_revision, build),
            Queued { task, status },
        );
    }

    /// A build this agent was running when it died: fail it, naming the step.
    async fn fail_restarted(&mut self, mut s: BuildStatus) {
        let now = now_ms();
        let step = s.running_step().unwrap_or("start").to_string();
        let reason = format!(
            "agent {} restarted during step {step}; the build was abandoned",
            self.me()
        );
        for st in s.steps.iter_mut().filter(|st| st.duration_ms.is_none()) {
            st.duration_ms = Some(now.saturating_sub(st.started_at_ms));
            st.ok = Some(false);
            st.message = Some(reason.clone());
        }
        s.state = BuildState::Failed;
        s.failed_step = Some(step);
        s.error = Some(reason.clone());
        s.finished_at_ms = Some(now);
        let rm = self
            .ctx
            .tools
            .podman("podman rm")
            .args(["rm", "--force", "--time", "0", "--"])
            .arg(self.ctx.tools.compile_container(&s.build));
        if s.steps.iter().any(|st| st.name == "compile") {
            process::run_quiet(&rm, Duration::from_secs(30)).await;
        }
        if let Ok(log) = self.ctx.hub.open(&s.build) {
            log.line(&format!("!!! {reason}"));
        }
        self.ctx.hub.finish(&s.build);
        if let Ok(true) = self.ctx.write_status(&s, true).await {
            Metrics::inc(&self.ctx.metrics.failed);
            warn!(build = %s.build, %reason, "build left by an earlier run marked failed");
        }
    }

    async fn cancel_queued(&mut self, q: Queued) {
        let mut s = q.status;
        s.state = BuildState::Cancelled;
        s.error = Some("cancelled before it started".into());
        s.finished_at_ms = Some(now_ms());
        if let Some(log) = self.ctx.hub.live(&s.build) {
            log.line("==> cancelled before it started");
        }
        self.ctx.hub.finish(&s.build);
        if let Ok(true) = self.ctx.write_status(&s, true).await {
            Metrics::inc(&self.ctx.metrics.cancelled);
            info!(build = %s.build, "queued build cancelled");
        }
    }

    async fn refuse(&mut self, build: &str, task: Option<&BuildTask>, reason: String) {
        Metrics::inc(&self.ctx.metrics.refused);
        warn!(%build, %reason, "task refused");
        let me = self.me().to_string();
        let mut s = match task {
            Some(t) => {
                let mut t = t.clone();
                t.build = build.to_string();
                BuildStatus::queued(&t, &me)
            }
            None => BuildStatus {
                build: build.to_string(),
                state: BuildState::Queued,
                agent: me.clone(),
                repo: String::new(),
                git_ref: String::new(),
                attempt: 0,
                submitted_at_ms: 0,
                started_at_ms: None,
                finished_at_ms: None,
                commit: None,
                steps: Vec::new(),
                image: None,
                digest: None,
                error: None,
                failed_step: None,
                history: Vec::new(),
            },
        };
        // a refused repository URL could carry credentials
        s.repo = self.ctx.redactor.redact(&s.repo);
        s.state = BuildState::Failed;
        s.error = Some(self.ctx.redactor.redact(&reason));
        s.finished_at_ms = Some(now_ms());
        if let Ok(log) = self.ctx.hub.open(build) {
            log.line(&format!("!!! task refused by agent {me}: {reason}"));
        }
        self.ctx.hub.finish(build);
        let _ = self.ctx.write_status(&s, true).await;
    }

    fn on_delete(&mut self, build: &str) {
        if let Some(r) = self.running.get(build) {
            if r.ending.load(Ordering::SeqCst) {
                return; // our own finish removed it
            }
            if r.stop.borrow().is_none() {
                info!(%build, "task key removed by someone else; stopping the build");
                let _ = r.stop.send(Some(StopReason::Lost));
            }
        } else if let Some(k) = self.queued_key(build) {
            self.queue.remove(&k);
            if let Some(log) = self.ctx.hub.live(build) {
                log.line("==> the task was removed before it started");
            }
            self.ctx.hub.finish(build);
            info!(%build, "queued task removed by someone else");
        }
    }

    /// Starts queued builds while there is room.
    fn schedule(&mut self) {
        while self.accepting && self.running.len() < self.ctx.cfg.capacity as usize {
            let Some((key, q)) = self.queue.pop_first() else {
                break;
            };
            let build = key.2;
            let (stop, stop_rx) = watch::channel(None);
            let ending = Arc::new(AtomicBool::new(false));
            let ending2 = ending.clone();
            let ctx = self.ctx.clone();
            let done = self.done_tx.clone();
            let b = build.clone();
            info!(%build, repo = %ctx.redactor.redact(&q.task.request.repo), git_ref = %q.task.request.git_ref, "build starting");
            let handle = tokio::spawn(async move {
                let outcome = runner::run_build(ctx, q.task, q.status, stop_rx, ending2).await;
                let _ = done.send((b, outcome));
            });
            self.running.insert(
                build,
                Running {
                    stop,
                    handle,
                    ending,
                },
            );
        }
        self.update_gauges();
    }

    fn stop_all(&mut self, reason: StopReason) {
        for r in self.running.values() {
            if r.stop.borrow().is_none() {
                let _ = r.stop.send(Some(reason.clone()));
            }
        }
    }
}

async fn register(ctx: &Ctx) -> Result<LeaseKeeper, AgentError> {
    let cfg = &ctx.cfg;
    let lease = LeaseKeeper::grant(&ctx.etcd, cfg.lease_ttl_secs).await?;
    let rec = AgentRecord {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        capacity: cfg.capacity,
        labels: cfg.labels.clone(),
        endpoint: cfg.endpoint.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: now_ms(),
    };
    ctx.etcd
        .put_with_lease(
            &ctx.etcd.keys().build_agent(&cfg.name),
            to_json(&rec),
            lease.id(),
        )
        .await?;
    Ok(lease)
}

async fn main_loop(
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    notifier: &Notifier,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), AgentError> {
    let cfg = ctx.cfg.clone();
    let etcd = ctx.etcd.clone();
    let prefix = etcd.keys().build_tasks(&cfg.name);
    // register and read the prefix, retrying until etcd answers or we are told to stop
    let (mut lease, kvs, revision) = loop {
        let attempt = async {
            let lease = register(&ctx).await?;
            let (kvs, rev) = etcd.list(&prefix).await?;
            Ok::<_, AgentError>((lease, kvs, rev))
        };
        tokio::select! {
            _ = &mut *shutdown => return Ok(()),
            r = attempt => match r {
                Ok(v) => break v,
                Err(e) => {
                    warn!(error = %e, "could not register; retrying");
                    tokio::time::sleep(cfg.retry()).await;
                }
            }
        }
    };
    info!(agent = %cfg.name, lease = lease.id(), tasks = kvs.len(), "registered");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut sched = Scheduler {
        ctx: ctx.clone(),
        prefix: prefix.clone(),
        running: HashMap::new(),
        queue: BTreeMap::new(),
        done_tx,
        accepting: true,
    };
    sched.resync(kvs).await;
    sched.schedule();
    let mut watch = watch_prefix(etcd.clone(), prefix.clone(), Some(revision));
    notifier.ready();
    shared.update(|h| h.ready = true);
    info!("ready");
    let tick = notifier
        .watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut ticker = tokio::time::interval(tick);
    let mut last_prune = Instant::now();
    let mut lease_error = None;
    loop {
        tokio::select! {
            _ = &mut *shutdown => break,
            u = watch.next() => match u {
                Some(WatchUpdate::Events { events, .. }) => {
                    for e in events {
                        match e.kind {
                            EventKind::Put => sched.on_put(&e.kv).await,
                            EventKind::Delete => {
                                if let Some(b) = e.kv.key.strip_prefix(&prefix) {
                                    sched.on_delete(b);
                                }
                            }
                        }
                    }
                }
                Some(WatchUpdate::Resync { kvs, .. }) => sched.resync(kvs).await,
                None => {
                    warn!("task watch ended; restarting it");
                    tokio::time::sleep(cfg.retry()).await;
                    watch = watch_prefix(etcd.clone(), prefix.clone(), None);
                }
            },
            Some((build, outcome)) = done_rx.recv() => {
                sched.running.remove(&build);
                debug!(%build, ?outcome, "build slot free");
            }
            reason = lease.lost() => {
                error!(%reason, "registration lease lost; stopping the running builds");
                lease_error = Some(reason);
                break;
            }
            _ = ticker.tick() => {
                if last_prune.elapsed() > Duration::from_secs(3600) {
                    prune_logs(&cfg, &ctx.hub);
                    last_prune = Instant::now();
                }
            }
        }
        sched.schedule();
        shared.update(|h| {
            h.last_loop = Instant::now();
            h.running = sched.running.len();
            h.queued = sched.queue.len();
        });
        notifier.watchdog();
    }

    // Stop: no new builds; running ones are stopped and record why.
    sched.accepting = false;
    shared.update(|h| h.ready = false);
    let reason = if lease_error.is_some() {
        StopReason::LeaseLost
    } else {
        StopReason::Shutdown
    };
    if !sched.running.is_empty() {
        info!(running = sched.running.len(), "stopping running builds");
    }
    sched.stop_all(reason);
    let deadline = Instant::now() + Duration::from_secs(cfg.shutdown_timeout_secs.max(1));
    while !sched.running.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            Some((build, _)) = done_rx.recv() => { sched.running.remove(&build); }
            _ = tokio::time::sleep(remaining.min(tick)) => {
                notifier.watchdog();
                if Instant::now() >= deadline {
                    warn!(left = sched.running.len(), "builds did not stop in time; abandoning them");
                    for (_, r) in sched.running.drain() {
                        r.handle.abort();
                    }
                }
            }
        }
    }
    drop(watch);
    match lease_error {
        Some(reason) => Err(AgentError::LeaseLost(reason)),
        None => {
            if let Err(e) = lease.revoke().await {
                warn!(error = %e, "could not revoke the lease; the registration will expire");
            }
            Ok(())
        }
    }
}
