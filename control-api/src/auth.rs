//! Bearer tokens with scopes, from the config file.

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::config::TokenConfig;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Scope {
    /// Every GET.
    #[serde(rename = "read")]
    Read,
    /// SLB domain and upstream writes (and reads).
    #[serde(rename = "slb:write")]
    SlbWrite,
    /// Build submit and cancel (and reads).
    #[serde(rename = "builds:write")]
    BuildsWrite,
    /// IP pool writes: add, drain, activate, remove (and reads).
    #[serde(rename = "pools:write")]
    PoolsWrite,
    /// Everything.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::SlbWrite => "slb:write",
            Scope::BuildsWrite => "builds:write",
            Scope::PoolsWrite => "pools:write",
            Scope::Admin => "admin",
        }
    }

    /// Does holding `self` grant `wanted`?
    fn grants(self, wanted: Scope) -> bool {
        self == wanted
            || self == Scope::Admin
            || (wanted == Scope::Read
                && matches!(
                    self,
                    Scope::SlbWrite | Scope::BuildsWrite | Scope::PoolsWrite
                ))
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<TokenConfig>,
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn new(tokens: Vec<TokenConfig>) -> Tokens {
        Tokens { tokens }
    }

    /// 401 without a known token, 403 without the scope.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, ApiError> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let mut found = None;
        for t in &self.tokens {
            if ct_eq(t.token.as_bytes(), presented.as_bytes()) {
                found = Some(t);
            }
        }
        let t = found.ok_or(ApiError::Unauthorized)?;
        if !t.scopes.iter().any(|s| s.grants(scope)) {
            return Err(ApiError::Forbidden {
                principal: t.name.clone(),
                scope: scope.name(),
            });
        }
        Ok(Principal {
            name: t.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scopes_grant_read_and_only_their_own_writes() {
        let writes = [Scope::SlbWrite, Scope::BuildsWrite, Scope::PoolsWrite];
        for held in writes {
            assert!(held.grants(Scope::Read), "{}", held.name());
            for wanted in writes {
                assert_eq!(held.grants(wanted), held == wanted, "{}", held.name());
            }
            assert!(Scope::Admin.grants(held));
            assert!(!Scope::Read.grants(held));
        }
        let parsed: Vec<Scope> = serde_json::from_str(r#"["pools:write","admin"]"#).unwrap();
        assert_eq!(parsed, vec![Scope::PoolsWrite, Scope::Admin]);
    }
}
