//! The agent's state machine. A watch update is only a trigger: every reconcile starts from a
//! fresh range read of `slb/{group}/domains/`.
//!
//! - Upstream lists are pushed into the running nginx at once (admin location -> shared dict),
//!   after the snapshot file is rewritten, so a restarting nginx seeds itself with them.
//! - Any config difference schedules a reload after a quiet period (`debounce_ms`, bounded by
//!   `max_debounce_ms`): render a new generation, `nginx -t` it, swap `current`, HUP the master,
//!   wait until the new generation answers (else roll back). A rejected tree leaves the live one
//!   serving and is not retried until the configs change again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellplane_etcd::{Etcd, LeaseKeeper};
use cellplane_slb::{DomainConfig, MemberStatus};
use tracing::{debug, info, warn};

use crate::admin::{Admin, Pool, PushBody};
use crate::config::AgentConfig;
use crate::desired::Desired;
use crate::error::{AgentError, NginxError};
use crate::generations::Generations;
use crate::http::Shared;
use crate::metrics::Metrics;
use crate::nginx::Nginx;
use crate::render::{render, RenderOptions};

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    deadline: Instant,
}

pub struct Reconciler {
    cfg: AgentConfig,
    etcd: Etcd,
    domains_prefix: String,
    status_key: String,
    gens: Generations,
    nginx: Nginx,
    admin: Admin,
    render_opts: RenderOptions,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    pub(crate) lease: Option<LeaseKeeper>,

    /// What the shared dict holds, as far as we know; `None` forces a full replace.
    pushed: Option<BTreeMap<String, Pool>>,
    /// Configs of the live generation; `None` until known.
    live: Option<BTreeMap<String, DomainConfig>>,
    /// Configs nginx refused; not retried until they change.
    failed: Option<BTreeMap<String, DomainConfig>>,
    pending: Option<Pending>,
    /// When set, a fresh reconcile is due then (after a failure).
    pub(crate) retry_at: Option<Instant>,
    status: MemberStatus,
    written: Option<MemberStatus>,
    written_at: Option<Instant>,
    /// A throttled status write is due then.
    status_due: Option<Instant>,
    /// The first reconcile (and any start-up reload) is done.
    pub(crate) settled: bool,
}

/// Least time between two status writes that only move the revision.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn unix_now() -> u64 {
    cellplane_etcd::now_ms() / 1000
}

impl Reconciler {
    pub async fn new(
        cfg: AgentConfig,
        etcd: Etcd,
        shared: Arc<Shared>,
    ) -> Result<Reconciler, AgentError> {
        let gens = Generations::new(&cfg.nginx.conf_dir);
        gens.ensure_dirs()?;
        for d in [&cfg.nginx.temp_dir, &cfg.nginx.prefix] {
            std::fs::create_dir_all(d).map_err(|e| AgentError::io(d, e))?;
        }
        if let Some(parent) = cfg.nginx.error_log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
        }
        let nginx = Nginx::new(&cfg.nginx);
        let keys = etcd.keys().clone();
        let status = MemberStatus {
            host: cfg.host.clone(),
            nginx_version: nginx.version().await,
            ..MemberStatus::default()
        };
        Ok(Reconciler {
            domains_prefix: keys.slb_domains(&cfg.group),
            status_key: keys.slb_member(&cfg.group, &cfg.host),
            admin: Admin::new(cfg.nginx.admin_listen, Duration::from_secs(5)),
            render_opts: RenderOptions {
                settings: cfg.nginx.clone(),
                snapshot: gens.snapshot_path(),
            },
            gens,
            nginx,
            metrics: shared.metrics.clone(),
            shared,
            etcd,
            cfg,
            lease: None,
            pushed: None,
            live: None,
            failed: None,
            pending: None,
            retry_at: None,
            status,
            written: None,
            written_at: None,
            status_due: None,
            settled: false,
        })
    }

    pub fn status_key(&self) -> &str {
        &self.status_key
    }

    /// The earliest moment the main loop must wake for us.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.pending.map(|p| p.deadline),
            self.retry_at,
            self.status_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs whatever is due at `now`: a retry reconcile and/or a pending reload.
    pub async fn on_timer(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.reconcile(now).await;
        }
        if self.pending.is_some_and(|p| p.deadline <= now) {
            self.reload().await;
        }
        if self.status_due.is_some_and(|t| t <= now) {
            self.status_due = None;
            self.write_status().await;
        }
    }

    async fn read(&mut self) -> Result<Desired, AgentError> {
        let (kvs, rev) = self
            .etcd
            .list(&self.domains_prefix)
            .await
            .inspect_err(|_| {
                Metrics::inc(&self.metrics.etcd_errors);
            })?;
        let d = Desired::from_kvs(&self.domains_prefix, &kvs, rev);
        for reason in &d.invalid {
            Metrics::inc(&self.metrics.invalid_records);
            warn!(%reason, "skipping invalid SLB record");
        }
        self.metrics.seen_revision.fetch_max(rev, Ordering::Relaxed);
        Ok(d)
    }

    fn fail_later(&mut self) {
        let jitter = rand::random_range(0..=self.cfg.retry().as_millis() as u64 / 4);
        self.retry_at = Some(Instant::now() + self.cfg.retry() + Duration::from_millis(jitter));
    }

    /// A trigger: fresh read, push upstream changes now, schedule a reload for config changes.
    pub async fn reconcile(&mut self, triggered: Instant) {
        Metrics::inc(&self.metrics.reconciles);
        let desired = match self.read().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "fresh read failed; retrying");
                self.fail_later();
                return;
            }
        };
        let pushed_ok = self.push_upstreams(&desired).await;
        if pushed_ok {
            self.metrics
                .push_lag_us
                .store(triggered.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if self.live.is_none() {
            self.adopt_live(&desired);
        }
        let now = Instant::now();
        if Some(&desired.configs) == self.live.as_ref()
            || Some(&desired.configs) == self.failed.as_ref()
        {
            self.pending = None;
        } else {
            let first_ever = self.live.is_none() && !self.settled;
            self.pending = Some(match self.pending {
                _ if first_ever => Pending {
                    first: now,
                    deadline: now,
                },
                None => Pending {
                    first: now,
                    deadline: now + self.cfg.debounce(),
                },
                Some(p) => Pending {
                    first: p.first,
                    deadline: (now + self.cfg.debounce()).min(p.first + self.cfg.max_debounce()),
                },
            });
            debug!(domains = desired.configs.len(), "config change pending");
        }
        self.metrics
            .config_pending
            .store(self.pending.is_some() as u64, Ordering::Relaxed);
        if self.pending.is_none() {
            self.settled = true;
            if pushed_ok {
                self.mark_applied(desired.revision);
            }
        }
        self.write_status().await;
    }

    fn mark_applied(&mut self, revision: i64) {
        self.status.revision = revision;
        self.metrics
            .applied_revision
            .store(revision, Ordering::Relaxed);
        let err = self.status.last_error.clone();
        self.shared.update(|h| {
            h.applied_revision = revision;
            h.last_error = err;
        });
    }

    /// At start: if the live generation on disk is exactly what these configs render to, it is
    /// live already and no reload is needed.
    fn adopt_live(&mut self, desired: &Desired) {
        let Some(cur) = self.gens.current() else {
            return;
        };
        let want = render(
            &self.render_opts,
            &self.gens.path_of(&cur),
            &cur,
            &desired.configs,
        );
        match self.gens.read(&cur) {
            Ok(have) if have == want => {
                info!(generation = %cur, "live nginx config matches etcd; no reload needed");
                self.live = Some(desired.configs.clone());
                self.status.config_revision = desired.revision;
                self.metrics
                    .config_revision
                    .store(desired.revision, Ordering::Relaxed);
            }
            Ok(_) => info!(generation = %cur, "live nginx config differs from etcd; reloading"),
            Err(e) => warn!(generation = %cur, error = %e, "cannot read the live generation"),
        }
    }

    /// Pushes changed pools (all of them, replacing, when our view of nginx is unknown or a pool
    /// went away). Returns whether nginx now holds `desired.pools`.
    async fn push_upstreams(&mut self, desired: &Desired) -> bool {
        let (body, replace) = match &self.pushed {
            Some(p) if p == &desired.pools => return true,
            Some(p) if p.keys().all(|k| desired.pools.contains_key(k)) => {
                let changed: BTreeMap<String, Pool> = desired
                    .pools
                    .iter()
                    .filter(|(k, v)| p.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (changed, false)
            }
            _ => (desired.pools.clone(), true),
        };
        let snapshot = serde_json::to_vec(&PushBody {
            pools: &desired.pools,
            replace: true,
        })
        .unwrap_or_default();
        if let Err(e) = Generations::write_atomic(&self.gens.snapshot_path(), &snapshot) {
            warn!(error = %e, "cannot write the upstream snapshot");
        }
        match self.admin.push(&body, replace).await {
            Ok(()) => {
                Metrics::inc(&self.metrics.pushes);
                self.status.upstream_pushes += 1;
                debug!(
                    pools = body.len(),
                    replace,
                    revision = desired.revision,
                    "upstreams pushed"
                );
                self.pushed = Some(desired.pools.clone());
                true
            }
            Err(e) => {
                Metrics::inc(&self.metrics.push_failures);
                if self.nginx.master_pid().is_some() {
                    warn!(error = %e, "upstream push failed; retrying");
                } else {
                    debug!(error = %e, "nginx is not running; the snapshot will seed it");
                }
                self.pushed = None;
                self.fail_later();
                false
            }
        }
    }

    /// The debounced config change: fresh read, render, `nginx -t`, swap, HUP, confirm.
    pub async fn reload(&mut self) {
        let started = self.pending.map(|p| p.first).unwrap_or_else(Instant::now);
        self.pending = None;
        self.metrics.config_pending.store(0, Ordering::Relaxed);
        let desired = match self.read().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "fresh read for reload failed; retrying");
                self.pending = Some(Pending {
                    first: started,
                    deadline: Instant::now() + self.cfg.retry(),
                });
                return;
            }
        };
        let pushed_ok = self.push_upstreams(&desired).await;
        if Some(&desired.configs) == self.live.as_ref()
            || Some(&desired.configs) == self.failed.as_ref()
        {
            if pushed_ok {
                self.mark_applied(desired.revision);
            }
            self.settled = true;
            self.write_status().await;
            return;
        }
        match self.apply_config(&desired).await {
            Ok(()) => {
                self.live = Some(desired.configs.clone());
                self.failed = None;
                self.status.last_error = None;
                self.status.last_error_at = None;
                self.status.config_revision = desired.revision;
                self.metrics
                    .config_revision
                    .store(desired.revision, Ordering::Relaxed);
                self.metrics.last_error.store(0, Ordering::Relaxed);
                self.metrics
                    .reload_lag_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                if let Err(e) = self.gens.prune(self.cfg.nginx.keep_generations) {
                    warn!(error = %e, "cannot prune old generations");
                }
            }
            Err(e) => {
                warn!(error = %e, revision = desired.revision, "config change not applied; the previous config stays live");
                self.failed = Some(desired.configs.clone());
                self.status.last_error = Some(e.to_string());
                self.status.last_error_at = Some(unix_now());
                self.metrics.last_error.store(1, Ordering::Relaxed);
            }
        }
        if pushed_ok {
            self.mark_applied(desired.revision);
        }
        self.settled = true;
        self.write_status().await;
    }

    async fn apply_config(&mut self, desired: &Desired) -> Result<(), AgentError> {
        let name = self.gens.next_name()?;
        let dir = self.gens.path_of(&name);
        let tree = render(&self.render_opts, &dir, &name, &desired.configs);
        self.gens.write(&name, &tree)?;
        if let Err(e) = self.nginx.test(&dir.join("nginx.conf")).await {
            Metrics::inc(&self.metrics.validation_failures);
            self.status.validation_failures += 1;
            let _ = self.gens.discard(&name);
            return Err(e.into());
        }
        let previous = self.gens.current();
        self.gens.swap(&name)?;
        let Some(pid) = self.nginx.master_pid() else {
            info!(generation = %name, "config swapped; nginx is not running and will load it at start");
            return Ok(());
        };
        self.nginx.hup(pid)?;
        match self.confirm(pid, &name).await {
            Ok(()) => {
                Metrics::inc(&self.metrics.reloads);
                self.status.reload_count += 1;
                info!(generation = %name, pid, revision = desired.revision, domains = desired.configs.len(), "nginx reloaded");
                Ok(())
            }
            Err(e) => {
                Metrics::inc(&self.metrics.reload_failures);
                if let Some(prev) = previous {
                    let rolled = self
                        .gens
                        .swap(&prev)
                        .and_then(|()| Ok(self.nginx.hup(pid)?));
                    if let Err(r) = rolled {
                        warn!(error = %r, generation = %prev, "rollback failed");
                    }
                }
                let _ = self.gens.discard(&name);
                Err(e.into())
            }
        }
    }

    /// Waits until the admin server answers with the new generation.
    async fn confirm(&self, pid: i32, name: &str) -> Result<(), NginxError> {
        let timeout_ms = self.cfg.nginx.reload_confirm_timeout_ms;
        let until = Instant::now() + Duration::from_millis(timeout_ms);
        let mut seen;
        loop {
            match self.admin.generation().await {
                Ok(g) if g == name => return Ok(()),
                Ok(g) => seen = g,
                Err(e) => seen = e.to_string(),
            }
            if Instant::now() >= until {
                return Err(NginxError::ReloadNotConfirmed {
                    pid,
                    generation: name.to_string(),
                    seen,
                    timeout_ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes the member status under our lease when it changed (or the lease is new).
    pub async fn write_status(&mut self) {
        let mut st = self.status.clone();
        st.updated_at = 0;
        let lease_ok = self.lease.as_ref().is_some_and(|l| !l.is_lost());
        if self.written.as_ref() == Some(&st) && lease_ok {
            return;
        }
        // Only the revision and push counter moved: at most one write per STATUS_INTERVAL, so
        // a stream of upstream changes does not turn into a stream of status writes.
        if let (Some(w), Some(at), true) = (&self.written, self.written_at, lease_ok) {
            let minor = MemberStatus {
                revision: w.revision,
                upstream_pushes: w.upstream_pushes,
                ..st.clone()
            } == *w;
            if minor && at.elapsed() < STATUS_INTERVAL {
                self.status_due = Some(at + STATUS_INTERVAL);
                return;
            }
        }
        if self.lease.as_ref().is_none_or(|l| l.is_lost()) {
            match LeaseKeeper::grant(&self.etcd, self.cfg.lease_ttl_secs).await {
                Ok(l) => self.lease = Some(l),
                Err(e) => {
                    Metrics::inc(&self.metrics.etcd_errors);
                    debug!(error = %e, "cannot grant the member lease yet");
                    self.fail_later();
                    return;
                }
            }
        }
        let Some(lease) = self.lease.as_ref() else {
            return;
        };
        let mut full = self.status.clone();
        full.updated_at = unix_now();
        let body = serde_json::to_vec(&full).unwrap_or_default();
        match self
            .etcd
            .put_with_lease(&self.status_key, body, lease.id())
            .await
        {
            Ok(_) => {
                self.written = Some(st);
                self.written_at = Some(Instant::now());
                self.status_due = None;
            }
            Err(e) => {
                Metrics::inc(&self.metrics.etcd_errors);
                debug!(error = %e, "member status write failed; retrying");
                self.written = None;
                self.fail_later();
            }
        }
    }

    /// Forget the lease (it was lost): the next status write grants a new one.
    pub fn lease_lost(&mut self) {
        self.lease = None;
        self.written = None;
    }
}
