//! DEL: remove the OVS port, release the address, answer; the veth is deleted after the
//! answer by a detached child. Everything already gone is success.
//!
//! The order, and why:
//! 1. The OVS port first (found by `external_ids`): once the port is off the bridge the pod's
//!    interface reaches nobody, so its address may be handed out again even while the veth
//!    still exists.
//! 2. The release, only once the port is surely gone. When the port removal failed, the veth
//!    is deleted first, synchronously, and the address is released only if that worked.
//! 3. The veth, after the answer: its host end is marked (alias `cellplane DEL pending CID
//!    IFNAME`) and a detached child (own session, `/dev/null` on stdio, so the runtime's pipes
//!    close when we exit) deletes it by index, which deletes the pod end too, wherever its
//!    netns is. The kernel's unregister waits for RCU grace periods in the task that asks
//!    (~16 ms here, most of what DEL used to take), and nothing the runtime does next needs
//!    the veth gone: the port and the allocation are. An ADD that still finds the marked veth
//!    in its netns deletes it itself, synchronously (add.rs); CHECK fails on the missing
//!    allocation (code 3). When anything failed, DEL deletes the veth before answering
//!    instead: it reports an error and will be retried, and leaves nothing pending meanwhile.

use std::time::Instant;

use cellplane_net::netlink_route::delete_link_detached;
use cellplane_net::{host_veth_name, Netlink};
use tracing::{info, instrument, warn};

use super::{attachment_ids, combine, del_pending_alias, ipam, ovsdb, with_etcd_deadline};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{code, CniError};

/// What became of the host veth.
enum Veth {
    Absent,
    Deleted,
    /// Left to the detached child with this pid.
    Detached(i32),
}

impl std::fmt::Display for Veth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Veth::Absent => f.write_str("absent"),
            Veth::Deleted => f.write_str("deleted"),
            Veth::Detached(pid) => write!(f, "deleting (pid {pid})"),
        }
    }
}

/// Deletes the host veth now (and with it the pod end).
async fn delete_now(name: &str) -> Result<Veth, CniError> {
    let gone = Netlink::connect()?.del_link(name).await?;
    Ok(if gone { Veth::Deleted } else { Veth::Absent })
}

/// Marks the host veth and leaves its deletion to a detached child; deletes it synchronously
/// when that cannot be done.
async fn delete_after_answer(name: &str, env: &CniEnv) -> Result<Veth, CniError> {
    let nl = Netlink::connect()?;
    let Some(link) = nl.link(name).await? else {
        return Ok(Veth::Absent);
    };
    if let Err(e) = nl
        .set_alias(
            link.index,
            &del_pending_alias(&env.container_id, &env.ifname),
        )
        .await
    {
        warn!(host = %name, error = %e, "cannot mark the veth; deleting it now");
        return Ok(if nl.del_link_index(link.index).await? {
            Veth::Deleted
        } else {
            Veth::Absent
        });
    }
    match delete_link_detached(link.index) {
        Ok(pid) => Ok(Veth::Detached(pid)),
        Err(e) => {
            warn!(host = %name, error = %e, "cannot fork the veth deletion; deleting it now");
            nl.del_link_index(link.index).await?;
            Ok(Veth::Deleted)
        }
    }
}

#[instrument(skip_all, fields(container_id = %env.container_id, ifname = %env.ifname))]
pub async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let t0 = Instant::now();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let mut errors = Vec::new();

    // 1. The port.
    let port = async {
        let mut db = ovsdb(conf).await?;
        Ok::<usize, CniError>(
            db.del_ports_by_ids(&attachment_ids(&env.container_id, &env.ifname))
                .await?,
        )
    }
    .await;
    let ovs_ms = ms(t0);
    let port_gone = match &port {
        Ok(_) => true,
        Err(e) => {
            errors.push(e.clone());
            false
        }
    };

    // 2. The address, once its interface surely reaches nobody.
    let t1 = Instant::now();
    let mut veth = None;
    if !port_gone {
        match delete_now(&host_name).await {
            Ok(v) => veth = Some(v),
            Err(e) => errors.push(e),
        }
    }
    let mut released = None;
    if port_gone || veth.is_some() {
        let r = with_etcd_deadline(conf, "the release", async {
            ipam(conf)
                .await?
                .release(&env.container_id, &env.ifname)
                .await
                .map_err(CniError::from)
        })
        .await;
        match r {
            Ok(r) => released = r,
            Err(e) => errors.push(e),
        }
    }
    let release_ms = ms(t1);

    // 3. The veth: after the answer when all went well, else now.
    let t2 = Instant::now();
    if veth.is_none() {
        let r = if errors.is_empty() {
            delete_after_answer(&host_name, env).await
        } else {
            delete_now(&host_name).await
        };
        match r {
            Ok(v) => veth = Some(v),
            Err(e) => errors.push(e),
        }
    }
    info!(host = %host_name, ports = ?port.as_ref().ok(), released = ?released.as_ref().map(|r| r.ip),
          veth = %veth.as_ref().map_or("unknown".to_string(), Veth::to_string), ovs_ms, release_ms, veth_ms = ms(t2), total_ms = ms(t0), "DEL done");
    combine(errors, "DEL incomplete", code::IPAM)
}
