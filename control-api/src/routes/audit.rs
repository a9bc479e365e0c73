//! What every write route shares: authorize (a refusal is audited too) and one audit line per
//! write with who, what, and how it ended (also counted in `cellplane_api_writes_total`).

use axum::http::HeaderMap;
use tracing::{info, warn};

use super::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;

/// Authorizes a write that needs `scope`; a refusal is audited here.
pub fn authorize_write(
    s: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    w: &Write<'_>,
) -> Result<Principal, ApiError> {
    s.tokens
        .authorize(headers, scope)
        .inspect_err(|e| audit(s, None, w, Err(e)))
}

/// One write: the route (as in the router, for metrics), the action and its target.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub route: &'a str,
    pub action: &'a str,
    pub target: &'a str,
}

/// Every write ends here: one line on the `audit` target.
pub fn audit(s: &AppState, who: Option<&str>, w: &Write<'_>, r: Result<&'static str, &ApiError>) {
    let principal = who.unwrap_or("-");
    let Write {
        route,
        action,
        target,
    } = *w;
    match r {
        Ok(outcome) => {
            s.metrics.write(route, outcome);
            info!(target: "audit", principal, action, target, outcome, "write");
        }
        Err(e) => {
            s.metrics.write(route, "refused");
            warn!(target: "audit", principal, action, target, status = e.status().as_u16(), error = %e, "write refused");
        }
    }
}
