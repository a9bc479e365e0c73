//! `POST /v1/webhooks/gitlab`: GitLab push events build the pushed commit of a configured
//! project (`[[webhook.projects]]`).
//!
//! - `X-Gitlab-Token` must equal `[webhook] gitlab_secret` (compared in constant time): 401
//!   otherwise, nothing written. 404 when no secret is configured (the webhook is off).
//! - `X-Gitlab-Event: Push Hook` is handled; any other event is answered 202 `{"ignored": true}`
//!   (so GitLab does not mark the hook as failing); a missing header is 400.
//! - A branch deletion (`after` all zeros, `checkout_sha` null), a push to a branch outside the
//!   project's `branches`, or a push of something other than a branch: 200 `{"ignored": true}`.
//! - An unknown project: 404 naming it.
//! - Otherwise the project's build of `checkout_sha` (ref = the commit, tag = the commit id) is
//!   submitted by `webhook:<project>`: 201 as `POST /v1/builds`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, instrument};

use super::audit::{audit, Write};
use super::builds::submit_build;
use super::AppState;
use crate::auth::ct_eq;
use crate::config::WebhookProject;
use crate::error::ApiError;

const GITLAB_ROUTE: &str = "/v1/webhooks/gitlab";

pub fn routes() -> Router<AppState> {
    Router::new().route(GITLAB_ROUTE, post(gitlab))
}

/// The webhook settings the router needs (the secret resolved from its file at start).
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    pub gitlab_secret: Option<String>,
    pub projects: Vec<WebhookProject>,
}

impl Webhook {
    fn project(&self, path: &str) -> Option<&WebhookProject> {
        self.projects
            .iter()
            .find(|p| p.path.eq_ignore_ascii_case(path))
    }
}

/// The parts of GitLab's push event we use (it has many more; they are ignored).
#[derive(Debug, Deserialize)]
struct PushEvent {
    object_kind: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    project: PushProject,
}

#[derive(Debug, Deserialize)]
struct PushProject {
    path_with_namespace: String,
    #[serde(default)]
    git_http_url: Option<String>,
}

/// What a push led to.
enum Outcome {
    Submitted {
        submitted: super::builds::Submitted,
        branch: String,
        commit: String,
    },
    Ignored(String),
}

fn ignored(status: StatusCode, reason: String) -> Response {
    info!(reason, "gitlab webhook event ignored");
    (status, Json(json!({ "ignored": true, "reason": reason }))).into_response()
}

fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[instrument(skip(s, headers, body))]
async fn gitlab(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut w = Write {
        route: GITLAB_ROUTE,
        action: "gitlab push",
        target: "-",
    };
    let Some(secret) = s.webhook.gitlab_secret.as_deref() else {
        return Err(ApiError::NotFound {
            what: "the GitLab webhook (no [webhook] gitlab_secret is configured)".into(),
        });
    };
    let presented = headers.get("x-gitlab-token").map(|v| v.as_bytes());
    if !presented.is_some_and(|p| ct_eq(p, secret.as_bytes())) {
        let e = ApiError::Unauthorized;
        audit(&s, None, &w, Err(&e));
        return Err(e);
    }
    let event = headers
        .get("x-gitlab-event")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest {
            field: "X-Gitlab-Event".into(),
            reason: "missing header".into(),
        })?;
    if event != "Push Hook" {
        return Ok(ignored(
            StatusCode::ACCEPTED,
            format!("event {event:?} is not handled (only \"Push Hook\")"),
        ));
    }
    let push: PushEvent = crate::json::parse(&body)?;
    if push.object_kind != "push" {
        return Err(ApiError::BadRequest {
            field: "object_kind".into(),
            reason: format!("{:?}: a Push Hook must carry \"push\"", push.object_kind),
        });
    }
    let path = push.project.path_with_namespace.as_str();
    let principal = format!("webhook:{path}");
    w.target = path;
    let r = async {
        let project = s.webhook.project(path).ok_or_else(|| ApiError::NotFound {
            what: format!("project {path:?} in the webhook configuration ([[webhook.projects]])"),
        })?;
        let deleted = push.after.bytes().all(|b| b == b'0') && !push.after.is_empty();
        let commit = match push.checkout_sha.as_deref() {
            Some(c) if !deleted => c,
            _ => {
                return Ok(Outcome::Ignored(format!(
                    "{}: branch deletion",
                    push.git_ref
                )))
            }
        };
        let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else {
            return Ok(Outcome::Ignored(format!("{}: not a branch", push.git_ref)));
        };
        if !project.builds_branch(branch) {
            return Ok(Outcome::Ignored(format!(
                "branch {branch} of {path} is not in its configured branches {:?}",
                project.branches
            )));
        }
        if !is_commit_id(commit) {
            return Err(ApiError::BadRequest {
                field: "checkout_sha".into(),
                reason: format!("{commit:?}: must be a commit id"),
            });
        }
        let repo = match (&project.repo, &push.project.git_http_url) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            (None, None) => {
                return Err(ApiError::BadRequest {
                    field: "project.git_http_url".into(),
                    reason: format!("missing, and webhook project {path} sets no repo"),
                })
            }
        };
        let submitted =
            submit_build(&s, project.request(&repo, commit), &principal, "webhook").await?;
        Ok(Outcome::Submitted {
            submitted,
            branch: branch.to_string(),
            commit: commit.to_string(),
        })
    }
    .await;
    let outcome = r.as_ref().map(|o| match o {
        Outcome::Submitted { .. } => "submitted",
        Outcome::Ignored(_) => "ignored",
    });
    audit(&s, Some(&principal), &w, outcome);
    match r? {
        Outcome::Submitted {
            submitted,
            branch,
            commit,
        } => Ok(submitted.created(json!({
            "project": path,
            "branch": branch,
            "commit": commit,
        }))),
        Outcome::Ignored(reason) => Ok(ignored(StatusCode::OK, reason)),
    }
}
