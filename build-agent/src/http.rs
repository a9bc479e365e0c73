//! The agent's HTTP server: build logs, `/healthz`, `/metrics`.
//!
//! - `GET /v1/builds/{build}/log`: the whole log as `text/plain`.
//! - `GET /v1/builds/{build}/log?follow=true`: chunked; what is written so far, then every new
//!   line as it is written, until the build ends (at once if it already has).
//! - 404 with `{"error": ...}` for a build this agent has no log of; 400 for a malformed id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::buildlog::{LogHub, LogState};
use crate::error::AgentError;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Registered and the first scan of the task prefix done.
    pub ready: bool,
    pub agent: String,
    pub running: usize,
    pub queued: usize,
    #[serde(skip)]
    pub last_loop: Instant,
}

pub struct Shared {
    pub hub: Arc<LogHub>,
    pub metrics: Arc<Metrics>,
    pub health: Mutex<Health>,
}

impl Shared {
    pub fn new(hub: Arc<LogHub>, metrics: Arc<Metrics>, agent: &str) -> Arc<Shared> {
        Arc::new(Shared {
            hub,
            metrics,
            health: Mutex::new(Health {
                ready: false,
                agent: agent.to_string(),
                running: 0,
                queued: 0,
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

/// The main loop wakes at least every few seconds; a stalled loop makes `/healthz` fail.
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

fn json_error(code: StatusCode, msg: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": msg }).to_string(),
    )
        .into_response()
}

async fn build_log(
    State(s): State<Arc<Shared>>,
    Path(build): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = cellplane_build::validate_build_id(&build) {
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let follow = q
        .get("follow")
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty());
    let mut live = s.hub.live(&build);
    let path = s.hub.path(&build);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("build {build} has no log on this agent"),
            )
        }
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of build {build}: {e}"),
            )
        }
    };
    if live.is_none() {
        // taken by the agent between the first look and the open
        live = s.hub.live(&build);
    }
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match live.filter(|_| follow) {
        None => {
            let mut file = file;
            let mut buf = Vec::new();
            if let Err(e) = file.read_to_end(&mut buf).await {
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the log of build {build}: {e}"),
                );
            }
            (text_plain, buf).into_response()
        }
        Some(log) => {
            let rx = log.subscribe();
            drop(log);
            (text_plain, Body::from_stream(follow_stream(file, rx))).into_response()
        }
    }
}

struct Follow {
    file: tokio::fs::File,
    rx: watch::Receiver<LogState>,
    offset: u64,
    done: bool,
}

/// The file from the start, then what is appended, until the log ends.
fn follow_stream(
    file: tokio::fs::File,
    rx: watch::Receiver<LogState>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let st = Follow {
        file,
        rx,
        offset: 0,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match st.file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            if n > 0 {
                st.offset += n as u64;
                buf.truncate(n);
                return Some((Ok(Bytes::from(buf)), st));
            }
            let state = *st.rx.borrow_and_update();
            if st.offset < state.len {
                continue; // written between our read and now
            }
            if state.ended {
                return None;
            }
            if st.rx.changed().await.is_err() {
                // the log is gone (build ended and dropped): send what is left, then end
                st.done = true;
                let mut rest = Vec::new();
                let _ = st.file.read_to_end(&mut rest).await;
                return if rest.is_empty() {
                    None
                } else {
                    Some((Ok(Bytes::from(rest)), st))
                };
            }
        }
    })
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/builds/{build}/log", get(build_log))
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
