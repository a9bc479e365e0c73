//! The agent's own HTTP endpoints: `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::error::AgentError;
use crate::metrics::Metrics;

/// Health as the main loop last reported it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The first reconcile is done.
    pub ready: bool,
    pub applied_revision: i64,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub last_loop: Instant,
}

pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub health: Mutex<Health>,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Shared> {
        Arc::new(Shared {
            metrics,
            health: Mutex::new(Health {
                ready: false,
                applied_revision: 0,
                last_error: None,
                last_loop: Instant::now(),
            }),
        })
    }

    pub fn update(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.health.lock() {
            f(&mut h);
        }
    }
}

/// The main loop wakes at least this often; a stalled loop makes `/healthz` fail.
pub const LOOP_STALL: Duration = Duration::from_secs(30);

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let h = match s.health.lock() {
        Ok(h) => h.clone(),
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "poisoned".to_string()),
    };
    let ok = h.ready && h.last_loop.elapsed() < LOOP_STALL;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, serde_json::to_string(&h).unwrap_or_default())
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config {
            field: "http_listen".into(),
            reason: format!("cannot listen on {addr}: {e}"),
        })
}
