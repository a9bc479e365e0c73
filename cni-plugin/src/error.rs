//! The CNI error codes and the error JSON the spec prints on stdout.

use serde_json::{json, Value};
use thiserror::Error;

/// Codes defined by the CNI spec (1.1.0) and our own (≥ 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_RESOURCES: u32 = 51;
    /// Every configured pool is full.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// CNI_IFNAME already exists in the netns.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The kernel refused a link, address or route operation.
    pub const NETLINK: u32 = 102;
    /// OVSDB refused the port (e.g. the bridge does not exist).
    pub const OVSDB: u32 = 103;
    /// IPAM refused (static address in use, contention, invalid record).
    pub const IPAM: u32 = 104;
    /// CHECK found the attachment not as it should be.
    pub const CHECK_FAILED: u32 = 105;
    /// GC could not remove everything.
    pub const GC_INCOMPLETE: u32 = 106;
}

/// An error as the runtime sees it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("CNI error {code}: {msg}{}", if .details.is_empty() { String::new() } else { format!(" ({})", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }

    pub fn invalid_config(key: &str, reason: impl std::fmt::Display) -> CniError {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid config key {key:?}: {reason}"),
        )
    }

    pub fn invalid_env(var: &str, reason: impl std::fmt::Display) -> CniError {
        CniError::new(
            code::INVALID_ENV,
            format!("invalid environment variable {var}: {reason}"),
        )
    }
}

impl From<cellplane_etcd::IpamError> for CniError {
    fn from(e: cellplane_etcd::IpamError) -> CniError {
        use cellplane_etcd::IpamError as E;
        let c = if e.is_unavailable() {
            code::TRY_AGAIN
        } else {
            match &e {
                E::Exhausted { .. } => code::POOL_EXHAUSTED,
                E::NotFound { .. } | E::Invalid(_) => code::INVALID_CONFIG,
                _ => code::IPAM,
            }
        };
        CniError::new(c, format!("IPAM: {e}"))
    }
}

impl From<cellplane_etcd::EtcdError> for CniError {
    fn from(e: cellplane_etcd::EtcdError) -> CniError {
        let c = if e.is_unavailable() {
            code::TRY_AGAIN
        } else {
            code::INVALID_CONFIG
        };
        CniError::new(c, format!("etcd: {e}"))
    }
}

impl From<cellplane_net::OvsdbError> for CniError {
    fn from(e: cellplane_net::OvsdbError) -> CniError {
        let c = if e.is_unavailable() {
            code::TRY_AGAIN
        } else {
            code::OVSDB
        };
        CniError::new(c, format!("OVSDB: {e}"))
    }
}

impl From<cellplane_net::NetError> for CniError {
    fn from(e: cellplane_net::NetError) -> CniError {
        use cellplane_net::NetError as E;
        let c = match &e {
            E::Exists { .. } => code::INTERFACE_EXISTS,
            E::NetnsOpen { .. } | E::NotNetns { .. } => code::INVALID_ENV,
            _ => code::NETLINK,
        };
        CniError::new(c, e.to_string())
    }
}
