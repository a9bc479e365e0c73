//! nginx-agent: keeps one nginx host in line with its SLB group in etcd.
//!
//! `run(config, shutdown)` is the whole daemon; `main.rs` only parses arguments, installs the
//! tracing subscriber and waits for SIGTERM/SIGINT. See `reconciler` for the behaviour.

pub mod admin;
pub mod config;
pub mod desired;
pub mod error;
pub mod generations;
pub mod http;
pub mod metrics;
pub mod nginx;
pub mod reconciler;
pub mod render;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellplane_etcd::{watch_prefix, Etcd, WatchUpdate};
use futures::FutureExt;
use tracing::{info, warn};

pub use config::{AgentConfig, Cli, NginxSettings};
pub use error::AgentError;

use crate::http::Shared;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use cellplane_daemon::Notifier;

/// Runs the agent until `shutdown` resolves. Never stops nginx. On the way out the member
/// lease is revoked so the status key disappears at once.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    config.validate()?;
    let notifier = Notifier::from_env();
    let metrics = Arc::new(Metrics::default());
    let shared = Shared::new(metrics.clone());
    let listener = http::bind(config.http_listen).await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
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

    // etcd may not be up yet: keep trying until it is, or until we are told to stop.
    let etcd = loop {
        match Etcd::connect(&config.etcd).await {
            Ok(e) => break Some(e),
            Err(e) => {
                warn!(error = %e, "etcd not reachable yet");
                tokio::select! {
                    _ = &mut shutdown => break None,
                    _ = tokio::time::sleep(config.retry()) => {}
                }
            }
        }
    };
    let result = match etcd {
        Some(etcd) => main_loop(config, etcd, shared, &notifier, &mut shutdown).await,
        None => Ok(()),
    };
    notifier.stopping();
    let _ = stop_tx.send(true);
    let _ = stop_rx.changed().now_or_never();
    let _ = server.await;
    info!("nginx-agent stopped");
    result
}

async fn main_loop(
    config: AgentConfig,
    etcd: Etcd,
    shared: Arc<Shared>,
    notifier: &Notifier,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), AgentError> {
    let group_prefix = etcd.keys().slb_group(&config.group);
    let members_prefix = etcd.keys().slb_members(&config.group);
    info!(group = %config.group, host = %config.host, conf_dir = %config.nginx.conf_dir.display(), "nginx-agent starting");
    let mut rec = Reconciler::new(config.clone(), etcd.clone(), shared.clone()).await?;
    let mut watch = watch_prefix(etcd.clone(), group_prefix.clone(), None);
    let watchdog = notifier.watchdog_interval();
    let tick = watchdog
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut ready_sent = false;
    loop {
        let wake = rec
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + tick)
            .min(Instant::now() + tick);
        let lease_lost = async {
            match rec.lease.as_mut() {
                Some(l) => l.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut *shutdown => break,
            update = watch.next() => {
                let triggered = Instant::now();
                let Some(first) = update else {
                    warn!("watch ended; restarting it");
                    tokio::time::sleep(config.retry()).await;
                    watch = watch_prefix(etcd.clone(), group_prefix.clone(), None);
                    continue;
                };
                // Coalesce whatever else is already queued into this one trigger.
                let mut relevant = false;
                let mut next = Some(first);
                while let Some(u) = next {
                    shared.metrics.seen_revision.fetch_max(u.revision(), Ordering::Relaxed);
                    match &u {
                        WatchUpdate::Resync { .. } => {
                            Metrics::inc(&shared.metrics.watch_resyncs);
                            relevant = true;
                        }
                        WatchUpdate::Events { events, .. } => {
                            relevant |= events.iter().any(|e| !e.kv.key.starts_with(&members_prefix));
                        }
                    }
                    next = watch.next().now_or_never().flatten();
                }
                if relevant {
                    rec.reconcile(triggered).await;
                }
            }
            reason = lease_lost => {
                warn!(%reason, "member lease lost; writing the status under a new one");
                rec.lease_lost();
                rec.write_status().await;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                rec.on_timer(Instant::now()).await;
            }
        }
        shared.update(|h| {
            h.last_loop = Instant::now();
            h.ready |= rec.settled;
        });
        if rec.settled && !ready_sent {
            notifier.ready();
            ready_sent = true;
            info!("first reconcile done; ready");
        }
        notifier.watchdog();
    }
    if let Some(lease) = rec.lease.take() {
        if let Err(e) = lease.revoke().await {
            warn!(error = %e, "could not revoke the member lease; it will expire");
        }
    }
    Ok(())
}
