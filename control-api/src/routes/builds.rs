//! Build routes over the dispatch protocol of `cellplane-build`. Writes: authorize
//! (`builds:write`) -> validate -> dispatch (one guarded etcd transaction) -> audit log.
//!
//! - `POST /v1/builds`                  body: `BuildRequest`; 201 `{build, agent, status_url, log_url}`
//! - `GET  /v1/builds?limit=N&state=S`  recent builds, newest first
//! - `GET  /v1/builds/agents`           live agents with their queued and running builds
//! - `GET  /v1/builds/{build}`          the build's status record
//! - `POST /v1/builds/{build}/cancel`   202; 409 once the build has ended
//! - `GET  /v1/builds/{build}/log[?follow=true]`  proxied from the build's agent, streamed

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cellplane_build::dispatch::{self, DispatchError};
use cellplane_build::{
    validate_build_id, validate_request, AgentRecord, BuildRequest, BuildState, BuildStatus,
    BuildTask,
};
use cellplane_etcd::now_ms;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::json;
use tracing::{instrument, warn};

use super::audit::{audit, authorize_write, Write};
use super::AppState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::json::parse;

const BUILDS_ROUTE: &str = "/v1/builds";
const CANCEL_ROUTE: &str = "/v1/builds/{build}/cancel";
/// Builds listed when the request names no `limit`, and the most it may name.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// How long a log request for a queued build waits for its agent to have taken the task.
const QUEUED_LOG_WAIT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BUILDS_ROUTE, get(list_builds).post(submit))
        // a static segment wins over `{build}` (build ids are generated and never "agents")
        .route("/v1/builds/agents", get(list_agents))
        .route("/v1/builds/{build}", get(get_build))
        .route(CANCEL_ROUTE, post(cancel))
        .route("/v1/builds/{build}/log", get(build_log))
}

/// A new build id: `b-` + submission time (Unix ms, base 36, fixed width so ids sort by time)
/// + `-` + 6 random base-36 digits.
pub fn new_build_id() -> String {
    use rand::Rng;
    fn base36(mut n: u64, width: usize) -> String {
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut out = vec![b'0'; width];
        for slot in out.iter_mut().rev() {
            *slot = DIGITS[(n % 36) as usize];
            n /= 36;
        }
        String::from_utf8(out).unwrap_or_default()
    }
    let random: u64 = rand::rng().random_range(0..36u64.pow(6));
    format!("b-{}-{}", base36(now_ms(), 9), base36(random, 6))
}

/// What a submit answers (API and webhook alike).
#[derive(Debug, Serialize)]
pub struct Submitted {
    pub build: String,
    pub agent: String,
    pub status_url: String,
    pub log_url: String,
}

impl Submitted {
    /// 201 with a `Location` of the status, plus `extra` fields.
    pub fn created(&self, extra: serde_json::Value) -> Response {
        let mut body = serde_json::to_value(self).unwrap_or_default();
        if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let mut resp = (StatusCode::CREATED, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.status_url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }
}

/// Validates and dispatches a build (shared by the API and the webhook). Nothing is written
/// unless the request validated.
pub async fn submit_build(
    s: &AppState,
    request: BuildRequest,
    submitted_by: &str,
    source: &'static str,
) -> Result<Submitted, ApiError> {
    validate_request(&request)?;
    let mut task = BuildTask {
        build: String::new(),
        request,
        attempt: 0,
        submitted_at_ms: 0,
        submitted_by: submitted_by.to_string(),
        cancel: false,
    };
    for _ in 0..3 {
        task.build = new_build_id();
        task.submitted_at_ms = now_ms();
        match dispatch::submit(&s.etcd, &task).await {
            Ok(agent) => {
                s.metrics.build_submitted(source);
                return Ok(Submitted {
                    status_url: format!("/v1/builds/{}", task.build),
                    log_url: format!("/v1/builds/{}/log", task.build),
                    build: task.build,
                    agent,
                });
            }
            Err(DispatchError::AlreadyExists(_)) => continue, // an id collision: draw again
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        what: "build id".into(),
    })
}

fn check_build(build: &str) -> Result<(), ApiError> {
    validate_build_id(build).map_err(ApiError::from)
}

#[instrument(skip(s, headers, body))]
async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = Write {
        route: BUILDS_ROUTE,
        action: "submit build",
        target: "-",
    };
    let who = authorize_write(&s, &headers, Scope::BuildsWrite, &w)?;
    let r = async {
        let request: BuildRequest = parse(&body)?;
        submit_build(&s, request, &who.name, "api").await
    }
    .await;
    let target = r.as_ref().map_or("-", |sub| sub.build.as_str());
    audit(
        &s,
        Some(&who.name),
        &Write { target, ..w },
        r.as_ref().map(|_| "submitted"),
    );
    Ok(r?.created(json!({})))
}

fn query_usize(q: &BTreeMap<String, String>, name: &str) -> Result<Option<usize>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<usize>().map_err(|_| ApiError::BadRequest {
                field: name.into(),
                reason: format!("{v:?}: must be a non-negative integer"),
            })
        })
        .transpose()
}

fn refuse_unknown_params(q: &BTreeMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::BadRequest {
            field: k.clone(),
            reason: format!("unknown query parameter; known: {}", known.join(", ")),
        }),
        None => Ok(()),
    }
}

#[instrument(skip(s, headers))]
async fn list_builds(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    refuse_unknown_params(&q, &["limit", "state", "agent"])?;
    let limit = query_usize(&q, "limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT);
    let state: Option<BuildState> = q
        .get("state")
        .map(|v| {
            serde_json::from_value(json!(v)).map_err(|_| ApiError::BadRequest {
                field: "state".into(),
                reason: format!("{v:?}: one of queued, running, succeeded, failed, cancelled"),
            })
        })
        .transpose()?;
    let (kvs, revision) = s.etcd.list(&s.etcd.keys().all_build_status()).await?;
    let mut builds: Vec<BuildStatus> = kvs
        .iter()
        .filter_map(|kv| {
            kv.json()
                .inspect_err(
                    |e| warn!(key = %kv.key, error = %e, "skipping an unreadable build status"),
                )
                .ok()
        })
        .filter(|b: &BuildStatus| state.is_none_or(|st| b.state == st))
        .filter(|b| q.get("agent").is_none_or(|a| &b.agent == a))
        .collect();
    builds.sort_by(|a, b| {
        b.submitted_at_ms
            .cmp(&a.submitted_at_ms)
            .then_with(|| b.build.cmp(&a.build))
    });
    let total = builds.len();
    builds.truncate(limit);
    Ok(Json(
        json!({ "revision": revision, "total": total, "builds": builds }),
    ))
}

#[instrument(skip(s, headers))]
async fn get_build(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(build): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_build(&build)?;
    match dispatch::get_status(&s.etcd, &build).await? {
        Some((status, _)) => Ok(Json(status)),
        None => Err(ApiError::NotFound {
            what: format!("build {build}"),
        }),
    }
}

#[instrument(skip(s, headers))]
async fn cancel(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(build): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let w = Write {
        route: CANCEL_ROUTE,
        action: "cancel build",
        target: &build,
    };
    let who = authorize_write(&s, &headers, Scope::BuildsWrite, &w)?;
    let r = async {
        check_build(&build)?;
        Ok::<_, ApiError>(dispatch::cancel(&s.etcd, &build).await?)
    }
    .await;
    audit(
        &s,
        Some(&who.name),
        &w,
        r.as_ref().map(|_| "cancel requested"),
    );
    let status = r?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "build": build,
            "agent": status.agent,
            "state": status.state,
            "cancel_requested": true,
            "status_url": format!("/v1/builds/{build}"),
        })),
    ))
}

#[derive(Debug, Serialize)]
struct AgentView {
    agent: String,
    #[serde(flatten)]
    record: AgentRecord,
    /// Tasks waiting for a slot.
    queued: usize,
    /// Builds running now.
    running: usize,
    /// The builds of its tasks, in key order.
    builds: Vec<String>,
}

#[instrument(skip(s, headers))]
async fn list_agents(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let keys = s.etcd.keys();
    let agents = dispatch::live_agents(&s.etcd).await?;
    let prefix = keys.all_build_tasks();
    let (tasks, revision) = s.etcd.list_keys(&prefix).await?;
    let mut views: BTreeMap<String, AgentView> = agents
        .into_iter()
        .map(|(agent, record)| {
            let v = AgentView {
                agent: agent.clone(),
                record,
                queued: 0,
                running: 0,
                builds: Vec::new(),
            };
            (agent, v)
        })
        .collect();
    // the tasks of live agents (a lost agent's tasks wait for recovery and are not shown)
    let owned: Vec<(&str, &str)> = tasks
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix)?.split_once('/'))
        .filter(|(agent, _)| views.contains_key(*agent))
        .collect();
    // running only once the agent says so (and while it is still this agent's build)
    let states = futures::future::try_join_all(
        owned
            .iter()
            .map(|(_, build)| dispatch::get_status(&s.etcd, build)),
    )
    .await?;
    for ((agent, build), status) in owned.into_iter().zip(states) {
        let Some(v) = views.get_mut(agent) else {
            continue;
        };
        let running =
            status.is_some_and(|(st, _)| st.state == BuildState::Running && st.agent == agent);
        if running {
            v.running += 1;
        } else {
            v.queued += 1;
        }
        v.builds.push(build.to_string());
    }
    Ok(Json(
        json!({ "revision": revision, "agents": views.into_values().collect::<Vec<_>>() }),
    ))
}

fn parse_follow(q: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    refuse_unknown_params(q, &["follow"])?;
    match q.get("follow").map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(v) => Err(ApiError::BadRequest {
            field: "follow".into(),
            reason: format!("{v:?}: must be true or false"),
        }),
    }
}

/// The log from the build's agent, streamed through chunk by chunk as the agent sends it.
#[instrument(skip(s, headers))]
async fn build_log(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(build): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_build(&build)?;
    let follow = parse_follow(&q)?;
    let (status, _) = dispatch::get_status(&s.etcd, &build)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: format!("build {build}"),
        })?;
    let agent = status.agent.clone();
    let Some((record, _)) = s
        .etcd
        .get_json::<AgentRecord>(&s.etcd.keys().build_agent(&agent))
        .await?
    else {
        return Err(ApiError::BadGateway {
            reason: format!(
                "the log of build {build} is on agent {agent}, which is not registered any more (stopped or lost); it cannot be fetched now"
            ),
        });
    };
    let url = format!(
        "{}/v1/builds/{build}/log{}",
        record.endpoint.trim_end_matches('/'),
        if follow { "?follow=true" } else { "" }
    );
    let fetch = || async {
        s.agents.get(&url).await.map_err(|e| ApiError::BadGateway {
            reason: format!("agent {agent} did not answer for the log of build {build}: {e}"),
        })
    };
    let mut upstream = fetch().await?;
    // Just submitted: the agent opens the log when its watch brings it the task, a few ms
    // after the submit. Asking right after submitting must not be a 404.
    let waiting_since = Instant::now();
    while upstream.status() == StatusCode::NOT_FOUND
        && status.state == BuildState::Queued
        && waiting_since.elapsed() < QUEUED_LOG_WAIT
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream = fetch().await?;
    }
    match upstream.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(ApiError::NotFound {
                what: format!("the log of build {build} on agent {agent}"),
            })
        }
        other => {
            return Err(ApiError::BadGateway {
                reason: format!(
                    "agent {agent} answered {other} for the log of build {build} ({url})"
                ),
            })
        }
    }
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/plain; charset=utf-8"));
    // ends when the agent ends it, or when the API shuts down (graceful shutdown waits for
    // in-flight responses, and a followed log would otherwise keep it waiting)
    let mut shutdown = s.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let broken_agent = agent.clone();
    let body = upstream
        .into_body()
        .into_data_stream()
        .take_until(stop)
        .scan(false, move |broke, chunk| {
            let item = match chunk {
                _ if *broke => None,
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    *broke = true;
                    warn!(agent = %broken_agent, error = %e, "build log stream from the agent broke");
                    Some(Bytes::from(format!(
                        "\n[control-api: the log stream from agent {broken_agent} broke: {e}]\n"
                    )))
                }
            };
            std::future::ready(item.map(Ok::<_, Infallible>))
        });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx in front must pass followed logs through unbuffered
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&agent) {
        h.insert("x-build-agent", v);
    }
    Ok(resp)
}
