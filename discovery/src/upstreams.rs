//! Pure computation of a Service's upstream servers from its EndpointSlices.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::annotations::PortRef;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Is the endpoint ready and not terminating? A missing `ready` counts as ready (the
/// EndpointSlice API says consumers should treat unknown as ready); a missing `terminating`
/// as not terminating.
pub fn serving(e: &Endpoint) -> bool {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}

/// The port of `slice` that `port` names, if the slice has it. A number is taken as the
/// target port as is.
pub fn slice_port(slice: &EndpointSlice, port: &PortRef) -> Option<u16> {
    match port {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => slice
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok()),
    }
}

/// Adds `IP:port` of every serving endpoint of `slice` to `out` (IPv6 as `[ip]:port`).
pub fn collect(slice: &EndpointSlice, port: &PortRef, out: &mut BTreeSet<String>) {
    let Some(port) = slice_port(slice, port) else {
        return;
    };
    let v6 = slice.address_type == "IPv6";
    for e in slice.endpoints.iter().flatten().filter(|e| serving(e)) {
        for a in &e.addresses {
            if v6 || a.contains(':') {
                out.insert(format!("[{a}]:{port}"));
            } else {
                out.insert(format!("{a}:{port}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};

    fn ep(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                terminating,
                serving: None,
            }),
            ..Endpoint::default()
        }
    }

    #[test]
    fn only_ready_not_terminating() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                ep("10.0.0.1", Some(true), None),
                ep("10.0.0.2", Some(false), None),
                ep("10.0.0.3", Some(true), Some(true)),
                ep("10.0.0.4", None, None),
            ]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        };
        let mut out = BTreeSet::new();
        collect(&slice, &PortRef::Name("http".into()), &mut out);
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1:8080", "10.0.0.4:8080"]
        );
        let mut none = BTreeSet::new();
        collect(&slice, &PortRef::Name("grpc".into()), &mut none);
        assert!(none.is_empty());
        let mut v6 = BTreeSet::new();
        let s6 = EndpointSlice {
            address_type: "IPv6".into(),
            endpoints: Some(vec![ep("fd00::1", Some(true), Some(false))]),
            ..EndpointSlice::default()
        };
        collect(&s6, &PortRef::Number(80), &mut v6);
        assert_eq!(v6.into_iter().collect::<Vec<_>>(), ["[fd00::1]:80"]);
    }
}
