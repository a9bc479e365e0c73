//! CHECK: the attachment is as ADD left it — interface, address and default route in the
//! netns; the OVS port on the right bridge with the right tag; the allocation owned by this
//! attachment; and the previous result names our address.

use cellplane_net::{host_veth_name, Netlink, Netns};
use serde_json::Value;
use tracing::instrument;

use super::{ids, ipam, ovsdb, parse_del_pending, with_etcd_deadline};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{code, CniError};

fn wrong(msg: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

#[instrument(skip_all, fields(container_id = %env.container_id, ifname = %env.ifname))]
pub async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("prevResult", "is required for CHECK"))?;

    // allocation
    let (pool, handle) = with_etcd_deadline(conf, "the check", async {
        let ipam = ipam(conf).await?;
        let h = ipam
            .get_handle(&env.container_id, &env.ifname)
            .await?
            .ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!(
                        "no allocation for container {} ifname {}",
                        env.container_id, env.ifname
                    ),
                )
            })?;
        let block = ipam.get_block(&h.pool, &h.block).await?;
        let owned = block
            .as_ref()
            .and_then(|b| {
                b.record
                    .ordinal_of(h.ip)
                    .and_then(|o| b.record.allocations.get(&o))
            })
            .is_some_and(|a| a.is_for(&env.container_id, &env.ifname));
        if !owned {
            return Err(wrong(format!(
                "address {} in block {}/{} is not owned by this attachment",
                h.ip, h.pool, h.block
            )));
        }
        let pool = ipam.get_pool(&h.pool).await?;
        Ok((pool, h))
    })
    .await?;
    let ip = handle.ip;

    // previous result names the address
    let want = format!("{ip}/{}", pool.prefix());
    let in_prev = prev.get("ips").and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|i| i.get("address").and_then(Value::as_str) == Some(want.as_str()))
    });
    if !in_prev {
        return Err(wrong(format!("prevResult does not list address {want}")));
    }

    // netns: interface, address, route
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = Netns::open(&netns_path).map_err(|e| CniError::invalid_env("CNI_NETNS", e))?;
    let nl = Netlink::from_fd(netns.open_sockets(false)?.route, &netns)?;
    let link = nl.link(&env.ifname).await?.ok_or_else(|| {
        wrong(format!(
            "interface {} is missing from netns {netns_path}",
            env.ifname
        ))
    })?;
    if !link.up {
        return Err(wrong(format!("interface {} is down", env.ifname)));
    }
    let addrs = nl.addrs(link.index).await?;
    if !addrs.contains(&(ip, pool.prefix())) {
        return Err(wrong(format!(
            "interface {} lacks address {want} (has {addrs:?})",
            env.ifname
        )));
    }
    let routes = nl.default_routes().await?;
    if !routes.contains(&(Some(pool.gateway()), Some(link.index))) {
        return Err(wrong(format!(
            "no default route via {} on {}",
            pool.gateway(),
            env.ifname
        )));
    }

    // host end and OVS port
    let host = host_veth_name(&env.container_id, &env.ifname);
    match Netlink::connect()?.link(&host).await? {
        None => return Err(wrong(format!("host veth {host} is missing"))),
        Some(l) if parse_del_pending(l.alias.as_deref()).is_some() => {
            return Err(wrong(format!("host veth {host} is being deleted (DEL)")))
        }
        Some(_) => {}
    }
    let mut db = ovsdb(conf).await?;
    let port = db
        .port(&host)
        .await?
        .ok_or_else(|| wrong(format!("OVS port {host} is missing")))?;
    if port.bridge.as_deref() != Some(conf.bridge.as_str()) {
        return Err(wrong(format!(
            "OVS port {host} is on bridge {:?}, not {}",
            port.bridge, conf.bridge
        )));
    }
    if port.tag != Some(pool.vlan()) {
        return Err(wrong(format!(
            "OVS port {host} has tag {:?}, not {}",
            port.tag,
            pool.vlan()
        )));
    }
    if port.external_ids.get(ids::CONTAINER_ID) != Some(&env.container_id)
        || port.external_ids.get(ids::IFNAME) != Some(&env.ifname)
    {
        return Err(wrong(format!(
            "OVS port {host} belongs to another attachment: {:?}",
            port.external_ids
        )));
    }
    Ok(())
}
