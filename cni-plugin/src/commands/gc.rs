//! GC: remove this node's ports and release this node's allocations that are not in
//! `cni.dev/valid-attachments`, and delete host veths a DEL left for deletion that are still
//! there (its detached child died). Continues past errors and reports them all.

use std::collections::BTreeMap;

use cellplane_net::Netlink;
use tracing::{info, instrument, warn};

use super::{combine, ids, ipam, ovsdb, parse_del_pending, with_etcd_deadline};
use crate::config::NetConf;
use crate::error::{code, CniError};

#[instrument(skip_all)]
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::invalid_config("cni.dev/valid-attachments", "is required for GC")
    })?;
    let mut errors = Vec::new();

    // ports (and their veths) of this node's OVS
    let mut removed_ports = 0;
    match ovsdb(conf).await {
        Ok(mut db) => {
            let mut owner = BTreeMap::new();
            owner.insert(ids::OWNER.to_string(), ids::OWNER_VALUE.to_string());
            match db.find_ports(&owner).await {
                Ok(ports) => {
                    let stale: Vec<_> = ports
                        .into_iter()
                        .filter(|p| {
                            let c = p
                                .external_ids
                                .get(ids::CONTAINER_ID)
                                .cloned()
                                .unwrap_or_default();
                            let i = p.external_ids.get(ids::IFNAME).cloned().unwrap_or_default();
                            !valid.contains(&(c, i))
                        })
                        .collect();
                    let nl = Netlink::connect();
                    for p in &stale {
                        match &nl {
                            Ok(nl) => {
                                if let Err(e) = nl.del_link(&p.name).await {
                                    errors.push(CniError::from(e));
                                }
                            }
                            Err(e) => warn!(error = %e, "no netlink"),
                        }
                    }
                    let uuids: Vec<String> = stale.iter().map(|p| p.uuid.clone()).collect();
                    match db.del_ports(&uuids).await {
                        Ok(()) => removed_ports = uuids.len(),
                        Err(e) => errors.push(e.into()),
                    }
                }
                Err(e) => errors.push(e.into()),
            }
        }
        Err(e) => errors.push(e),
    }

    // veths a DEL marked and left to a child that did not finish: their port and their
    // allocation are gone already
    let mut pending_veths = 0;
    let r = async {
        let nl = Netlink::connect()?;
        let mut n = 0;
        for l in nl.links().await? {
            if parse_del_pending(l.alias.as_deref()).is_some() && nl.del_link_index(l.index).await?
            {
                n += 1;
            }
        }
        Ok::<usize, CniError>(n)
    }
    .await;
    match r {
        Ok(n) => pending_veths = n,
        Err(e) => errors.push(e),
    }

    // this node's allocations
    let mut released = 0;
    let r = with_etcd_deadline(conf, "the GC", async {
        let ipam = ipam(conf).await?;
        let handles = ipam.handles().await?;
        let mut errs = Vec::new();
        let mut n = 0;
        for ((cid, ifname), (h, _rev)) in handles {
            if h.node != conf.node || valid.contains(&(cid.clone(), ifname.clone())) {
                continue;
            }
            match ipam.release(&cid, &ifname).await {
                Ok(_) => n += 1,
                Err(e) => errs.push(CniError::from(e)),
            }
        }
        Ok((n, errs))
    })
    .await;
    match r {
        Ok((n, errs)) => {
            released = n;
            errors.extend(errs);
        }
        Err(e) => errors.push(e),
    }
    info!(
        removed_ports,
        pending_veths,
        released,
        errors = errors.len(),
        "GC done"
    );
    combine(errors, "GC incomplete", code::GC_INCOMPLETE)
}
