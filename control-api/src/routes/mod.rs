//! The router, one module per area: `slb` (this issue); pools and builds come later.

pub mod ops;
pub mod slb;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use cellplane_etcd::Etcd;

use crate::auth::Tokens;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub etcd: Etcd,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(slb::routes())
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
