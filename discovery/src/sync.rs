//! The sync loop: Service and EndpointSlice reflectors -> per-domain upstream lists -> pushes.
//!
//! Every event marks the domains it can affect; a marked domain is recomputed from the
//! reflector stores and pushed once its coalescing window (counted from its first unpushed
//! change, never extended) has passed. A list equal to the last successful push is not sent.
//! Failed pushes are retried with exponential backoff; the domain keeps the time of its
//! first unpushed change, so the lag metric covers outages too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::annotations::{self, DomainKey, Target};
use crate::metrics::Metrics;
use crate::push::ControlApi;
use crate::upstreams::{self, SERVICE_NAME_LABEL};
use crate::DiscoveryConfig;

/// "namespace/name" of a Service.
type SvcKey = (String, String);

struct Pending {
    first_change: Instant,
    due: Instant,
    attempt: u32,
}

enum Msg {
    Svc(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Box<Result<Event<EndpointSlice>, watcher::Error>>),
}

pub struct Syncer {
    cfg: DiscoveryConfig,
    api: ControlApi,
    metrics: Arc<Metrics>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Opted-in Services and where their endpoints go.
    targets: HashMap<SvcKey, Target>,
    /// Malformed Services already warned about, at their resourceVersion.
    warned: HashMap<SvcKey, String>,
    pending: HashMap<DomainKey, Pending>,
    /// Last list the control API accepted, per domain.
    pushed: HashMap<DomainKey, Vec<String>>,
    synced_svc: bool,
    synced_slices: bool,
}

/// Runs until `shutdown`; `on_synced` is called once, after both watches listed and the first
/// pushes were attempted.
pub async fn run(
    client: kube::Client,
    cfg: DiscoveryConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
    on_synced: impl FnOnce(),
) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_stream = reflector::reflector(
        svc_writer,
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|r| Msg::Svc(Box::new(r)))
    .boxed();
    let slice_stream = reflector::reflector(
        slice_writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
    )
    .default_backoff()
    .map(|r| Msg::Slice(Box::new(r)))
    .boxed();
    let mut events = futures::stream::select(svc_stream, slice_stream);
    let api = ControlApi::new(
        &cfg.control_api,
        cfg.token_file.clone(),
        Duration::from_millis(cfg.request_timeout_ms),
    );
    let mut s = Syncer {
        cfg,
        api,
        metrics,
        services: svc_store,
        slices: slice_store,
        targets: HashMap::new(),
        warned: HashMap::new(),
        pending: HashMap::new(),
        pushed: HashMap::new(),
        synced_svc: false,
        synced_slices: false,
    };
    let mut on_synced = Some(on_synced);
    tokio::pin!(shutdown);
    loop {
        let next_due = s.pending.values().map(|p| p.due).min();
        let sleep = async {
            match next_due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            msg = events.next() => match msg {
                Some(m) => s.handle(m),
                None => break,
            },
            _ = sleep => {
                s.flush().await;
                if s.synced_svc && s.synced_slices {
                    if let Some(f) = on_synced.take() {
                        s.metrics.synced.store(1, Ordering::Relaxed);
                        info!(domains = s.metrics.domains.load(Ordering::Relaxed), "first sync done");
                        f();
                    }
                }
            }
        }
        if s.synced_svc && s.synced_slices && s.pending.is_empty() {
            if let Some(f) = on_synced.take() {
                s.metrics.synced.store(1, Ordering::Relaxed);
                info!("first sync done (nothing to push)");
                f();
            }
        }
    }
}

impl Syncer {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Svc(r) => match *r {
                Err(e) => self.watch_error(e),
                Ok(ev) => match ev {
                    Event::Apply(svc) | Event::Delete(svc) => {
                        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
                        if self.synced_svc {
                            self.service_changed(key);
                        }
                    }
                    Event::Init | Event::InitApply(_) => {}
                    Event::InitDone => {
                        self.synced_svc = true;
                        self.resync();
                    }
                },
            },
            Msg::Slice(r) => match *r {
                Err(e) => self.watch_error(e),
                Ok(ev) => match ev {
                    Event::Apply(slice) | Event::Delete(slice) => {
                        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                            let key = (slice.namespace().unwrap_or_default(), svc.clone());
                            if let Some(t) = self.targets.get(&key) {
                                let d = t.domain.clone();
                                self.mark(d);
                            }
                        }
                    }
                    Event::Init | Event::InitApply(_) => {}
                    Event::InitDone => {
                        self.synced_slices = true;
                        self.resync();
                    }
                },
            },
        }
    }

    fn watch_error(&self, e: watcher::Error) {
        self.metrics.watch_errors.fetch_add(1, Ordering::Relaxed);
        warn!(error = %e, "Kubernetes watch error; retrying with backoff");
    }

    /// After a (re-)list: every Service is re-read and every known domain recomputed.
    fn resync(&mut self) {
        let mut keys: HashSet<SvcKey> = self.targets.keys().cloned().collect();
        for svc in self.services.state() {
            keys.insert((svc.namespace().unwrap_or_default(), svc.name_any()));
        }
        for k in keys {
            self.service_changed(k);
        }
        let known: Vec<DomainKey> = self.pushed.keys().cloned().collect();
        for d in known {
            self.mark(d);
        }
        self.update_gauges();
    }

    fn service_changed(&mut self, key: SvcKey) {
        let obj = self
            .services
            .get(&reflector::ObjectRef::new(&key.1).within(&key.0));
        let old = self.targets.get(&key).cloned();
        let new = match obj.as_deref() {
            None => None,
            Some(svc) => match annotations::parse(svc.metadata.annotations.as_ref()) {
                Ok(t) => {
                    self.warned.remove(&key);
                    t
                }
                Err(e) => {
                    let rv = svc.resource_version().unwrap_or_default();
                    if self.warned.get(&key) != Some(&rv) {
                        warn!(service = %format!("{}/{}", key.0, key.1), error = %e,
                            kept = old.is_some(),
                            "malformed SLB annotations; Service skipped (a previous valid mapping is kept)");
                        self.warned.insert(key.clone(), rv);
                    }
                    old.clone()
                }
            },
        };
        if obj.is_none() {
            self.warned.remove(&key);
        }
        if let Some(o) = &old {
            self.mark(o.domain.clone());
        }
        match new {
            Some(t) => {
                self.mark(t.domain.clone());
                self.targets.insert(key, t);
            }
            None => {
                self.targets.remove(&key);
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let domains: HashSet<&DomainKey> = self.targets.values().map(|t| &t.domain).collect();
        self.metrics
            .domains
            .store(domains.len() as u64, Ordering::Relaxed);
        self.metrics
            .services_malformed
            .store(self.warned.len() as u64, Ordering::Relaxed);
    }

    fn mark(&mut self, d: DomainKey) {
        let now = Instant::now();
        let window = Duration::from_millis(self.cfg.coalesce_ms);
        self.pending.entry(d).or_insert(Pending {
            first_change: now,
            due: now + window,
            attempt: 0,
        });
    }

    /// The list `d` should have now; `None`: leave it alone.
    fn desired(&self, d: &DomainKey) -> Option<Vec<String>> {
        let feeding: Vec<(&SvcKey, &Target)> = self
            .targets
            .iter()
            .filter(|(_, t)| &t.domain == d)
            .collect();
        if feeding.is_empty() {
            // opted out: empty it (default) or keep the last list
            return (!self.cfg.keep_on_opt_out && self.pushed.contains_key(d)).then(Vec::new);
        }
        let mut out = BTreeSet::new();
        for slice in self.slices.state() {
            let ns = slice.namespace().unwrap_or_default();
            let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) else {
                continue;
            };
            if let Some((_, t)) = feeding.iter().find(|(k, _)| k.0 == ns && &k.1 == svc) {
                upstreams::collect(&slice, &t.port, &mut out);
            }
        }
        Some(out.into_iter().collect())
    }

    async fn flush(&mut self) {
        if !(self.synced_svc && self.synced_slices) {
            // never push from a partial view; re-arm after the first full list
            let later = Instant::now() + Duration::from_millis(100);
            for p in self.pending.values_mut() {
                p.due = p.due.max(later);
            }
            return;
        }
        let now = Instant::now();
        let due: Vec<DomainKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for d in due {
            let Some(want) = self.desired(&d) else {
                self.pending.remove(&d);
                if self.cfg.keep_on_opt_out {
                    self.pushed.remove(&d);
                }
                continue;
            };
            if self.pushed.get(&d) == Some(&want) {
                self.metrics.unchanged.fetch_add(1, Ordering::Relaxed);
                self.pending.remove(&d);
                continue;
            }
            match self.api.put_upstreams(&d, &want).await {
                Ok(()) => {
                    if let Some(p) = self.pending.remove(&d) {
                        let lag = p.first_change.elapsed();
                        self.metrics.observe_lag(lag);
                        info!(group = %d.group, domain = %d.domain, servers = want.len(),
                            lag_ms = lag.as_millis() as u64, "upstreams pushed");
                    }
                    self.metrics.pushes.fetch_add(1, Ordering::Relaxed);
                    self.pushed.insert(d, want);
                }
                Err(e) => {
                    self.metrics.push_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = self.pending.get_mut(&d) {
                        let backoff = self
                            .cfg
                            .retry_min_ms
                            .saturating_mul(1u64 << p.attempt.min(16))
                            .min(self.cfg.retry_max_ms);
                        p.attempt += 1;
                        p.due = Instant::now() + Duration::from_millis(backoff);
                        warn!(group = %d.group, domain = %d.domain, error = %e,
                            attempt = p.attempt, retry_in_ms = backoff, "upstream push failed");
                    }
                }
            }
        }
        debug!(pending = self.pending.len(), "flush done");
    }
}
