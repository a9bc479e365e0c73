//! The etcd protocol between the control API and the build agents. Every step is one guarded
//! transaction, so several control-API replicas can run it at once and a crash at any point
//! leaves a consistent state:
//!
//! - **submit**: choose an agent ([`crate::rendezvous::choose`]) and write the task and a
//!   `queued` status together, only if the agent is still registered and the build id is new.
//! - **agent writes** ([`update_status`], [`finish`]): a status write succeeds only while the
//!   agent's task key exists. The task key is the fence: once recovery has moved or failed a
//!   build, the old agent's writes are refused and it stops.
//! - **recovery** ([`recover_agent`], [`run_recovery`]): when an agent's registration is gone
//!   (its lease expired), its queued tasks move to another live agent, its running builds are
//!   marked failed with the reason, and retried once on another agent if the task allows it.
//! - **cancel**: sets `cancel` on the task; the agent stops the build and writes `cancelled`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use cellplane_etcd::client::{guard, to_json};
use cellplane_etcd::{now_ms, watch_prefix, Etcd, EtcdError, EventKind, Kv, WatchUpdate};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use thiserror::Error;
use tracing::{info, warn};

use crate::rendezvous::choose;
use crate::types::{AgentRecord, BuildState, BuildStatus, BuildTask};

/// Attempts of a guarded write when another writer got in between.
const ATTEMPTS: usize = 5;

#[derive(Debug, Error)]
pub enum DispatchError {
    #[error("no build agent is registered")]
    NoAgents,
    #[error("build {0} not found")]
    NotFound(String),
    #[error("build {0} already exists")]
    AlreadyExists(String),
    #[error("build {build} has already ended ({state})")]
    Finished { build: String, state: &'static str },
    #[error("build {build}: {reason}")]
    Conflict { build: String, reason: String },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Live agents by name (registrations that fail to decode are skipped with a warning).
pub async fn live_agents(etcd: &Etcd) -> Result<BTreeMap<String, AgentRecord>, EtcdError> {
    let prefix = etcd.keys().build_agents();
    let (kvs, _) = etcd.list(&prefix).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let Some(name) = kv.key.strip_prefix(&prefix) else {
            continue;
        };
        match kv.json::<AgentRecord>() {
            Ok(rec) => {
                out.insert(name.to_string(), rec);
            }
            Err(e) => warn!(key = %kv.key, error = %e, "skipping an unreadable agent registration"),
        }
    }
    Ok(out)
}

/// Every task key, by agent: `agent -> [(build, kv)]`.
async fn all_tasks(etcd: &Etcd) -> Result<BTreeMap<String, Vec<(String, Kv)>>, EtcdError> {
    let prefix = etcd.keys().all_build_tasks();
    let (kvs, _) = etcd.list(&prefix).await?;
    let mut out: BTreeMap<String, Vec<(String, Kv)>> = BTreeMap::new();
    for kv in kvs {
        if let Some((agent, build)) = kv.key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) {
            out.entry(agent.to_string())
                .or_default()
                .push((build.to_string(), kv.clone()));
        }
    }
    Ok(out)
}

/// Chooses an agent for `repo` among live agents not in `exclude`, by rendezvous hashing with
/// each agent's current number of tasks as its load.
async fn pick_agent(
    etcd: &Etcd,
    repo: &str,
    exclude: &str,
) -> Result<Option<String>, DispatchError> {
    let agents = live_agents(etcd).await?;
    let tasks = all_tasks(etcd).await?;
    let candidates: Vec<(&str, u32, u32)> = agents
        .iter()
        .filter(|(name, _)| name.as_str() != exclude)
        .map(|(name, rec)| {
            let load = tasks.get(name).map_or(0, |t| t.len() as u32);
            (name.as_str(), rec.capacity.max(1), load)
        })
        .collect();
    Ok(choose(repo, &candidates).map(str::to_string))
}

fn agent_alive(etcd: &Etcd, agent: &str) -> Compare {
    Compare::version(etcd.keys().build_agent(agent), CompareOp::Greater, 0)
}

fn agent_gone(etcd: &Etcd, agent: &str) -> Compare {
    Compare::version(etcd.keys().build_agent(agent), CompareOp::Equal, 0)
}

/// Writes a new build's task and `queued` status. Returns the chosen agent.
pub async fn submit(etcd: &Etcd, task: &BuildTask) -> Result<String, DispatchError> {
    let keys = etcd.keys();
    let status_key = keys.build_status(&task.build);
    for _ in 0..ATTEMPTS {
        let agent = pick_agent(etcd, &task.request.repo, "")
            .await?
            .ok_or(DispatchError::NoAgents)?;
        let status = BuildStatus::queued(task, &agent);
        let txn = Txn::new()
            .when([
                agent_alive(etcd, &agent),
                Compare::version(status_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(keys.build_task(&agent, &task.build), to_json(task), None),
                TxnOp::put(status_key.clone(), to_json(&status), None),
            ]);
        if etcd.txn(txn).await?.succeeded() {
            info!(build = %task.build, %agent, repo = %status.repo, "build dispatched");
            return Ok(agent);
        }
        if etcd.get(&status_key).await?.is_some() {
            return Err(DispatchError::AlreadyExists(task.build.clone()));
        }
        // the agent vanished between the read and the write: choose again
    }
    Err(DispatchError::Conflict {
        build: task.build.clone(),
        reason: "agents kept changing while dispatching; try again".into(),
    })
}

/// A build's status and its mod_revision.
pub async fn get_status(etcd: &Etcd, build: &str) -> Result<Option<(BuildStatus, i64)>, EtcdError> {
    match etcd.get(&etcd.keys().build_status(build)).await? {
        Some(kv) => Ok(Some((kv.json()?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Asks the build's agent to stop it (or never start it). Returns the status as it was.
pub async fn cancel(etcd: &Etcd, build: &str) -> Result<BuildStatus, DispatchError> {
    for _ in 0..ATTEMPTS {
        let (status, _) = get_status(etcd, build)
            .await?
            .ok_or_else(|| DispatchError::NotFound(build.to_string()))?;
        if status.state.is_terminal() {
            return Err(DispatchError::Finished {
                build: build.to_string(),
                state: status.state.as_str(),
            });
        }
        let task_key = etcd.keys().build_task(&status.agent, build);
        let Some(kv) = etcd.get(&task_key).await? else {
            continue; // moved or finished meanwhile: read again
        };
        let mut task: BuildTask = kv.json()?;
        if task.cancel {
            return Ok(status);
        }
        task.cancel = true;
        if etcd.cas(&task_key, kv.mod_revision, to_json(&task)).await? {
            info!(%build, agent = %status.agent, "build cancel requested");
            return Ok(status);
        }
    }
    Err(DispatchError::Conflict {
        build: build.to_string(),
        reason: "the build kept changing while cancelling; try again".into(),
    })
}

/// Agent side: writes `status` while `agent` still holds the task. `Ok(false)` when the task
/// is no longer this agent's (recovered elsewhere, or removed): the agent must stop the build.
pub async fn update_status(
    etcd: &Etcd,
    agent: &str,
    status: &BuildStatus,
) -> Result<bool, EtcdError> {
    let keys = etcd.keys();
    let task_key = keys.build_task(agent, &status.build);
    let txn = Txn::new()
        .when([Compare::version(task_key, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(
            keys.build_status(&status.build),
            to_json(status),
            None,
        )]);
    Ok(etcd.txn(txn).await?.succeeded())
}

/// Agent side: writes the final status and removes the task, in one transaction, while the
/// agent still holds the task. `Ok(false)` when it no longer does.
pub async fn finish(etcd: &Etcd, agent: &str, status: &BuildStatus) -> Result<bool, EtcdError> {
    let keys = etcd.keys();
    let task_key = keys.build_task(agent, &status.build);
    let txn = Txn::new()
        .when([Compare::version(task_key.clone(), CompareOp::Greater, 0)])
        .and_then([
            TxnOp::put(keys.build_status(&status.build), to_json(status), None),
            TxnOp::delete(task_key, None),
        ]);
    Ok(etcd.txn(txn).await?.succeeded())
}

/// What recovery did with one task of a lost agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// A queued task moved to another agent.
    Moved { build: String, to: String },
    /// A running build was marked failed.
    Failed { build: String, reason: String },
    /// A running build was marked failed and queued again on another agent (attempt 1).
    Retried {
        build: String,
        reason: String,
        to: String,
    },
    /// A leftover task of a build that had already ended was removed.
    Removed { build: String },
    /// Nothing could be done now (no other agent); tried again at the next scan.
    Waiting { build: String },
}

/// Handles the tasks of `agent`, whose registration is gone. Does nothing while it is
/// registered (a restarted agent handles its own tasks).
pub async fn recover_agent(etcd: &Etcd, agent: &str) -> Result<Vec<Recovery>, DispatchError> {
    let keys = etcd.keys();
    if etcd.get(&keys.build_agent(agent)).await?.is_some() {
        return Ok(Vec::new());
    }
    let (kvs, _) = etcd.list(&keys.build_tasks(agent)).await?;
    let mut done = Vec::new();
    for kv in kvs {
        let Some(build) = kv.key.strip_prefix(&keys.build_tasks(agent)) else {
            continue;
        };
        match recover_task(etcd, agent, build, &kv).await {
            Ok(Some(r)) => {
                info!(agent, ?r, "recovered a task of a lost build agent");
                done.push(r);
            }
            Ok(None) => {} // someone else (another replica, or the agent) got there first
            Err(e) => warn!(agent, build, error = %e, "could not recover a task; will retry"),
        }
    }
    Ok(done)
}

async fn recover_task(
    etcd: &Etcd,
    agent: &str,
    build: &str,
    task_kv: &Kv,
) -> Result<Option<Recovery>, DispatchError> {
    let keys = etcd.keys();
    let task: BuildTask = task_kv.json()?;
    let status_key = keys.build_status(build);
    let status_kv = etcd.get(&status_key).await?;
    let status: Option<BuildStatus> = status_kv.as_ref().map(|kv| kv.json()).transpose()?;
    let base = [
        guard(&task_kv.key, task_kv.mod_revision),
        guard(
            &status_key,
            status_kv.as_ref().map_or(0, |kv| kv.mod_revision),
        ),
        agent_gone(etcd, agent),
    ];
    let Some(mut status) = status.filter(|s| !s.state.is_terminal() && s.agent == agent) else {
        // ended (or never had a status): only the task key is left over
        let txn = Txn::new()
            .when(base)
            .and_then([TxnOp::delete(task_kv.key.clone(), None)]);
        return Ok(etcd.txn(txn).await?.succeeded().then(|| Recovery::Removed {
            build: build.to_string(),
        }));
    };
    let now = now_ms();
    if task.cancel {
        status.state = BuildState::Cancelled;
        status.error = Some(format!(
            "cancelled; agent {agent} was lost (its lease expired) before confirming"
        ));
        status.finished_at_ms = Some(now);
        let txn = Txn::new().when(base).and_then([
            TxnOp::delete(task_kv.key.clone(), None),
            TxnOp::put(status_key, to_json(&status), None),
        ]);
        return Ok(etcd.txn(txn).await?.succeeded().then(|| Recovery::Failed {
            build: build.to_string(),
            reason: "cancelled".into(),
        }));
    }
    let target = pick_agent(etcd, &task.request.repo, agent).await?;
    match status.state {
        BuildState::Queued => {
            let Some(to) = target else {
                return Ok(Some(Recovery::Waiting {
                    build: build.to_string(),
                }));
            };
            status.agent = to.clone();
            status.history.push(format!(
                "moved from agent {agent} (its lease expired) to {to} before starting"
            ));
            let txn = Txn::new()
                .when([
                    base[0].clone(),
                    base[1].clone(),
                    base[2].clone(),
                    agent_alive(etcd, &to),
                ])
                .and_then([
                    TxnOp::delete(task_kv.key.clone(), None),
                    TxnOp::put(keys.build_task(&to, build), to_json(&task), None),
                    TxnOp::put(status_key, to_json(&status), None),
                ]);
            Ok(etcd.txn(txn).await?.succeeded().then(|| Recovery::Moved {
                build: build.to_string(),
                to,
            }))
        }
        _ => {
            let step = status.running_step().unwrap_or("start").to_string();
            let reason = format!("agent {agent} was lost (its lease expired) during step {step}");
            for s in status.steps.iter_mut().filter(|s| s.duration_ms.is_none()) {
                s.duration_ms = Some(now.saturating_sub(s.started_at_ms));
                s.ok = Some(false);
                s.message = Some(reason.clone());
            }
            let retry_to = target.filter(|_| task.request.retry && task.attempt == 0);
            let mut ops = vec![TxnOp::delete(task_kv.key.clone(), None)];
            let mut compares = base.to_vec();
            let outcome = if let Some(to) = retry_to {
                let mut again = task.clone();
                again.attempt += 1;
                again.cancel = false;
                let mut queued = BuildStatus::queued(&again, &to);
                queued.history = status.history.clone();
                queued.history.push(format!(
                    "attempt {} failed: {reason}; retrying on agent {to}",
                    task.attempt
                ));
                ops.push(TxnOp::put(
                    keys.build_task(&to, build),
                    to_json(&again),
                    None,
                ));
                ops.push(TxnOp::put(status_key, to_json(&queued), None));
                compares.push(agent_alive(etcd, &to));
                Recovery::Retried {
                    build: build.to_string(),
                    reason,
                    to,
                }
            } else {
                status.state = BuildState::Failed;
                status.error = Some(reason.clone());
                status.failed_step = Some(step);
                status.finished_at_ms = Some(now);
                ops.push(TxnOp::put(status_key, to_json(&status), None));
                Recovery::Failed {
                    build: build.to_string(),
                    reason,
                }
            };
            let txn = Txn::new().when(compares).and_then(ops);
            Ok(etcd.txn(txn).await?.succeeded().then_some(outcome))
        }
    }
}

/// Deletes the status records of builds that ended before `cutoff_ms` (Unix ms), so that
/// `builds/status/` does not grow without bound. Each delete is guarded by the record's
/// revision; records of queued or running builds are never touched. Returns how many went.
pub async fn prune_finished(etcd: &Etcd, cutoff_ms: u64) -> Result<usize, EtcdError> {
    let (kvs, _) = etcd.list(&etcd.keys().all_build_status()).await?;
    let mut pruned = 0;
    for kv in kvs {
        let Ok(status) = kv.json::<BuildStatus>() else {
            continue; // not ours to judge; left for an operator
        };
        let ended_before = status.finished_at_ms.is_some_and(|t| t < cutoff_ms);
        if status.state.is_terminal()
            && ended_before
            && etcd.delete_if(&kv.key, kv.mod_revision).await?
        {
            pruned += 1;
        }
    }
    if pruned > 0 {
        info!(
            pruned,
            "pruned the status of builds that ended before the retention period"
        );
    }
    Ok(pruned)
}

/// Agents that still have tasks but no registration.
pub async fn orphaned_agents(etcd: &Etcd) -> Result<Vec<String>, EtcdError> {
    let live: BTreeSet<String> = live_agents(etcd).await?.into_keys().collect();
    Ok(all_tasks(etcd)
        .await?
        .into_keys()
        .filter(|a| !live.contains(a))
        .collect())
}

/// Recovers the tasks of agents whose registration disappears, until `shutdown` resolves:
/// on each deletion under `builds/agents/`, and every `rescan` (which also catches what
/// happened while nobody was watching, and tasks that had to wait for an agent).
pub async fn run_recovery(etcd: Etcd, rescan: Duration, shutdown: impl Future<Output = ()>) {
    let mut watch = watch_prefix(etcd.clone(), etcd.keys().build_agents(), None);
    let mut tick = tokio::time::interval(rescan);
    tokio::pin!(shutdown);
    let mut last_error: HashMap<String, String> = HashMap::new();
    loop {
        let lost: Vec<String> = tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => match orphaned_agents(&etcd).await {
                Ok(v) => v,
                Err(e) => { warn!(error = %e, "build recovery scan failed"); continue; }
            },
            u = watch.next() => match u {
                Some(WatchUpdate::Events { events, .. }) => {
                    let prefix = etcd.keys().build_agents();
                    events
                        .into_iter()
                        .filter(|e| e.kind == EventKind::Delete)
                        .filter_map(|e| e.kv.key.strip_prefix(&prefix).map(str::to_string))
                        .collect()
                }
                Some(WatchUpdate::Resync { .. }) => match orphaned_agents(&etcd).await {
                    Ok(v) => v,
                    Err(e) => { warn!(error = %e, "build recovery scan failed"); continue; }
                },
                None => return,
            },
        };
        for agent in lost {
            match recover_agent(&etcd, &agent).await {
                Ok(_) => {
                    last_error.remove(&agent);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.get(&agent) != Some(&msg) {
                        warn!(%agent, error = %msg, "build recovery failed; will retry");
                    }
                    last_error.insert(agent, msg);
                }
            }
        }
    }
}
