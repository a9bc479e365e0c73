//! control-api: stateless HTTP/JSON over etcd. This crate serves the SLB routes (domains,
//! upstreams, members), `/healthz` and `/metrics`; later issues add pools, builds and the
//! webhook as further modules under `routes/`.

pub mod auth;
pub mod config;
pub mod error;
pub mod json;
pub mod metrics;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use cellplane_etcd::Etcd;
use tracing::info;

pub use config::{ApiConfig, Cli, TokenConfig};
pub use error::{ApiError, ConfigError};
pub use routes::{router, AppState};

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

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let etcd = Etcd::connect(&config.etcd).await?;
    let state = AppState {
        etcd,
        tokens: Arc::new(auth::Tokens::new(config.tokens.clone())),
        metrics: Arc::new(metrics::Metrics::default()),
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
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RunError::Serve);
    notifier.stopping();
    if let Some(w) = watchdog {
        w.abort();
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
