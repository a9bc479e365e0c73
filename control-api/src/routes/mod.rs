//! The router, one module per area: `pools` (IPAM), `slb`, `builds`, `webhook` (GitLab), `ops`
//! (health, metrics); `audit` holds what every write shares.

pub mod audit;
pub mod builds;
pub mod ops;
pub mod pools;
pub mod slb;
pub mod webhook;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use cellplane_etcd::Etcd;

use crate::agent_client::AgentClient;
use crate::auth::Tokens;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub etcd: Etcd,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
    /// Talks to build agents (the log proxy).
    pub agents: AgentClient,
    pub webhook: Arc<webhook::Webhook>,
    /// Becomes `true` when the API shuts down: ends streamed responses (followed logs).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(pools::routes())
        .merge(slb::routes())
        .merge(builds::routes())
        .merge(webhook::routes())
        .merge(ops::routes())
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    s.metrics.request(&method, &route, resp.status().as_u16());
    resp
}
