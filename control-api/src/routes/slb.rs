//! SLB routes. Writes: authorize (`slb:write`) -> validate path and body -> write only what
//! changed -> audit log. Nothing is written unless everything validated.
//!
//! - `GET    /v1/slb/{group}/domains`
//! - `GET    /v1/slb/{group}/domains/{domain}`
//! - `PUT    /v1/slb/{group}/domains/{domain}`            body: `DomainConfig`
//! - `DELETE /v1/slb/{group}/domains/{domain}`            (config and upstreams)
//! - `GET    /v1/slb/{group}/domains/{domain}/upstreams`
//! - `PUT    /v1/slb/{group}/domains/{domain}/upstreams`  body: `{"servers": [{addr, weight}]}`
//! - `GET    /v1/slb/{group}/members`

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cellplane_slb::{
    validate_domain_config, validate_domain_name, validate_upstreams, DomainConfig, MemberStatus,
    UpstreamList,
};
use serde::Serialize;
use serde_json::json;
use tracing::instrument;

use super::audit::{audit, authorize_write, Write};
use super::AppState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::json::parse;

const DOMAIN_ROUTE: &str = "/v1/slb/{group}/domains/{domain}";
const UPSTREAMS_ROUTE: &str = "/v1/slb/{group}/domains/{domain}/upstreams";
/// CAS attempts when another writer changes the same key in between.
const CAS_ATTEMPTS: usize = 5;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/slb/{group}/domains", get(list_domains))
        .route(
            DOMAIN_ROUTE,
            get(get_domain).put(put_domain).delete(delete_domain),
        )
        .route(UPSTREAMS_ROUTE, get(get_upstreams).put(put_upstreams))
        .route("/v1/slb/{group}/members", get(list_members))
}

fn check_group(group: &str) -> Result<(), ApiError> {
    cellplane_core::validation::validate_name("group", group).map_err(|e| ApiError::BadRequest {
        field: "group".into(),
        reason: e.to_string(),
    })
}

fn check_path(group: &str, domain: &str) -> Result<(), ApiError> {
    check_group(group)?;
    validate_domain_name("domain", domain)?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct DomainView {
    domain: String,
    config: Option<DomainConfig>,
    upstreams: Option<UpstreamList>,
    config_revision: i64,
    upstreams_revision: i64,
}

#[instrument(skip(s, headers))]
async fn list_domains(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_group(&group)?;
    let prefix = s.etcd.keys().slb_domains(&group);
    let (kvs, revision) = s.etcd.list(&prefix).await?;
    let mut out: BTreeMap<String, DomainView> = BTreeMap::new();
    for kv in &kvs {
        let Some((domain, what)) = kv.key.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        let v = out.entry(domain.to_string()).or_insert_with(|| DomainView {
            domain: domain.to_string(),
            config: None,
            upstreams: None,
            config_revision: 0,
            upstreams_revision: 0,
        });
        match what {
            "config" => {
                v.config = kv.json().ok();
                v.config_revision = kv.mod_revision;
            }
            "upstreams" => {
                v.upstreams = kv.json().ok();
                v.upstreams_revision = kv.mod_revision;
            }
            _ => {}
        }
    }
    Ok(Json(
        json!({ "revision": revision, "domains": out.into_values().collect::<Vec<_>>() }),
    ))
}

#[instrument(skip(s, headers))]
async fn get_domain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, domain)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_path(&group, &domain)?;
    let keys = s.etcd.keys();
    let config = s.etcd.get(&keys.slb_domain_config(&group, &domain)).await?;
    let Some(config) = config else {
        return Err(ApiError::NotFound {
            what: format!("domain {domain} in group {group}"),
        });
    };
    let upstreams = s
        .etcd
        .get(&keys.slb_domain_upstreams(&group, &domain))
        .await?;
    Ok(Json(DomainView {
        domain,
        config: Some(config.json()?),
        config_revision: config.mod_revision,
        upstreams_revision: upstreams.as_ref().map(|u| u.mod_revision).unwrap_or(0),
        upstreams: upstreams.map(|u| u.json()).transpose()?,
    }))
}

#[instrument(skip(s, headers, body))]
async fn put_domain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, domain)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let target = format!("{group}/{domain}");
    let w = Write {
        route: DOMAIN_ROUTE,
        action: "put domain",
        target: &target,
    };
    let who = authorize_write(&s, &headers, Scope::SlbWrite, &w)?;
    let r = async {
        check_path(&group, &domain)?;
        let config: DomainConfig = parse(&body)?;
        validate_domain_config(&config)?;
        let key = s.etcd.keys().slb_domain_config(&group, &domain);
        for _ in 0..CAS_ATTEMPTS {
            let current = s.etcd.get(&key).await?;
            let seen = match &current {
                Some(kv) => {
                    if kv.json::<DomainConfig>().ok().as_ref() == Some(&config) {
                        return Ok(("unchanged", kv.mod_revision));
                    }
                    kv.mod_revision
                }
                None => 0,
            };
            let value = serde_json::to_vec(&config).unwrap_or_default();
            if s.etcd.cas(&key, seen, value).await? {
                let rev = s
                    .etcd
                    .get(&key)
                    .await?
                    .map(|kv| kv.mod_revision)
                    .unwrap_or(0);
                return Ok((if seen == 0 { "created" } else { "updated" }, rev));
            }
        }
        Err(ApiError::Conflict { what: key.clone() })
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().map(|(o, _)| *o));
    let (outcome, revision) = r?;
    let status = if outcome == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "domain": domain, "outcome": outcome, "changed": outcome != "unchanged", "revision": revision }),
        ),
    ))
}

#[instrument(skip(s, headers))]
async fn delete_domain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, domain)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let target = format!("{group}/{domain}");
    let w = Write {
        route: DOMAIN_ROUTE,
        action: "delete domain",
        target: &target,
    };
    let who = authorize_write(&s, &headers, Scope::SlbWrite, &w)?;
    let r = async {
        check_path(&group, &domain)?;
        // the trailing '/' keeps a.example.com from matching a.example.com.cn
        let prefix = format!("{}{domain}/", s.etcd.keys().slb_domains(&group));
        match s.etcd.delete_prefix(&prefix).await? {
            0 => Err(ApiError::NotFound {
                what: format!("domain {domain} in group {group}"),
            }),
            _ => Ok("deleted"),
        }
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().copied());
    r?;
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(skip(s, headers))]
async fn get_upstreams(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, domain)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_path(&group, &domain)?;
    let key = s.etcd.keys().slb_domain_upstreams(&group, &domain);
    match s.etcd.get(&key).await? {
        Some(kv) => Ok(Json(kv.json::<UpstreamList>()?)),
        None => Err(ApiError::NotFound {
            what: format!("upstreams of {domain} in group {group}"),
        }),
    }
}

#[instrument(skip(s, headers, body))]
async fn put_upstreams(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, domain)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let target = format!("{group}/{domain}");
    let w = Write {
        route: UPSTREAMS_ROUTE,
        action: "put upstreams",
        target: &target,
    };
    let who = authorize_write(&s, &headers, Scope::SlbWrite, &w)?;
    let r = async {
        check_path(&group, &domain)?;
        let mut list: UpstreamList = parse(&body)?;
        validate_upstreams(&list)?;
        let keys = s.etcd.keys();
        if s.etcd
            .get(&keys.slb_domain_config(&group, &domain))
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound {
                what: format!("domain {domain} in group {group} (create its config first)"),
            });
        }
        let key = keys.slb_domain_upstreams(&group, &domain);
        list.servers = list.canonical_servers();
        for _ in 0..CAS_ATTEMPTS {
            let current = s.etcd.get(&key).await?;
            let (seen, prev) = match &current {
                Some(kv) => (kv.mod_revision, kv.json::<UpstreamList>().ok()),
                None => (0, None),
            };
            if let Some(p) = &prev {
                if p.canonical_servers() == list.servers {
                    return Ok(("unchanged", p.revision));
                }
            }
            list.revision = prev.map(|p| p.revision + 1).unwrap_or(1);
            let value = serde_json::to_vec(&list).unwrap_or_default();
            if s.etcd.cas(&key, seen, value).await? {
                return Ok(("updated", list.revision));
            }
        }
        Err(ApiError::Conflict { what: key.clone() })
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().map(|(o, _)| *o));
    let (outcome, revision) = r?;
    Ok(Json(
        json!({ "domain": domain, "changed": outcome != "unchanged", "revision": revision }),
    ))
}

#[instrument(skip(s, headers))]
async fn list_members(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_group(&group)?;
    let (kvs, revision) = s.etcd.list(&s.etcd.keys().slb_members(&group)).await?;
    let members: Vec<MemberStatus> = kvs.iter().filter_map(|kv| kv.json().ok()).collect();
    Ok(Json(json!({ "revision": revision, "members": members })))
}
