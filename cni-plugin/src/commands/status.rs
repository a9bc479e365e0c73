//! STATUS: can this node serve an ADD? etcd and OVSDB reachable, the bridge present, and a
//! configured pool with room.

use tracing::instrument;

use super::{ipam, ovsdb, with_etcd_deadline};
use crate::config::NetConf;
use crate::error::{code, CniError};

#[instrument(skip_all)]
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let usage = with_etcd_deadline(conf, "the usage read", async {
        Ok(ipam(conf).await?.usage().await?)
    })
    .await
    .map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("etcd not available: {}", e.msg),
        )
    })?;

    let mut db = ovsdb(conf).await.map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("OVSDB not available: {}", e.msg),
        )
    })?;
    match db.bridge_exists(&conf.bridge).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("bridge {} does not exist in OVSDB", conf.bridge),
            ))
        }
        Err(e) => {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("OVSDB not available: {e}"),
            ))
        }
    }

    let candidates: Vec<_> = usage
        .pools
        .iter()
        .filter(|p| conf.pools.is_empty() || conf.pools.contains(&p.pool))
        .collect();
    if let Some(missing) = conf
        .pools
        .iter()
        .find(|n| !usage.pools.iter().any(|p| &p.pool == *n))
    {
        if candidates.is_empty() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("pool {missing} does not exist"),
            ));
        }
    }
    let room = candidates.iter().any(|p| {
        p.state == cellplane_core::PoolState::Active && p.counts.free + p.counts.cooling > 0
    });
    if !room {
        let names: Vec<&str> = candidates.iter().map(|p| p.pool.as_str()).collect();
        return Err(CniError::new(
            code::NOT_AVAILABLE_RESOURCES,
            format!("no pool with room among [{}]", names.join(", ")),
        ));
    }
    Ok(())
}
