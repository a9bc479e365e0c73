//! IP pool routes over `cellplane_etcd::Ipam` (the same operations `cnictl pool` uses; no IPAM
//! logic here). Writes: authorize (`pools:write`) -> validate path and body -> one `Ipam` call
//! (its own guarded etcd transactions) -> audit log. Nothing is written unless the request
//! validated.
//!
//! - `GET    /v1/pools`                  every pool with its usage
//! - `GET    /v1/pools/{pool}`           one pool with its usage; 404
//! - `PUT    /v1/pools/{pool}`           body `{cidr, vlan, gateway, exclude?, block_size?}`:
//!   201 added; 200 `"changed": false` when the same spec exists; 409 when the pool exists with
//!   another spec or its CIDR overlaps another pool (named)
//! - `DELETE /v1/pools/{pool}`           204; 409 while addresses are allocated (the pool is
//!   then left draining, as `Ipam::remove_pool` does); 404
//! - `POST   /v1/pools/{pool}/drain`     no new addresses from it; existing ones stay
//! - `POST   /v1/pools/{pool}/activate`
//! - `GET    /v1/pools/{pool}/blocks`    the pool's claimed blocks with owner and counts; 404
//! - `GET    /v1/nodes/{node}/blocks`    the blocks a node owns, in every pool

use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cellplane_core::validation::validate_name;
use cellplane_core::{CoreError, Pool, PoolSpec, PoolState};
use cellplane_etcd::ipam::{BlockUsage, Counts, PoolUsage};
use cellplane_etcd::{Ipam, IpamError, IpamOptions};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::instrument;

use super::audit::{audit, authorize_write, Write};
use super::AppState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::json::parse;

const POOL_ROUTE: &str = "/v1/pools/{pool}";
const DRAIN_ROUTE: &str = "/v1/pools/{pool}/drain";
const ACTIVATE_ROUTE: &str = "/v1/pools/{pool}/activate";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pools", get(list_pools))
        .route(POOL_ROUTE, get(get_pool).put(put_pool).delete(delete_pool))
        .route(DRAIN_ROUTE, post(drain))
        .route(ACTIVATE_ROUTE, post(activate))
        .route("/v1/pools/{pool}/blocks", get(pool_blocks))
        .route("/v1/nodes/{node}/blocks", get(node_blocks))
}

fn ipam(s: &AppState) -> Ipam {
    Ipam::new(s.etcd.clone(), IpamOptions::default())
}

/// A path segment (`pool`, `node`) must be a valid name; the 400 names the segment.
fn check_name(field: &'static str, name: &str) -> Result<(), ApiError> {
    validate_name(field, name).map_err(ApiError::from)
}

/// `IpamError` -> `ApiError`, with the core's "pool name" field called by its path segment.
fn ipam_err(e: IpamError) -> ApiError {
    match ApiError::from(e) {
        ApiError::BadRequest { field, reason } if field == "pool name" => ApiError::BadRequest {
            field: "pool".into(),
            reason,
        },
        e => e,
    }
}

/// `PUT /v1/pools/{pool}` body. Unknown fields (including `state`: use drain/activate) are
/// refused. Numbers are read wide so that an out-of-range value gets the field's own message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBody {
    cidr: String,
    vlan: i64,
    gateway: String,
    /// Addresses (`10.20.0.5`) or CIDRs never handed out.
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    block_size: Option<i64>,
}

fn bad(field: impl Into<String>, value: impl std::fmt::Display, reason: &str) -> ApiError {
    ApiError::BadRequest {
        field: field.into(),
        reason: format!("{:?}: {reason}", value.to_string()),
    }
}

/// An address or CIDR, as `cnictl pool add --exclude` takes it (an address is a /32).
fn parse_net(field: &str, s: &str) -> Result<Ipv4Network, ApiError> {
    let full = if s.contains('/') {
        s.to_string()
    } else {
        format!("{s}/32")
    };
    full.parse()
        .map_err(|_| bad(field, s, "not an IPv4 address or CIDR (a.b.c.d/len)"))
}

impl PoolBody {
    /// The spec (new pools are active), validated by `Pool::new` with the 400 naming the field
    /// (`exclude[i]` for an exclusion).
    fn into_pool(self, name: &str) -> Result<Pool, ApiError> {
        if !self.cidr.contains('/') {
            return Err(bad("cidr", &self.cidr, "must be a CIDR (a.b.c.d/len)"));
        }
        let cidr = parse_net("cidr", &self.cidr)?;
        let gateway: Ipv4Addr = self
            .gateway
            .parse()
            .map_err(|_| bad("gateway", &self.gateway, "not an IPv4 address"))?;
        let vlan = u16::try_from(self.vlan)
            .map_err(|_| bad("vlan", self.vlan, "must be from 1 to 4094"))?;
        let block_size = match self.block_size {
            None => cellplane_core::pool::DEFAULT_BLOCK_SIZE,
            Some(b) => u32::try_from(b).map_err(|_| {
                bad(
                    "block_size",
                    b,
                    "must be a power of two from 4 to 256 addresses",
                )
            })?,
        };
        let exclude = self
            .exclude
            .iter()
            .enumerate()
            .map(|(i, x)| parse_net(&format!("exclude[{i}]"), x))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = PoolSpec {
            cidr,
            vlan,
            gateway,
            block_size,
            exclude: exclude.clone(),
            state: PoolState::Active,
        };
        Pool::new(name, spec).map_err(|e| match e {
            CoreError::Invalid {
                field: "exclude",
                value,
                reason,
            } => {
                let i = exclude.iter().position(|x| x.to_string() == value);
                bad(
                    i.map_or("exclude".into(), |i| format!("exclude[{i}]")),
                    value,
                    &reason,
                )
            }
            CoreError::Invalid {
                field: "pool name",
                value,
                reason,
            } => bad("pool", value, &reason),
            e => e.into(),
        })
    }
}

/// Same addresses, VLAN, gateway, blocks and exclusions (in any order); the state is not part
/// of what a PUT sets.
fn same_spec(a: &PoolSpec, b: &PoolSpec) -> bool {
    let sorted = |v: &[Ipv4Network]| {
        let mut v: Vec<String> = v.iter().map(|n| n.to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    a.cidr == b.cidr
        && a.vlan == b.vlan
        && a.gateway == b.gateway
        && a.block_size == b.block_size
        && sorted(&a.exclude) == sorted(&b.exclude)
}

/// A pool as answered: its spec and its usage.
#[derive(Debug, Serialize)]
struct PoolView {
    pool: String,
    cidr: String,
    vlan: u16,
    gateway: Ipv4Addr,
    block_size: u32,
    exclude: Vec<String>,
    state: PoolState,
    blocks_total: u32,
    blocks_claimed: u32,
    /// `capacity` (addresses that may ever be handed out), `allocated`, `cooling` (released
    /// less than the default cooldown ago), `free`.
    #[serde(flatten)]
    counts: Counts,
}

impl PoolView {
    /// Without `usage` (a pool just added): nothing claimed, everything free.
    fn new(pool: &Pool, usage: Option<&PoolUsage>) -> PoolView {
        let (blocks_claimed, counts) = match usage {
            Some(u) => (u.blocks_claimed, u.counts.clone()),
            None => (
                0,
                Counts {
                    capacity: pool.capacity(),
                    free: pool.capacity(),
                    ..Counts::default()
                },
            ),
        };
        PoolView {
            pool: pool.name().to_string(),
            cidr: pool.cidr().to_string(),
            vlan: pool.vlan(),
            gateway: pool.gateway(),
            block_size: pool.block_size(),
            exclude: pool.spec().exclude.iter().map(|n| n.to_string()).collect(),
            state: pool.state(),
            blocks_total: pool.block_count(),
            blocks_claimed,
            counts,
        }
    }
}

/// One pool with its current usage; 404 when it does not exist.
async fn pool_view(ipam: &Ipam, name: &str) -> Result<PoolView, ApiError> {
    let pool = ipam.get_pool(name).await.map_err(ipam_err)?;
    let usage = ipam.usage().await.map_err(ipam_err)?;
    let pu = usage.pools.iter().find(|p| p.pool == name);
    Ok(PoolView::new(&pool, pu))
}

#[instrument(skip(s, headers))]
async fn list_pools(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    let ipam = ipam(&s);
    let usage = ipam.usage().await.map_err(ipam_err)?;
    // `usage` lists the pools too; their specs (gateway, exclusions) come from a second read,
    // so a pool added in between is left out and one removed in between is shown unused.
    let pools = ipam.list_pools().await.map_err(ipam_err)?;
    let views: Vec<PoolView> = pools
        .iter()
        .map(|p| PoolView::new(p, usage.pools.iter().find(|u| u.pool == p.name())))
        .collect();
    Ok(Json(json!({ "pools": views })))
}

#[instrument(skip(s, headers))]
async fn get_pool(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_name("pool", &pool)?;
    Ok(Json(pool_view(&ipam(&s), &pool).await?))
}

#[instrument(skip(s, headers, body))]
async fn put_pool(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let w = Write {
        route: POOL_ROUTE,
        action: "add pool",
        target: &name,
    };
    let who = authorize_write(&s, &headers, Scope::PoolsWrite, &w)?;
    let ipam = ipam(&s);
    let r = async {
        check_name("pool", &name)?;
        let body: PoolBody = parse(&body)?;
        let pool = body.into_pool(&name)?;
        // An existing pool: the same spec is a repeated PUT (200, nothing written), another
        // one is refused (a pool's addresses are never changed under its allocations).
        let unchanged_or_conflict = |existing: Pool| {
            if same_spec(existing.spec(), pool.spec()) {
                Ok(("unchanged", existing))
            } else {
                Err(ApiError::WrongState {
                    what: format!(
                        "pool {name} already exists with another spec ({} on VLAN {}, gateway {}, block size {}); remove it first to change it",
                        existing.cidr(),
                        existing.vlan(),
                        existing.gateway(),
                        existing.block_size()
                    ),
                })
            }
        };
        match ipam.get_pool(&name).await {
            Ok(existing) => return unchanged_or_conflict(existing),
            Err(IpamError::NotFound { .. }) => {}
            Err(e) => return Err(ipam_err(e)),
        }
        match ipam.add_pool(&name, pool.spec().clone()).await {
            Ok(added) => Ok(("created", added)),
            // added by someone else since the read above
            Err(e @ IpamError::Conflict { .. }) => match ipam.get_pool(&name).await {
                Ok(existing) => unchanged_or_conflict(existing),
                Err(_) => Err(ipam_err(e)),
            },
            Err(e) => Err(ipam_err(e)),
        }
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().map(|(o, _)| *o));
    let (outcome, pool) = r?;
    let (status, view) = if outcome == "created" {
        (StatusCode::CREATED, PoolView::new(&pool, None))
    } else {
        (StatusCode::OK, pool_view(&ipam, &name).await?)
    };
    let mut body = serde_json::to_value(view).unwrap_or_default();
    if let Some(b) = body.as_object_mut() {
        b.insert("outcome".into(), json!(outcome));
        b.insert("changed".into(), json!(outcome == "created"));
    }
    Ok((status, Json(body)))
}

#[instrument(skip(s, headers))]
async fn delete_pool(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let w = Write {
        route: POOL_ROUTE,
        action: "remove pool",
        target: &name,
    };
    let who = authorize_write(&s, &headers, Scope::PoolsWrite, &w)?;
    let r = async {
        check_name("pool", &name)?;
        ipam(&s).remove_pool(&name).await.map_err(ipam_err)?;
        Ok("removed")
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().copied());
    r?;
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(skip(s, headers))]
async fn drain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_state(s, headers, name, PoolState::Draining).await
}

#[instrument(skip(s, headers))]
async fn activate(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_state(s, headers, name, PoolState::Active).await
}

async fn set_state(
    s: AppState,
    headers: HeaderMap,
    name: String,
    state: PoolState,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (route, action, done) = match state {
        PoolState::Draining => (DRAIN_ROUTE, "drain pool", "drained"),
        PoolState::Active => (ACTIVATE_ROUTE, "activate pool", "activated"),
    };
    let w = Write {
        route,
        action,
        target: &name,
    };
    let who = authorize_write(&s, &headers, Scope::PoolsWrite, &w)?;
    let ipam = ipam(&s);
    let r = async {
        check_name("pool", &name)?;
        let before = ipam.get_pool(&name).await.map_err(ipam_err)?;
        if before.state() == state {
            return Ok("unchanged");
        }
        ipam.set_pool_state(&name, state).await.map_err(ipam_err)?;
        Ok(done)
    }
    .await;
    audit(&s, Some(&who.name), &w, r.as_ref().copied());
    let outcome = r?;
    let mut body = serde_json::to_value(pool_view(&ipam, &name).await?).unwrap_or_default();
    if let Some(b) = body.as_object_mut() {
        b.insert("outcome".into(), json!(outcome));
        b.insert("changed".into(), json!(outcome != "unchanged"));
    }
    Ok(Json(body))
}

/// A claimed block as answered: `pool`, `block` (its id), `cidr`, `node` (the owner),
/// `mod_revision`, `capacity`, `allocated`, `cooling`, `free`.
type BlockView = BlockUsage;

#[instrument(skip(s, headers))]
async fn pool_blocks(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_name("pool", &pool)?;
    let ipam = ipam(&s);
    ipam.get_pool(&pool).await.map_err(ipam_err)?;
    let usage = ipam.usage().await.map_err(ipam_err)?;
    let blocks: Vec<BlockView> = usage
        .blocks
        .into_iter()
        .filter(|b| b.pool == pool)
        .collect();
    Ok(Json(json!({ "pool": pool, "blocks": blocks })))
}

/// A node is not a record of its own: a node without blocks answers an empty list.
#[instrument(skip(s, headers))]
async fn node_blocks(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.tokens.authorize(&headers, Scope::Read)?;
    check_name("node", &node)?;
    let usage = ipam(&s).usage().await.map_err(ipam_err)?;
    let blocks: Vec<BlockView> = usage
        .blocks
        .into_iter()
        .filter(|b| b.node == node)
        .collect();
    let pools: Vec<_> = usage.nodes.into_iter().filter(|n| n.node == node).collect();
    Ok(Json(
        json!({ "node": node, "blocks": blocks, "pools": pools }),
    ))
}
