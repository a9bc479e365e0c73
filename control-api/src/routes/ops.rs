//! `/healthz` (etcd answers) and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let probe = format!("{}/healthz", s.etcd.keys().root());
    match s.etcd.get(&probe).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "etcd": "ok" })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "etcd": e.to_string() })),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
