use anyhow::{bail, Result};
use cellplane_core::validation::validate_name;
use cellplane_etcd::{now_ms, GuardedRelease, Ipam};
use tracing::info;

use crate::cli::NodeCmd;
use crate::config::Settings;
use crate::output::{print, Table};
use crate::sources;

const ATTEMPTS: usize = 5;

pub async fn run(s: &Settings, ipam: &Ipam, cmd: NodeCmd) -> Result<u8> {
    let NodeCmd::Remove {
        name,
        force,
        dry_run,
    } = cmd;
    validate_name("node name", &name)?;
    if s.kube_enabled {
        let client = sources::kube_client(s).await?;
        let records = sources::read_kube(&client, "(configured)").await?;
        if records.view()?.nodes.contains(name.as_str()) && !force {
            bail!("node {name} is still in the Kubernetes API; remove it there first, or use --force if it is really gone");
        }
    } else if !force {
        bail!("cannot tell whether node {name} is gone without the Kubernetes API; use --force if it is");
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    // its addresses, each guarded by the block as read (re-read on a lost race)
    for _ in 0..ATTEMPTS {
        let mut conflicts = 0;
        for b in ipam.blocks(None).await? {
            for (o, a) in b.record.allocations.iter().filter(|(_, a)| a.node == name) {
                let ip = b.record.addr(*o);
                let g = GuardedRelease {
                    pool: b.pool.clone(),
                    block: b.id.clone(),
                    ip,
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                    seen_mod_revision: b.mod_revision,
                };
                if dry_run {
                    rows.push((
                        ip.to_string(),
                        format!("would release ({}/{})", a.container_id, a.ifname),
                    ));
                    continue;
                }
                match ipam.release_guarded(&g).await {
                    Ok(_) => {
                        info!(node = %name, %ip, container_id = %a.container_id, at_ms = now_ms(), "released for node remove");
                        rows.push((
                            ip.to_string(),
                            format!("released ({}/{})", a.container_id, a.ifname),
                        ));
                    }
                    Err(cellplane_etcd::IpamError::Conflict { .. }) => conflicts += 1,
                    Err(e) => return Err(e.into()),
                }
                break; // the block changed: read it again
            }
        }
        if dry_run
            || conflicts == 0
                && ipam
                    .blocks(None)
                    .await?
                    .iter()
                    .all(|b| b.record.allocations.values().all(|a| a.node != name))
        {
            break;
        }
    }
    // its blocks, given back to the pool when empty
    for b in ipam
        .blocks(None)
        .await?
        .into_iter()
        .filter(|b| b.record.node == name)
    {
        let what = format!("block {} ({})", b.record.cidr, b.pool);
        if !b.record.allocations.is_empty() {
            rows.push((
                what,
                format!(
                    "kept: holds {} addresses of other nodes",
                    b.record.allocations.len()
                ),
            ));
        } else if dry_run {
            rows.push((what, "would give back to the pool".into()));
        } else {
            ipam.release_block(&b).await?;
            rows.push((what, "given back to the pool".into()));
        }
    }
    // stale affinity keys left without a block
    if !dry_run {
        let keys = ipam.etcd().keys();
        let (aff, _) = ipam.etcd().list(&keys.node(&name)).await?;
        for kv in aff {
            if let Some((_, pool, id)) = keys.parse_affinity(&kv.key) {
                if ipam
                    .get_block(&pool, &id)
                    .await?
                    .is_none_or(|b| b.record.node != name)
                {
                    ipam.etcd().delete_if(&kv.key, kv.mod_revision).await?;
                }
            }
        }
    }
    let v: Vec<_> = rows
        .iter()
        .map(|(w, r)| serde_json::json!({"what": w, "result": r}))
        .collect();
    print(s.output, &v, || {
        let mut t = Table::new(&["WHAT", "RESULT"]);
        for (w, r) in &rows {
            t.row(vec![w.clone(), r.clone()]);
        }
        format!("{}node {name}: {} entries\n", t.render(), rows.len())
    })?;
    Ok(0)
}
