//! Validation of everything a user may put into a domain config or upstream list. A value that
//! passes can be written into an nginx config (quoted with `"`) without escaping.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::error::SlbError;
use crate::types::{DomainConfig, Header, Location, UpstreamList};

pub const MAX_ALIASES: usize = 64;
pub const MAX_LISTEN: usize = 16;
pub const MAX_LOCATIONS: usize = 32;
pub const MAX_HEADERS: usize = 32;
pub const MAX_SERVERS: usize = 1000;
pub const MAX_WEIGHT: u32 = 100;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
pub const MAX_TRIES: u32 = 10;

/// A DNS host name as used for a domain key: lowercase labels of `a-z 0-9 -`, 1–63 characters
/// each, not starting or ending with `-`, 1–253 characters in all, at least two labels.
pub fn validate_domain_name(field: &str, s: &str) -> Result<(), SlbError> {
    if s.is_empty() || s.len() > 253 {
        return Err(SlbError::new(
            field,
            format!("{s:?} must be 1 to 253 characters"),
        ));
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err(SlbError::new(
            field,
            format!("{s:?} must be a fully qualified name with at least two labels"),
        ));
    }
    for l in labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(SlbError::new(
                field,
                format!(
                    "{s:?} is not a host name: labels are 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_alias(field: &str, s: &str) -> Result<(), SlbError> {
    match s.strip_prefix("*.") {
        Some(rest) => validate_domain_name(field, rest),
        None => validate_domain_name(field, s),
    }
}

fn validate_header(field: &str, h: &Header) -> Result<(), SlbError> {
    let name_ok = !h.name.is_empty()
        && h.name.len() <= 64
        && h.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !name_ok {
        return Err(SlbError::new(
            format!("{field}.name"),
            format!("{:?} must be 1 to 64 of A-Z, a-z, 0-9 and '-'", h.name),
        ));
    }
    let value_ok = h.value.len() <= 1024
        && h.value
            .chars()
            .all(|c| (' '..='~').contains(&c) && !matches!(c, '"' | '\\' | '$'));
    if !value_ok {
        return Err(SlbError::new(
            format!("{field}.value"),
            "must be at most 1024 printable ASCII characters without '\"', '\\' or '$'",
        ));
    }
    Ok(())
}

fn validate_headers(field: &str, hs: &[Header]) -> Result<(), SlbError> {
    if hs.len() > MAX_HEADERS {
        return Err(SlbError::new(
            field,
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, h) in hs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        validate_header(&f, h)?;
        if !seen.insert(h.name.to_ascii_lowercase()) {
            return Err(SlbError::new(f, format!("duplicate header {:?}", h.name)));
        }
    }
    Ok(())
}

fn validate_timeout(field: &str, ms: u64) -> Result<(), SlbError> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(SlbError::new(
            field,
            format!("{ms} must be between 1 and {MAX_TIMEOUT_MS} milliseconds"),
        ));
    }
    Ok(())
}

fn validate_abs_path(field: &str, s: &str) -> Result<(), SlbError> {
    let ok = s.starts_with('/')
        && s.len() <= 1024
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && !s.split('/').any(|c| c == "..");
    if !ok {
        return Err(SlbError::new(
            field,
            format!("{s:?} must be an absolute path of A-Z, a-z, 0-9, '.', '_', '-' and '/' without '..'"),
        ));
    }
    Ok(())
}

fn validate_location(field: &str, l: &Location) -> Result<(), SlbError> {
    let path_ok = l.path.starts_with('/')
        && l.path.len() <= 1024
        && l.path.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.'
                        | '_'
                        | '~'
                        | '/'
                        | '%'
                        | '!'
                        | '&'
                        | '\''
                        | '('
                        | ')'
                        | '*'
                        | '+'
                        | ','
                        | '='
                        | ':'
                        | '@'
                )
        });
    if !path_ok {
        return Err(SlbError::new(
            format!("{field}.path"),
            format!(
                "{:?} must start with '/' and contain only URL path characters (no spaces, quotes, ';', '$', braces)",
                l.path
            ),
        ));
    }
    let p = &l.proxy;
    validate_timeout(
        &format!("{field}.proxy.connect_timeout_ms"),
        p.connect_timeout_ms,
    )?;
    validate_timeout(&format!("{field}.proxy.read_timeout_ms"), p.read_timeout_ms)?;
    validate_timeout(&format!("{field}.proxy.send_timeout_ms"), p.send_timeout_ms)?;
    if p.tries == 0 || p.tries > MAX_TRIES {
        return Err(SlbError::new(
            format!("{field}.proxy.tries"),
            format!("{} must be between 1 and {MAX_TRIES}", p.tries),
        ));
    }
    validate_headers(&format!("{field}.request_headers"), &l.request_headers)?;
    validate_headers(&format!("{field}.response_headers"), &l.response_headers)?;
    Ok(())
}

/// Checks a whole domain config; the error names the first offending field.
pub fn validate_domain_config(c: &DomainConfig) -> Result<(), SlbError> {
    if c.aliases.len() > MAX_ALIASES {
        return Err(SlbError::new(
            "aliases",
            format!("at most {MAX_ALIASES} aliases"),
        ));
    }
    for (i, a) in c.aliases.iter().enumerate() {
        validate_alias(&format!("aliases[{i}]"), a)?;
    }
    if c.listen.is_empty() || c.listen.len() > MAX_LISTEN {
        return Err(SlbError::new(
            "listen",
            format!("must have 1 to {MAX_LISTEN} entries"),
        ));
    }
    let mut ports = BTreeSet::new();
    for (i, l) in c.listen.iter().enumerate() {
        if l.port == 0 {
            return Err(SlbError::new(
                format!("listen[{i}].port"),
                "must be 1 to 65535",
            ));
        }
        if !ports.insert(l.port) {
            return Err(SlbError::new(
                format!("listen[{i}].port"),
                format!("duplicate port {}", l.port),
            ));
        }
        if l.tls && c.tls.is_none() {
            return Err(SlbError::new(
                "tls",
                format!("required because listen[{i}] has tls"),
            ));
        }
        if l.http2 && !l.tls {
            return Err(SlbError::new(
                format!("listen[{i}].http2"),
                "http2 requires tls",
            ));
        }
    }
    if let Some(t) = &c.tls {
        validate_abs_path("tls.certificate", &t.certificate)?;
        validate_abs_path("tls.key", &t.key)?;
    }
    if c.locations.is_empty() || c.locations.len() > MAX_LOCATIONS {
        return Err(SlbError::new(
            "locations",
            format!("must have 1 to {MAX_LOCATIONS} entries"),
        ));
    }
    let mut paths = BTreeSet::new();
    for (i, l) in c.locations.iter().enumerate() {
        let f = format!("locations[{i}]");
        validate_location(&f, l)?;
        if !paths.insert((l.match_kind, l.path.clone())) {
            return Err(SlbError::new(
                format!("{f}.path"),
                format!("duplicate location {:?}", l.path),
            ));
        }
    }
    if c.client_max_body_size > 1 << 40 {
        return Err(SlbError::new("client_max_body_size", "at most 1 TiB"));
    }
    validate_timeout("timeouts.client_header_ms", c.timeouts.client_header_ms)?;
    validate_timeout("timeouts.client_body_ms", c.timeouts.client_body_ms)?;
    validate_timeout("timeouts.keepalive_ms", c.timeouts.keepalive_ms)?;
    validate_timeout("timeouts.send_ms", c.timeouts.send_ms)?;
    validate_headers("response_headers", &c.response_headers)?;
    Ok(())
}

/// Checks an upstream list: `IP:port` addresses (no names, no port 0, no unspecified or
/// multicast address), weights 1–100, no duplicates, at most 1000 servers. An empty list is
/// valid (the domain then answers 503).
pub fn validate_upstreams(u: &UpstreamList) -> Result<(), SlbError> {
    if u.servers.len() > MAX_SERVERS {
        return Err(SlbError::new(
            "servers",
            format!("at most {MAX_SERVERS} servers"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, s) in u.servers.iter().enumerate() {
        let f = format!("servers[{i}].addr");
        let addr: SocketAddr = s
            .addr
            .parse()
            .map_err(|_| SlbError::new(&f, format!("{:?} is not an IP:port address", s.addr)))?;
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(SlbError::new(
                &f,
                format!("{:?} needs a non-zero port and a unicast address", s.addr),
            ));
        }
        if !seen.insert(addr) {
            return Err(SlbError::new(&f, format!("duplicate address {addr}")));
        }
        if s.weight == 0 || s.weight > MAX_WEIGHT {
            return Err(SlbError::new(
                format!("servers[{i}].weight"),
                format!("{} must be between 1 and {MAX_WEIGHT}", s.weight),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    #[test]
    fn domain_names() {
        for ok in ["example.com", "a.b-c.example.org", "x1.io"] {
            validate_domain_name("domain", ok).unwrap();
        }
        for bad in [
            "",
            "com",
            "Example.com",
            "a..com",
            "-a.com",
            "a-.com",
            "a b.com",
            "a/b.com",
            "*.a.com",
        ] {
            let e = validate_domain_name("domain", bad).unwrap_err();
            assert_eq!(e.field, "domain", "{bad:?}");
        }
        validate_alias("aliases[0]", "*.example.com").unwrap();
    }

    #[test]
    fn configs() {
        validate_domain_config(&DomainConfig::default()).unwrap();
        type Mutate = Box<dyn Fn(&mut DomainConfig)>;
        let table: Vec<(Mutate, &str)> = vec![
            (
                Box::new(|c| c.locations[0].path = "/a;b".into()),
                "locations[0].path",
            ),
            (
                Box::new(|c| c.locations[0].path = "a".into()),
                "locations[0].path",
            ),
            (
                Box::new(|c| c.locations[0].proxy.tries = 0),
                "locations[0].proxy.tries",
            ),
            (
                Box::new(|c| {
                    c.locations[0].request_headers = vec![Header {
                        name: "X-A".into(),
                        value: "$host".into(),
                    }]
                }),
                "locations[0].request_headers[0].value",
            ),
            (
                Box::new(|c| {
                    c.response_headers = vec![Header {
                        name: "X A".into(),
                        value: "v".into(),
                    }]
                }),
                "response_headers[0].name",
            ),
            (Box::new(|c| c.listen[0].tls = true), "tls"),
            (Box::new(|c| c.listen[0].port = 0), "listen[0].port"),
            (Box::new(|c| c.listen.clear()), "listen"),
            (
                Box::new(|c| c.aliases = vec!["bad name".into()]),
                "aliases[0]",
            ),
            (
                Box::new(|c| {
                    c.tls = Some(Tls {
                        certificate: "rel/cert.pem".into(),
                        key: "/k.pem".into(),
                    })
                }),
                "tls.certificate",
            ),
            (Box::new(|c| c.timeouts.send_ms = 0), "timeouts.send_ms"),
            (
                Box::new(|c| c.locations.push(Location::default())),
                "locations[1].path",
            ),
        ];
        for (i, (mutate, field)) in table.into_iter().enumerate() {
            let mut c = DomainConfig::default();
            mutate(&mut c);
            let e = validate_domain_config(&c).unwrap_err();
            assert_eq!(e.field, field, "case {i}: {e}");
        }
    }

    #[test]
    fn upstreams() {
        let mk = |addrs: &[(&str, u32)]| UpstreamList {
            servers: addrs
                .iter()
                .map(|(a, w)| UpstreamServer {
                    addr: a.to_string(),
                    weight: *w,
                })
                .collect(),
            revision: 0,
        };
        validate_upstreams(&mk(&[])).unwrap();
        validate_upstreams(&mk(&[("10.0.0.1:80", 1), ("[::1]:8080", 100)])).unwrap();
        for (bad, field) in [
            (mk(&[("host:80", 1)]), "servers[0].addr"),
            (mk(&[("10.0.0.1", 1)]), "servers[0].addr"),
            (mk(&[("10.0.0.1:0", 1)]), "servers[0].addr"),
            (mk(&[("0.0.0.0:80", 1)]), "servers[0].addr"),
            (
                mk(&[("10.0.0.1:80", 1), ("10.0.0.1:80", 2)]),
                "servers[1].addr",
            ),
            (mk(&[("10.0.0.1:80", 0)]), "servers[0].weight"),
        ] {
            assert_eq!(validate_upstreams(&bad).unwrap_err().field, field);
        }
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let c: DomainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DomainConfig::default());
        assert!(serde_json::from_str::<DomainConfig>(r#"{"nginx": "x"}"#).is_err());
        let c: DomainConfig = serde_json::from_str(
            r#"{"locations":[{"path":"/api","match":"exact","proxy":{"tries":3}}]}"#,
        )
        .unwrap();
        assert_eq!(c.locations[0].match_kind, MatchKind::Exact);
        assert_eq!(c.locations[0].proxy.tries, 3);
        assert_eq!(c.locations[0].proxy.read_timeout_ms, 60_000);
    }
}
