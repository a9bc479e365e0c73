//! STATUS: can this node serve an ADD? etcd and OVSDB reachable, the bridge present, and a
//! configured pool with room.

use tracing::instrument;

use super::{ipam, ovsdb, with_etcd_deadline};
use crate::config::NetConf;
use crate::error::{code, CniError};

#[instrument(skip_all)]
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let room = with_etcd_deadline(conf, "the pool room check", async {
        Ok(ipam(conf).await?.pool_with_room(&conf.pools).await)
    })
    .await
    .map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("etcd not available: {}", e.msg),
        )
    })?;
    // etcd first: a missing pool is reported after the OVSDB checks, an unreachable etcd now
    let room = match room {
        Err(e) if !matches!(e, cellplane_etcd::IpamError::NotFound { .. }) => {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("etcd not available: {e}"),
            ))
        }
        r => r,
    };

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

    match room {
        Ok(Some(_)) => Ok(()),
        Ok(None) if conf.pools.is_empty() => Err(CniError::new(
            code::NOT_AVAILABLE_RESOURCES,
            "no active pool with room",
        )),
        Ok(None) => Err(CniError::new(
            code::NOT_AVAILABLE_RESOURCES,
            format!("no pool with room among [{}]", conf.pools.join(", ")),
        )),
        Err(cellplane_etcd::IpamError::NotFound { what, name }) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("{what} {name} does not exist"),
        )),
        Err(e) => Err(CniError::new(code::NOT_AVAILABLE, e.to_string())),
    }
}
