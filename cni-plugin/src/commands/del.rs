//! DEL: remove the OVS port (found by `external_ids`), then the veth (from the host side: no
//! netns needed) while the address is released. Everything already gone is success.

use cellplane_net::{host_veth_name, Netlink};
use tracing::{info, instrument};

use super::{attachment_ids, combine, ipam, ovsdb, with_etcd_deadline};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{code, CniError};

/// Deletes the host veth on its own OS thread (the kernel's unregister waits for an RCU
/// grace period, ~17 ms here; meanwhile the release proceeds).
fn spawn_veth_delete(name: String) -> std::thread::JoinHandle<Result<bool, CniError>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO, format!("runtime for veth delete: {e}")))?;
        rt.block_on(async { Ok(Netlink::connect()?.del_link(&name).await?) })
    })
}

fn join(h: std::thread::JoinHandle<Result<bool, CniError>>) -> Result<bool, CniError> {
    h.join()
        .unwrap_or_else(|_| Err(CniError::new(code::NETLINK, "veth delete thread panicked")))
}

#[instrument(skip_all, fields(container_id = %env.container_id, ifname = %env.ifname))]
pub async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let mut errors = Vec::new();

    // 1. The port: once it is off the bridge the interface reaches nobody.
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

    // 2. The veth (deleting the host end deletes the pod end too, wherever its netns is or
    //    was). Concurrently with the release when the port is gone; otherwise first, and the
    //    address is released only once its interface surely is.
    let t1 = std::time::Instant::now();
    let veth = spawn_veth_delete(host_name.clone());
    let (may_release, pending) = if port_gone {
        (true, Some(veth))
    } else {
        match join(veth) {
            Ok(_) => (true, None),
            Err(e) => {
                errors.push(e);
                (false, None)
            }
        }
    };

    // 3. The address.
    let mut released = None;
    if may_release {
        match with_etcd_deadline(conf, "the release", async {
            ipam(conf)
                .await?
                .release(&env.container_id, &env.ifname)
                .await
                .map_err(CniError::from)
        })
        .await
        {
            Ok(r) => released = r,
            Err(e) => errors.push(e),
        }
    }
    if let Some(h) = pending {
        if let Err(e) = join(h) {
            errors.push(e);
        }
    }
    info!(host = %host_name, ports = ?port.as_ref().ok(), released = ?released.as_ref().map(|r| r.ip),
          ovs_ms, veth_and_release_ms = ms(t1), total_ms = ms(t0), "DEL done");
    combine(errors, "DEL incomplete", code::IPAM)
}
