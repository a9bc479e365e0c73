//! A lease kept alive in the background (a keep-alive every TTL/3), reporting when it is lost.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::client::Etcd;
use crate::error::EtcdError;

pub struct LeaseKeeper {
    id: i64,
    ttl: i64,
    etcd: Etcd,
    lost: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl_secs` (at least 2) and keeps it alive until dropped or revoked.
    pub async fn grant(etcd: &Etcd, ttl_secs: i64) -> Result<LeaseKeeper, EtcdError> {
        let ttl = ttl_secs.max(2);
        let resp = etcd
            .call("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        let id = resp.id();
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(keep_alive(etcd.clone(), id, ttl, tx));
        Ok(LeaseKeeper {
            id,
            ttl,
            etcd: etcd.clone(),
            lost: rx,
            task,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Resolves when the lease is lost, with the reason. Keys attached to it are gone then.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "lease keeper stopped".into(),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Stops the keep-alive and revokes the lease, deleting every key attached to it.
    pub async fn revoke(self) -> Result<(), EtcdError> {
        self.task.abort();
        let id = self.id;
        self.etcd
            .call(
                "lease revoke",
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await?;
        Ok(())
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(etcd: Etcd, id: i64, ttl: i64, lost: watch::Sender<Option<String>>) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    let ttl_d = Duration::from_secs(ttl as u64);
    let mut last_ok = Instant::now();
    let mut stream = None;
    loop {
        if last_ok.elapsed() >= ttl_d {
            let reason = format!("no keep-alive answer for {ttl} s; lease {id:x} has expired");
            warn!(lease = id, "{reason}");
            let _ = lost.send(Some(reason));
            return;
        }
        if stream.is_none() {
            match etcd
                .call("lease keep-alive", |mut c| async move {
                    c.lease_keep_alive(id).await
                })
                .await
            {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    debug!(lease = id, error = %e, "keep-alive stream not open yet");
                    tokio::time::sleep(period.min(Duration::from_millis(500))).await;
                    continue;
                }
            }
        }
        let Some((keeper, responses)) = stream.as_mut() else {
            continue;
        };
        let answer = async {
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout(period, answer).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                last_ok = Instant::now();
                tokio::time::sleep(period).await;
            }
            Ok(Ok(Some(_))) => {
                let reason = format!("etcd says lease {id:x} has expired");
                warn!(lease = id, "{reason}");
                let _ = lost.send(Some(reason));
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                debug!(lease = id, "keep-alive stream broke; reopening");
                stream = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
