//! The SLB domain model shared by `control-api` (which validates and stores it) and
//! `nginx-agent` (which renders it): typed per-domain server config, upstream lists and the
//! member status record. Pure code: no I/O, no async.
//!
//! Users never supply nginx text. Every string that ends up in an nginx config is checked
//! here against a character set that cannot break out of its directive.

pub mod error;
pub mod types;
pub mod validation;

pub use error::SlbError;
pub use types::{
    DomainConfig, Header, Listen, Location, MatchKind, MemberStatus, ProxyOptions, ServerTimeouts,
    Tls, UpstreamList, UpstreamServer,
};
pub use validation::{validate_domain_config, validate_domain_name, validate_upstreams};
