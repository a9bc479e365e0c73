//! discovery: watches Kubernetes Services and EndpointSlices (kube-rs reflectors) and pushes,
//! per SLB domain, the full list of ready, not-terminating endpoints to the control API.
//! See `README.md` for the annotations and configuration keys.

pub mod annotations;
pub mod config;
pub mod error;
pub mod metrics;
pub mod push;
pub mod sync;
pub mod upstreams;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tracing::{info, warn};

pub use config::{Cli, DiscoveryConfig};
pub use error::{ConfigError, DiscoveryError, PushError};
pub use metrics::Metrics;

async fn kube_client(cfg: &DiscoveryConfig) -> Result<kube::Client, DiscoveryError> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| DiscoveryError::Kube(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| DiscoveryError::Kube(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| DiscoveryError::Kube(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| DiscoveryError::Kube(e.to_string()))
}

/// Runs until `shutdown` resolves. `/healthz` answers 200 once both watches have listed and
/// the first pushes were attempted (503 before); READY=1 goes to systemd at the same moment
/// when `NOTIFY_SOCKET` is set.
pub async fn run(
    cfg: DiscoveryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DiscoveryError> {
    cfg.validate()?;
    let client = kube_client(&cfg).await?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|source| DiscoveryError::Listen {
            addr: cfg.http_listen,
            source,
        })?;
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.synced.load(Ordering::Relaxed) == 1 {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics.clone());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    info!(listen = %cfg.http_listen, control_api = %cfg.control_api, "discovery starting");
    // READY=1 after the first full sync; then watchdog pings while the runtime runs
    let notifier = cellplane_daemon::Notifier::from_env();
    let pinger = notifier.clone();
    let watchdog = std::sync::Mutex::new(None);
    sync::run(client, cfg, metrics, shutdown, || {
        pinger.ready();
        if let Some(every) = pinger.watchdog_interval() {
            let n = pinger.clone();
            *watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    n.watchdog();
                }
            }));
        }
    })
    .await;
    notifier.stopping();
    if let Some(w) = watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
        w.abort();
    }
    let _ = stop_http.send(());
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "http server"),
        Err(e) => warn!(error = %e, "http server task"),
    }
    info!("discovery stopped");
    Ok(())
}
