//! A prefix watch that survives disconnects and compaction.
//!
//! A background task lists the prefix (when asked to, or after a compaction), then watches from
//! the revision after the last one it delivered. A broken stream is reopened from
//! `revision + 1` after a jittered backoff, so no event is lost or repeated; a start revision
//! that etcd has compacted away turns into a fresh list (`Resync`). Consumers treat every update
//! as a trigger and reconcile from what they read.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::client::{Etcd, Kv};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: Kv,
}

#[derive(Debug, Clone)]
pub enum WatchUpdate {
    /// Changes since the last update; `revision` is the store revision they bring us to.
    Events {
        events: Vec<WatchEvent>,
        revision: i64,
    },
    /// The whole prefix as of `revision` (at start, or after the watch fell behind compaction).
    Resync { kvs: Vec<Kv>, revision: i64 },
}

impl WatchUpdate {
    pub fn revision(&self) -> i64 {
        match self {
            WatchUpdate::Events { revision, .. } | WatchUpdate::Resync { revision, .. } => {
                *revision
            }
        }
    }
}

pub struct WatchStream {
    rx: mpsc::Receiver<WatchUpdate>,
    task: JoinHandle<()>,
}

impl WatchStream {
    pub async fn next(&mut self) -> Option<WatchUpdate> {
        self.rx.recv().await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches every key under `prefix`. With `after_revision: None` the stream starts with a
/// `Resync`; with `Some(rev)` it delivers the changes made after `rev`.
pub fn watch_prefix(etcd: Etcd, prefix: String, after_revision: Option<i64>) -> WatchStream {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(run(etcd, prefix, after_revision, tx));
    WatchStream { rx, task }
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(5); // 100 ms .. 3.2 s
    Duration::from_millis(base + rand::rng().random_range(0..=base / 2))
}

async fn run(etcd: Etcd, prefix: String, after: Option<i64>, tx: mpsc::Sender<WatchUpdate>) {
    let mut last = after.unwrap_or(0);
    let mut need_list = after.is_none();
    let mut failures = 0u32;
    loop {
        if need_list {
            match etcd.list(&prefix).await {
                Ok((kvs, revision)) => {
                    last = revision;
                    need_list = false;
                    failures = 0;
                    if tx
                        .send(WatchUpdate::Resync { kvs, revision })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    debug!(prefix, error = %e, "list failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    continue;
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1)
            .with_progress_notify();
        let key = prefix.clone();
        let mut stream = match etcd
            .call(
                "watch",
                |mut c| async move { c.watch(key, Some(opts)).await },
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                debug!(prefix, error = %e, "watch could not be opened; retrying");
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    failures = 0;
                    if resp.compact_revision() > 0 || resp.canceled() {
                        info!(
                            prefix,
                            from = last + 1,
                            compacted = resp.compact_revision(),
                            reason = resp.cancel_reason(),
                            "watch start revision is compacted; re-listing"
                        );
                        need_list = true;
                        break;
                    }
                    let revision = resp.header().map(|h| h.revision()).unwrap_or(last);
                    if resp.events().is_empty() {
                        // progress notification or creation: everything up to `revision` seen
                        last = last.max(revision);
                        continue;
                    }
                    let events: Vec<WatchEvent> = resp
                        .events()
                        .iter()
                        .filter_map(|ev| {
                            let kind = match ev.event_type() {
                                EventType::Put => EventKind::Put,
                                EventType::Delete => EventKind::Delete,
                            };
                            ev.kv().map(|kv| WatchEvent {
                                kind,
                                kv: Kv::from(kv),
                            })
                        })
                        .collect();
                    let revision = events
                        .iter()
                        .map(|e| e.kv.mod_revision)
                        .max()
                        .unwrap_or(revision)
                        .max(last);
                    last = revision;
                    if tx
                        .send(WatchUpdate::Events { events, revision })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    debug!(
                        prefix,
                        resume_from = last + 1,
                        "watch stream ended; resuming"
                    );
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    break;
                }
            }
        }
    }
}
