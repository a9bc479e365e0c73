//! etcd access for cellplane: connection (TLS, prefix, timeouts), create-if-absent and
//! compare-and-swap helpers, a lease keeper, a watch that resumes and resyncs, the host lock,
//! and the IPAM operations over etcd that implement ARCHITECTURE.md's invariants.

pub mod client;
pub mod config;
pub mod error;
pub mod ipam;
pub mod lease;
pub mod lock;
pub mod watch;

pub use client::{Etcd, Kv};
pub use config::{EtcdArgs, EtcdConfig};
pub use error::EtcdError;
pub use ipam::{
    AllocRequest, Allocated, BlockState, GuardedRelease, Ipam, IpamError, IpamOptions, Released,
    Usage,
};
pub use lease::LeaseKeeper;
pub use lock::{HostLock, LockError};
pub use watch::{watch_prefix, EventKind, WatchEvent, WatchStream, WatchUpdate};

/// Unix time in milliseconds (wall clock; used for allocation and release times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
