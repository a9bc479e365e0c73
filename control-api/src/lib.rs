//! control-api: stateless HTTP/JSON over etcd. This crate serves the IP pool routes (pools with
//! usage, add, drain, activate, remove, block ownership per pool and per node), the SLB routes
//! (domains, upstreams, members), builds (submit, status, cancel, log proxy, agents), the GitLab
//! push webhook, `/healthz` and `/metrics`, and runs the recovery of lost build agents' tasks.

pub mod agent_client;
pub mod auth;
pub mod config;
pub mod error;
pub mod json;
pub mod metrics;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cellplane_etcd::Etcd;
use tracing::info;

pub use config::{ApiConfig, Cli, TokenConfig};
pub use error::{ApiError, ConfigError};
pub use routes::{router, AppState};

/// How long the stopped recovery loop may take to finish the agent it is handling.
const RECOVERY_STOP_WAIT: Duration = Duration::from_secs(5);
/// How often the status of long-finished builds is pruned (`[builds] status_retention_hours`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Etcd(#[from] cellplane_etcd::EtcdError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves until `shutdown` resolves, then drains in-flight requests (followed build logs are
/// ended). Also runs the recovery of lost build agents' tasks for as long as it serves.
pub async fn run(
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let webhook = routes::webhook::Webhook {
        gitlab_secret: config.webhook.secret()?,
        projects: config.webhook.projects.clone(),
    };
    let etcd = Etcd::connect(&config.etcd).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = AppState {
        etcd,
        tokens: Arc::new(auth::Tokens::new(config.tokens.clone())),
        metrics: Arc::new(metrics::Metrics::default()),
        agents: agent_client::AgentClient::new(Duration::from_millis(
            config.builds.agent_timeout_ms,
        )),
        webhook: Arc::new(webhook),
        shutdown: stop_rx.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    // Ready for systemd only once etcd answers (connections wait in the listen backlog).
    let notifier = cellplane_daemon::Notifier::from_env();
    wait_for_etcd(&state.etcd).await;
    info!(listen = %config.listen, tokens = config.tokens.len(), "control-api serving");
    notifier.ready();
    let watchdog = notifier.watchdog_interval().map(|every| {
        let n = notifier.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        })
    });
    let mut recovery_stop = stop_rx;
    let recovery = tokio::spawn(cellplane_build::dispatch::run_recovery(
        state.etcd.clone(),
        Duration::from_secs(config.builds.recovery_rescan_secs),
        async move {
            // also ends if `run` returns early and drops the sender
            let _ = recovery_stop.wait_for(|stopping| *stopping).await;
        },
    ));
    let retention = (config.builds.status_retention_hours > 0)
        .then(|| Duration::from_secs(config.builds.status_retention_hours.saturating_mul(3600)));
    let pruning = retention.map(|keep| {
        let etcd = state.etcd.clone();
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopping| *stopping) => return,
                    _ = tick.tick() => {}
                }
                let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
                let cutoff = cellplane_etcd::now_ms().saturating_sub(keep_ms);
                if let Err(e) = cellplane_build::dispatch::prune_finished(&etcd, cutoff).await {
                    tracing::warn!(error = %e, "pruning old build statuses failed; will retry");
                }
            }
        })
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RunError::Serve);
    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    let recovery_abort = recovery.abort_handle();
    if tokio::time::timeout(RECOVERY_STOP_WAIT, recovery)
        .await
        .is_err()
    {
        tracing::warn!("build recovery did not stop in time; aborted");
        recovery_abort.abort();
    }
    if let Some(p) = pruning {
        p.abort();
    }
    served?;
    info!("control-api stopped");
    Ok(())
}

/// Waits until etcd answers, retrying with a capped backoff (requests fail with 503 meanwhile).
async fn wait_for_etcd(etcd: &Etcd) {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match etcd.revision().await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "etcd not reachable yet; waiting before reporting ready");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}
