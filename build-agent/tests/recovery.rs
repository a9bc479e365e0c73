//! Agents that die, restart or are stopped: what happens to their builds.

mod common;

use std::time::Duration;

use cellplane_build::{dispatch, BuildState};
use common::*;

const T: Duration = Duration::from_secs(90);

/// SIGKILL mid-build: the lease expires, recovery (as the control API runs it) marks the
/// running build failed naming the agent and the step, and the queued one runs elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_build_fails_and_its_queue_moves() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-kx", &storage);
    opts.capacity = 1;
    let mut x = AgentProc::spawn(opts);
    x.wait_ready(&env).await;

    let mut long = request(&repo.url());
    long.compile = Some(compile("echo sta''rted; sleep 300"));
    assert_eq!(env.submit(&task("kx-1", long)).await, "cpba-kx");
    assert_eq!(
        env.submit(&task("kx-2", request(&repo.url()))).await,
        "cpba-kx",
        "the only agent takes both; the second waits in its queue"
    );
    env.wait_status("kx-1", T, |s| s.running_step() == Some("compile"))
        .await;
    let st2 = env.status("kx-2").await.unwrap();
    assert_eq!(st2.state, BuildState::Queued, "capacity 1: {st2:#?}");

    let mut y = AgentProc::spawn(env.agent("cpba-ky", &storage));
    y.wait_ready(&env).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recovery = tokio::spawn(dispatch::run_recovery(
        env.etcd.clone(),
        Duration::from_millis(500),
        async move {
            let _ = stop_rx.await;
        },
    ));
    x.kill();

    let s1 = env.wait_end("kx-1", T).await;
    assert_state(&s1, BuildState::Failed);
    let e = s1.error.clone().unwrap();
    assert!(e.contains("cpba-kx") && e.contains("compile"), "{e}");
    assert_eq!(s1.failed_step.as_deref(), Some("compile"));
    let s2 = env.wait_end("kx-2", T).await;
    assert_state(&s2, BuildState::Succeeded);
    assert_eq!(s2.agent, "cpba-ky");
    assert!(
        s2.history
            .iter()
            .any(|h| h.contains("moved from agent cpba-kx")),
        "{s2:#?}"
    );
    assert!(y.log_file("kx-2").contains("succeeded"));
    let _ = stop_tx.send(());
    recovery.await.unwrap();
}

/// An agent killed and started again before anyone recovers its tasks: the build it was
/// running is failed with "restarted during step ...", the queued one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_fails_the_build_it_abandoned() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-rs", &storage);
    opts.capacity = 1;
    opts.lease_ttl_secs = 30;
    let mut x = AgentProc::spawn(opts);
    x.wait_ready(&env).await;
    let mut long = request(&repo.url());
    long.compile = Some(compile("sleep 300"));
    env.submit(&task("rs-1", long)).await;
    env.submit(&task("rs-2", request(&repo.url()))).await;
    env.wait_status("rs-1", T, |s| s.running_step() == Some("compile"))
        .await;
    x.kill();

    let mut opts = env.agent("cpba-rs", &storage);
    opts.capacity = 1;
    let mut again = AgentProc::spawn(opts);
    again.wait_ready(&env).await;
    let s1 = env.wait_end("rs-1", T).await;
    assert_state(&s1, BuildState::Failed);
    assert_eq!(
        s1.error.as_deref(),
        Some("agent cpba-rs restarted during step compile; the build was abandoned")
    );
    assert_eq!(s1.failed_step.as_deref(), Some("compile"));
    assert_eq!(step(&s1, "compile").ok, Some(false));
    let s2 = env.wait_end("rs-2", T).await;
    assert_state(&s2, BuildState::Succeeded);
    assert!(
        storage.podman_containers().trim().is_empty(),
        "the abandoned compile container was removed: {}",
        storage.podman_containers()
    );
}

/// SIGTERM: the running build is failed "shut down during step", the queued task stays in
/// etcd for recovery, the registration disappears at once (lease revoked), exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_builds_and_revokes_the_registration() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-st", &storage);
    opts.capacity = 1;
    opts.lease_ttl_secs = 30;
    let mut x = AgentProc::spawn(opts);
    x.wait_ready(&env).await;
    let mut long = request(&repo.url());
    long.compile = Some(compile("sleep 300"));
    env.submit(&task("st-1", long)).await;
    env.submit(&task("st-2", request(&repo.url()))).await;
    env.wait_status("st-1", T, |s| s.running_step() == Some("compile"))
        .await;
    let t0 = std::time::Instant::now();
    let status = x.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}: {}", x.stderr());
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let s1 = env.status("st-1").await.unwrap();
    assert_state(&s1, BuildState::Failed);
    assert_eq!(
        s1.error.as_deref(),
        Some("agent cpba-st shut down during step compile")
    );
    let key = env.etcd.keys().build_agent("cpba-st");
    assert!(env.etcd.get(&key).await.unwrap().is_none(), "lease revoked");
    assert!(
        env.task_exists("cpba-st", "st-2").await,
        "queued task left for recovery"
    );
    assert_eq!(env.status("st-2").await.unwrap().state, BuildState::Queued);
    assert!(storage.podman_containers().trim().is_empty());
}

/// The registration lease is lost (revoked behind the agent's back): the running build is
/// failed naming the lease and the step, and the agent exits non-zero for systemd to restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_fails_running_builds_and_exits_non_zero() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-ll", &storage);
    opts.lease_ttl_secs = 3;
    let mut x = AgentProc::spawn(opts);
    x.wait_ready(&env).await;
    let mut long = request(&repo.url());
    long.compile = Some(compile("sleep 300"));
    env.submit(&task("ll-1", long)).await;
    env.wait_status("ll-1", T, |s| s.running_step() == Some("compile"))
        .await;
    let reg = env
        .etcd
        .get(&env.etcd.keys().build_agent("cpba-ll"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(reg.lease, 0, "the registration is bound to a lease");
    env.etcd
        .client()
        .lease_revoke(reg.lease)
        .await
        .expect("revoke the agent's lease");
    let status = x.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        x.stderr().contains("registration lease lost"),
        "{}",
        x.stderr()
    );
    let s = env.wait_end("ll-1", T).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("agent cpba-ll lost its etcd registration (lease) during step compile")
    );
    assert!(storage.podman_containers().trim().is_empty());
}

/// `builder = "docker"` without a docker daemon: the agent refuses to start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_builder_without_a_daemon_is_refused() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let mut opts = env.agent("cpba-dk", &storage);
    opts.extra = "[image]\nbuilder = \"docker\"\ndocker = \"/nonexistent/docker\"\n".into();
    let mut x = AgentProc::spawn(opts);
    let status = x.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let err = x.stderr();
    assert!(
        err.contains("image.builder") && err.contains("docker daemon"),
        "{err}"
    );
}

/// etcd goes away for a few seconds mid-build (shorter than the lease): the build carries on
/// and its progress and end are recorded once etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_mid_build_is_survived() {
    if !require_tools() {
        return;
    }
    let mut env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-eo", &storage);
    opts.lease_ttl_secs = 15;
    let mut x = AgentProc::spawn(opts);
    x.wait_ready(&env).await;
    let mut req = request(&repo.url());
    req.compile = Some(compile("sleep 4; mkdir -p out"));
    env.submit(&task("eo-1", req)).await;
    env.wait_status("eo-1", T, |s| s.running_step() == Some("compile"))
        .await;
    env.etcd_server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.etcd_server.restart();
    let s = env.wait_end("eo-1", T).await;
    assert_state(&s, BuildState::Succeeded);
    assert!(s.steps.iter().all(|st| st.ok == Some(true)), "{s:#?}");
    // still registered, still taking builds
    env.submit(&task("eo-2", request(&repo.url()))).await;
    assert_state(&env.wait_end("eo-2", T).await, BuildState::Succeeded);
}
