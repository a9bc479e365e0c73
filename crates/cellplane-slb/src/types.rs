//! Wire types stored in etcd under `slb/{group}/...` (see ARCHITECTURE.md) and accepted by the
//! control API. Unknown fields are refused so that a typo never silently does nothing.

use serde::{Deserialize, Serialize};

/// `slb/{group}/domains/{domain}/config`: one nginx `server` for the domain (and its aliases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Extra server names besides the domain itself; `*.example.com` wildcards are allowed.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ports the domain is served on. The address is the agent's (`listen_address`).
    #[serde(default = "default_listen")]
    pub listen: Vec<Listen>,
    /// Certificate and key paths on the nginx hosts; required when a listen entry has `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default = "default_locations")]
    pub locations: Vec<Location>,
    /// `client_max_body_size` in bytes (0 = unlimited).
    #[serde(default = "default_body_size")]
    pub client_max_body_size: u64,
    #[serde(default)]
    pub timeouts: ServerTimeouts,
    /// Headers added to every response of this domain (`add_header ... always`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<Header>,
}

fn default_listen() -> Vec<Listen> {
    vec![Listen {
        port: 80,
        tls: false,
        http2: false,
    }]
}

fn default_locations() -> Vec<Location> {
    vec![Location::default()]
}

fn default_body_size() -> u64 {
    1 << 20
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            aliases: Vec::new(),
            listen: default_listen(),
            tls: None,
            locations: default_locations(),
            client_max_body_size: default_body_size(),
            timeouts: ServerTimeouts::default(),
            response_headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub http2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Absolute path of the PEM certificate (chain) on the nginx hosts.
    pub certificate: String,
    /// Absolute path of the PEM private key on the nginx hosts.
    pub key: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    #[default]
    Prefix,
    Exact,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub path: String,
    #[serde(default, rename = "match")]
    pub match_kind: MatchKind,
    #[serde(default)]
    pub proxy: ProxyOptions,
    /// Headers set on the request to the backend (`proxy_set_header`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<Header>,
    /// Headers added to responses of this location (`add_header ... always`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<Header>,
}

impl Default for Location {
    fn default() -> Self {
        Location {
            path: "/".into(),
            match_kind: MatchKind::Prefix,
            proxy: ProxyOptions::default(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyOptions {
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub buffering: bool,
    /// How many backends a request may try in total on connect errors/timeouts (1 = no retry).
    pub tries: u32,
    /// Set `X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto` and `Host`.
    pub forward_client_ip: bool,
    /// Pass `Upgrade`/`Connection` through for WebSocket.
    pub websocket: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout_ms: 5_000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            buffering: true,
            tries: 2,
            forward_client_ip: true,
            websocket: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTimeouts {
    pub client_header_ms: u64,
    pub client_body_ms: u64,
    pub keepalive_ms: u64,
    pub send_ms: u64,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            client_header_ms: 60_000,
            client_body_ms: 60_000,
            keepalive_ms: 75_000,
            send_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// `slb/{group}/domains/{domain}/upstreams`: the full backend list of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamList {
    pub servers: Vec<UpstreamServer>,
    /// Incremented by the control API on every change of `servers`.
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamServer {
    /// `IP:port` (IPv6 as `[::1]:80`); host names are refused: nginx is never asked to resolve.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl UpstreamList {
    /// The same servers in a canonical order (by address), used to decide "unchanged".
    pub fn canonical_servers(&self) -> Vec<UpstreamServer> {
        let mut s = self.servers.clone();
        s.sort();
        s
    }
}

/// `slb/{group}/members/{host}`: lease-bound status written by each nginx-agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberStatus {
    pub host: String,
    pub nginx_version: String,
    /// etcd revision of the last read that the agent fully processed (upstreams pushed, config
    /// applied or refused).
    pub revision: i64,
    /// etcd revision of the read whose rendered config is live in nginx.
    pub config_revision: i64,
    /// The last config error (nginx -t output, reload failure); `None` once a config applies.
    pub last_error: Option<String>,
    /// Unix seconds of `last_error`.
    pub last_error_at: Option<u64>,
    pub reload_count: u64,
    pub validation_failures: u64,
    pub upstream_pushes: u64,
    /// Unix seconds of this record.
    pub updated_at: u64,
}
