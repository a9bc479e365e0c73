//! One file per CNI command.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::collections::BTreeMap;

use cellplane_core::PodRef;
use cellplane_etcd::{Etcd, Ipam, IpamOptions};
use cellplane_net::Ovsdb;

use crate::config::NetConf;
use crate::error::{code, CniError};

/// `external_ids` keys on the ports we create.
pub mod ids {
    pub const CONTAINER_ID: &str = "container_id";
    pub const IFNAME: &str = "ifname";
    pub const POD_NAMESPACE: &str = "pod_namespace";
    pub const POD_NAME: &str = "pod_name";
    pub const POD_UID: &str = "pod_uid";
    pub const OWNER: &str = "owner";
    pub const OWNER_VALUE: &str = "cellplane";
}

/// The start of the alias DEL gives a host veth whose deletion it leaves to a detached child
/// (del.rs): an ADD that finds the veth still there may delete it (add.rs).
pub const DEL_PENDING: &str = "cellplane DEL pending";

/// The alias DEL gives the host veth of `(container_id, ifname)`: `DEL_PENDING CID IFNAME`,
/// or the bare marker when that would not fit in an alias (255 bytes).
pub(crate) fn del_pending_alias(container_id: &str, ifname: &str) -> String {
    let a = format!("{DEL_PENDING} {container_id} {ifname}");
    if a.len() <= 255 {
        a
    } else {
        DEL_PENDING.to_string()
    }
}

/// `Some(ids)` for an alias made by [`del_pending_alias`] (`ids` when it carries them).
pub(crate) fn parse_del_pending(alias: Option<&str>) -> Option<Option<(String, String)>> {
    let rest = alias?.strip_prefix(DEL_PENDING)?;
    if rest.is_empty() {
        return Some(None);
    }
    let mut it = rest.strip_prefix(' ')?.split(' ');
    match (it.next(), it.next(), it.next()) {
        (Some(c), Some(i), None) if !c.is_empty() && !i.is_empty() => {
            Some(Some((c.to_string(), i.to_string())))
        }
        _ => None,
    }
}

/// The `external_ids` that find one attachment's port.
pub(crate) fn attachment_ids(container_id: &str, ifname: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(ids::CONTAINER_ID.to_string(), container_id.to_string());
    m.insert(ids::IFNAME.to_string(), ifname.to_string());
    m.insert(ids::OWNER.to_string(), ids::OWNER_VALUE.to_string());
    m
}

/// All `external_ids` written on a port.
pub(crate) fn port_ids(container_id: &str, ifname: &str, pod: &PodRef) -> BTreeMap<String, String> {
    let mut m = attachment_ids(container_id, ifname);
    for (k, v) in [
        (ids::POD_NAMESPACE, &pod.namespace),
        (ids::POD_NAME, &pod.name),
        (ids::POD_UID, &pod.uid),
    ] {
        if let Some(v) = v {
            m.insert(k.to_string(), v.clone());
        }
    }
    m
}

pub(crate) async fn ipam(conf: &NetConf) -> Result<Ipam, CniError> {
    let etcd = Etcd::connect(&conf.etcd).await?;
    Ok(Ipam::new(etcd, IpamOptions::default()))
}

pub(crate) async fn ovsdb(conf: &NetConf) -> Result<Ovsdb, CniError> {
    Ovsdb::connect(&conf.ovsdb, conf.ovsdb_timeout)
        .await
        .map_err(CniError::from)
}

/// Runs an etcd operation under the etcd deadline (which starts now): code 11 when it passes.
pub(crate) async fn with_etcd_deadline<T>(
    conf: &NetConf,
    what: &str,
    f: impl std::future::Future<Output = Result<T, CniError>>,
) -> Result<T, CniError> {
    match tokio::time::timeout(conf.etcd.timeout(), f).await {
        Ok(r) => r,
        Err(_) => Err(CniError::new(
            code::TRY_AGAIN,
            format!(
                "etcd did not complete {what} within {} ms",
                conf.etcd.timeout_ms
            ),
        )),
    }
}

/// Errors collected by best-effort work (DEL, GC, rollback) as one CNI error: code 11 when
/// any was "unavailable", else the first one's code.
pub(crate) fn combine(
    errors: Vec<CniError>,
    what: &str,
    fallback_code: u32,
) -> Result<(), CniError> {
    if errors.is_empty() {
        return Ok(());
    }
    let c = if errors.iter().any(|e| e.code == code::TRY_AGAIN) {
        code::TRY_AGAIN
    } else if errors.len() == 1 {
        errors[0].code
    } else {
        fallback_code
    };
    let msgs: Vec<String> = errors.iter().map(|e| e.msg.clone()).collect();
    Err(CniError::new(c, format!("{what}: {}", msgs.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_pending_alias_round_trip() {
        let a = del_pending_alias("c1", "eth0");
        assert_eq!(a, "cellplane DEL pending c1 eth0");
        assert_eq!(
            parse_del_pending(Some(&a)),
            Some(Some(("c1".to_string(), "eth0".to_string())))
        );
        let long = "x".repeat(256);
        assert_eq!(del_pending_alias(&long, "eth0"), DEL_PENDING);
        assert_eq!(parse_del_pending(Some(DEL_PENDING)), Some(None));
        for other in [
            None,
            Some(""),
            Some("cellplane"),
            Some("cellplane DEL pendingX a b"),
        ] {
            assert_eq!(parse_del_pending(other), None, "{other:?}");
        }
        assert_eq!(parse_del_pending(Some("cellplane DEL pending a")), None);
        assert_eq!(parse_del_pending(Some("cellplane DEL pending a b c")), None);
    }
}
