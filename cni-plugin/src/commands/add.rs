//! ADD: lock → allocate → veth (pod end created in the netns under CNI_IFNAME, with its MTU
//! and MAC) → address → OVS access port (one transaction, which also reads the bridge's
//! `datapath_type`) → TX checksum offload off on both ends when asked or on the userspace
//! datapath (`txChecksumOffload`) → link up, which makes the kernel send the gratuitous ARP
//! (`arp_notify`) → default route → result.
//! A failure undoes what was done, judged by the returned results.

use std::time::Instant;

use cellplane_etcd::{AllocRequest, Allocated, HostLock, Ipam, LockError};
use cellplane_net::netlink_route::{format_mac, random_mac, LinkInfo};
use cellplane_net::{
    ethtool, host_veth_name, NetError, Netlink, Netns, OvsdbError, PodLinkSetup, PortSpec,
    VethOptions,
};
use serde_json::Value;
use tracing::{debug, info, instrument, warn};

use super::{attachment_ids, ipam, ovsdb, parse_del_pending, port_ids, with_etcd_deadline};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{code, CniError};
use crate::result::{add_result, AddOutcome};

/// What has been done so far, for the rollback.
#[derive(Default)]
struct Done {
    /// A new allocation (not one the attachment already had).
    allocated: bool,
    veth: bool,
    port: bool,
}

#[instrument(skip_all, fields(container_id = %env.container_id, ifname = %env.ifname))]
pub async fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let t0 = Instant::now();
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = Netns::open(&netns_path).map_err(|e| CniError::invalid_env("CNI_NETNS", e))?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);

    // Sockets inside the pod netns, opened on a dedicated thread (the only netns entry).
    let socks = netns.open_sockets(false)?;
    let pod_nl = Netlink::from_fd(socks.route, &netns)?;
    if let Some(link) = pod_nl.link(&env.ifname).await? {
        clear_pending_delete(env, conf, &netns, &link, &host_name).await?;
    }

    let t_netns = t0.elapsed();
    // Allocation, serialized per node; the etcd deadline starts once the lock is held.
    let lock = HostLock::acquire(&conf.lock_file, conf.lock_timeout).map_err(|e| match e {
        LockError::Timeout { .. } => CniError::new(code::TRY_AGAIN, e.to_string()),
        LockError::Io { .. } => CniError::new(code::IO, e.to_string()),
    })?;
    let req = AllocRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        node: conf.node.clone(),
        pools: conf.pools.clone(),
        pod: env.pod.clone(),
        netns: Some(netns_path.clone()),
        ip: None,
    };
    let (ipam, alloc) = with_etcd_deadline(conf, "the allocation", async {
        let ipam = ipam(conf).await?;
        let a = ipam.allocate(&req).await?;
        Ok((ipam, a))
    })
    .await?;
    drop(lock);
    let t_alloc = t0.elapsed();

    let mut done = Done {
        allocated: !alloc.existing,
        ..Done::default()
    };
    let ctx = Ctx {
        env,
        conf,
        netns: &netns,
        pod_nl: &pod_nl,
        host_name: &host_name,
    };
    match plumb(&ctx, &alloc, &mut done).await {
        Ok(outcome) => {
            info!(ip = %alloc.ip, pool = %alloc.pool, vlan = alloc.vlan, host = %host_name,
                  netns_ms = t_netns.as_secs_f64() * 1e3, alloc_ms = t_alloc.as_secs_f64() * 1e3, total_ms = t0.elapsed().as_secs_f64() * 1e3, "ADD done");
            Ok(add_result(
                conf.cni_version,
                conf.prev_result.as_ref(),
                &outcome,
            ))
        }
        Err(e) => {
            let undo = rollback(env, conf, &ipam, &host_name, &done).await;
            if undo.is_empty() {
                Err(e)
            } else {
                warn!(errors = ?undo, "ADD rollback incomplete");
                Err(e.with_details(format!("rollback incomplete: {}", undo.join("; "))))
            }
        }
    }
}

/// CNI_IFNAME exists in the netns. If it is the pod end of a veth whose deletion an earlier
/// DEL left to its detached child, not done yet (an ADD right after a DEL in the same netns),
/// it is deleted here, synchronously. That is proven by its peer, the host end: DEL's marker
/// alias naming an attachment whose derived name the host end has, each end the other's
/// peer (indexes, and the host end's peer namespace is this netns), and no allocation of that
/// attachment in etcd. Anything else is "interface exists" (code 101), as the spec requires.
async fn clear_pending_delete(
    env: &CniEnv,
    conf: &NetConf,
    netns: &Netns,
    pod_link: &LinkInfo,
    host_name: &str,
) -> Result<(), CniError> {
    let exists = || {
        CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "interface {} already exists in netns {}",
                env.ifname,
                env.netns.as_deref().unwrap_or_default()
            ),
        )
    };
    let Some(peer) = pod_link.peer_index else {
        return Err(exists());
    };
    let host_nl = Netlink::connect()?;
    let Some(host) = host_nl.link_by_index(peer).await? else {
        return Err(exists());
    };
    let (cid, ifname) = match parse_del_pending(host.alias.as_deref()) {
        Some(Some(ids)) => ids,
        // the bare marker: only for this very attachment's derived name
        Some(None) if host.name == host_name => (env.container_id.clone(), env.ifname.clone()),
        _ => return Err(exists()),
    };
    if host.name != host_veth_name(&cid, &ifname)
        || host.peer_index != Some(pod_link.index)
        || host.peer_netnsid.is_none()
        || host.peer_netnsid != host_nl.nsid_of(netns).await?
    {
        return Err(exists());
    }
    let handle = with_etcd_deadline(conf, "the handle lookup", async {
        ipam(conf)
            .await?
            .get_handle(&cid, &ifname)
            .await
            .map_err(CniError::from)
    })
    .await?;
    if handle.is_some() {
        return Err(exists());
    }
    warn!(host = %host.name, container_id = %cid, ifname = %ifname,
          "deleting a veth whose deletion an earlier DEL left pending");
    host_nl.del_link_index(host.index).await?;
    Ok(())
}

/// What the steps after the allocation work on.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    netns: &'a Netns,
    pod_nl: &'a Netlink,
    host_name: &'a str,
}

/// Everything after the allocation. Records each step in `done` as it succeeds.
async fn plumb(ctx: &Ctx<'_>, alloc: &Allocated, done: &mut Done) -> Result<AddOutcome, CniError> {
    let Ctx {
        env,
        conf,
        netns,
        pod_nl,
        host_name,
    } = *ctx;
    let host_nl = Netlink::connect()?;
    let (host_mac, pod_mac) = (random_mac(), random_mac());
    let opts = VethOptions {
        host_name,
        host_mac,
        peer_name: &env.ifname,
        peer_mac: pod_mac,
        peer_netns: netns,
        mtu: conf.mtu,
    };
    match host_nl.create_veth(&opts).await {
        Ok(()) => {}
        Err(NetError::Exists { .. }) => {
            // CNI_IFNAME is free in the netns (checked), so the host name is a leftover of an
            // earlier, interrupted ADD of this very attachment: replace it.
            warn!(host = %host_name, "replacing a leftover host veth");
            host_nl.del_link(host_name).await?;
            host_nl.create_veth(&opts).await?;
        }
        Err(e) => return Err(e.into()),
    }
    done.veth = true;

    let link = pod_nl.link(&env.ifname).await?.ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!("{} vanished from the netns after creation", env.ifname),
        )
    })?;
    pod_nl
        .add_addr(link.index, alloc.ip, alloc.prefix_len)
        .await?;

    let mut db = ovsdb(conf).await?;
    let ids = port_ids(&env.container_id, &env.ifname, &env.pod);
    let spec = PortSpec {
        bridge: &conf.bridge,
        name: host_name,
        tag: Some(alloc.vlan),
        external_ids: &ids,
    };
    let added = match db.add_port(&spec).await {
        Ok(a) => a,
        Err(OvsdbError::Transaction { error, .. }) if error.contains("constraint violation") => {
            // a port of an earlier, interrupted ADD of this attachment
            warn!(port = %host_name, "replacing a leftover OVS port");
            db.del_ports_by_ids(&attachment_ids(&env.container_id, &env.ifname))
                .await?;
            db.add_port(&spec).await?
        }
        Err(e) => {
            // Sent but unanswered: it may still commit, so the rollback must try to remove it.
            done.port = !matches!(e, OvsdbError::Connect { .. } | OvsdbError::Address { .. });
            return Err(e.into());
        }
    };
    done.port = true;

    // Before the pod end comes up: offload off on both ends (the userspace datapath does not
    // complete checksums a veth left to offload), and the kernel's gratuitous ARP on link up
    // (one trip to the netns thread for both).
    let t_setup = Instant::now();
    let tx_off = conf.tx_checksum_offload.turn_off(&added.datapath_type);
    if tx_off {
        ethtool::set_tx_checksum(host_name, false).map_err(|source| NetError::Ethtool {
            op: "turning TX checksum offload off",
            name: host_name.to_string(),
            netns: None,
            source,
        })?;
    }
    netns.setup_pod_link(
        &env.ifname,
        PodLinkSetup {
            arp_notify: conf.gratuitous_arp,
            tx_checksum_off: tx_off,
        },
    )?;
    debug!(datapath_type = %added.datapath_type, tx_checksum_off = tx_off,
           setup_ms = t_setup.elapsed().as_secs_f64() * 1e3, "pod link set up");

    // Up only once the port exists, so that the gratuitous ARP reaches the segment.
    pod_nl.set_up(link.index).await?;
    pod_nl.add_default_route(link.index, alloc.gateway).await?;
    Ok(AddOutcome {
        host_name: host_name.to_string(),
        host_mac: format_mac(&host_mac),
        ifname: env.ifname.clone(),
        pod_mac: format_mac(&pod_mac),
        sandbox: env.netns.clone().unwrap_or_default(),
        ip: alloc.ip,
        prefix_len: alloc.prefix_len,
        gateway: alloc.gateway,
        mtu: conf.mtu,
    })
}

/// Undoes `done` in reverse order; returns what could not be undone.
async fn rollback(
    env: &CniEnv,
    conf: &NetConf,
    ipam: &Ipam,
    host_name: &str,
    done: &Done,
) -> Vec<String> {
    let mut errors = Vec::new();
    if done.port {
        let r = async {
            let mut db = ovsdb(conf).await?;
            db.del_ports_by_ids(&attachment_ids(&env.container_id, &env.ifname))
                .await?;
            Ok::<(), CniError>(())
        }
        .await;
        if let Err(e) = r {
            errors.push(format!("removing port {host_name}: {e}"));
        }
    }
    let mut veth_gone = true;
    if done.veth {
        let r = async { Netlink::connect()?.del_link(host_name).await }.await;
        if let Err(e) = r {
            veth_gone = false;
            errors.push(format!("removing veth {host_name}: {e}"));
        }
    }
    // Never release an address whose interface may still be up.
    if done.allocated && veth_gone {
        let r = with_etcd_deadline(conf, "the release", async {
            ipam.release(&env.container_id, &env.ifname)
                .await
                .map_err(CniError::from)
        })
        .await;
        if let Err(e) = r {
            errors.push(format!("releasing the address: {e}"));
        }
    }
    errors
}
