//! The Service annotations by which a Service opts in to an SLB domain.
//!
//! | annotation | value |
//! |---|---|
//! | `cellplane.io/slb-group` | SLB group (`[a-z0-9-]`, 1..=63) |
//! | `cellplane.io/slb-domain` | domain whose upstream list this Service feeds (lower-case host name) |
//! | `cellplane.io/slb-port` | the target port: a number (1..=65535) or the port's name in the EndpointSlices |
//!
//! A Service carrying none of them is not opted in. One carrying some but not all, or a
//! value that does not validate, is malformed: it is skipped with a warning naming it.

use std::collections::BTreeMap;

pub const GROUP: &str = "cellplane.io/slb-group";
pub const DOMAIN: &str = "cellplane.io/slb-domain";
pub const PORT: &str = "cellplane.io/slb-port";

/// Where one Service's endpoints go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainKey {
    pub group: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub domain: DomainKey,
    pub port: PortRef,
}

/// Why a Service's annotations were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub reason: String,
}

/// `Ok(None)`: not opted in. `Err`: malformed.
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Target>, AnnotationError> {
    let get = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .map(|v| v.trim().to_string())
    };
    let (group, domain, port) = (get(GROUP), get(DOMAIN), get(PORT));
    if group.is_none() && domain.is_none() && port.is_none() {
        return Ok(None);
    }
    let missing = |annotation| AnnotationError {
        annotation,
        reason: "missing (all three SLB annotations are required)".into(),
    };
    let group = group.ok_or_else(|| missing(GROUP))?;
    let domain = domain.ok_or_else(|| missing(DOMAIN))?;
    let port = port.ok_or_else(|| missing(PORT))?;
    let bad = |annotation, reason: &str| AnnotationError {
        annotation,
        reason: reason.to_string(),
    };
    if group.is_empty()
        || group.len() > 63
        || !group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad(GROUP, "must be 1-63 characters of [a-z0-9-]"));
    }
    if !valid_domain(&domain) {
        return Err(bad(
            DOMAIN,
            "must be a lower-case host name (labels of [a-z0-9-], dot-separated, at most 253 characters)",
        ));
    }
    let port = if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => PortRef::Number(p),
            _ => return Err(bad(PORT, "port number must be 1-65535")),
        }
    } else if !port.is_empty()
        && port.len() <= 63
        && port
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        PortRef::Name(port)
    } else {
        return Err(bad(
            PORT,
            "must be a port number or a port name ([a-z0-9-])",
        ));
    };
    Ok(Some(Target {
        domain: DomainKey { group, domain },
        port,
    }))
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some(&ann(&[("other", "x")]))), Ok(None));
        let ok = parse(Some(&ann(&[
            (GROUP, "g1"),
            (DOMAIN, "app.example.com"),
            (PORT, "http"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(ok.port, PortRef::Name("http".into()));
        assert_eq!(ok.domain.domain, "app.example.com");
        let num = parse(Some(&ann(&[
            (GROUP, "g1"),
            (DOMAIN, "a.b"),
            (PORT, "8080"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(num.port, PortRef::Number(8080));
        for bad in [
            ann(&[(GROUP, "g1"), (DOMAIN, "a.b")]),
            ann(&[(GROUP, "G1"), (DOMAIN, "a.b"), (PORT, "80")]),
            ann(&[(GROUP, "g1"), (DOMAIN, "a..b"), (PORT, "80")]),
            ann(&[(GROUP, "g1"), (DOMAIN, "a.b"), (PORT, "70000")]),
            ann(&[(GROUP, "g1"), (DOMAIN, "a.b"), (PORT, "0")]),
            ann(&[(GROUP, "g1"), (DOMAIN, "a.b"), (PORT, "Http!")]),
        ] {
            assert!(parse(Some(&bad)).is_err(), "{bad:?}");
        }
    }
}
