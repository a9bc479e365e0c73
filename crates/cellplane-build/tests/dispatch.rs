//! The dispatch protocol against a real etcd: submit, rendezvous, fencing, cancel, and the
//! recovery of a lost agent's tasks.

use std::time::Duration;

use cellplane_build::dispatch::{self, Recovery};
use cellplane_build::{AgentRecord, BuildRequest, BuildState, BuildTask, StepRecord};
use cellplane_etcd::client::to_json;
use cellplane_etcd::{Etcd, EtcdConfig, LeaseKeeper};
use cellplane_testkit::etcd::EtcdServer;

async fn connect(server: &EtcdServer) -> Etcd {
    Etcd::connect(&EtcdConfig {
        endpoints: vec![server.endpoint()],
        prefix: format!("/{}", cellplane_testkit::unique("bt")),
        ..EtcdConfig::default()
    })
    .await
    .unwrap()
}

async fn register(etcd: &Etcd, name: &str, capacity: u32) -> LeaseKeeper {
    let lease = LeaseKeeper::grant(etcd, 2).await.unwrap();
    let rec = AgentRecord {
        host: "127.0.0.1".into(),
        capacity,
        labels: Default::default(),
        endpoint: "http://127.0.0.1:1".into(),
        version: "test".into(),
        started_at_ms: 0,
    };
    etcd.put_with_lease(&etcd.keys().build_agent(name), to_json(&rec), lease.id())
        .await
        .unwrap();
    lease
}

fn task(build: &str, repo: &str, retry: bool) -> BuildTask {
    BuildTask {
        build: build.into(),
        request: BuildRequest {
            repo: repo.into(),
            git_ref: "main".into(),
            dockerfile: "Dockerfile".into(),
            context: ".".into(),
            image: "team/app".into(),
            tag: None,
            compile: None,
            retry,
            step_timeout_secs: None,
        },
        attempt: 0,
        submitted_at_ms: 1,
        submitted_by: "test".into(),
        cancel: false,
    }
}

async fn status(etcd: &Etcd, build: &str) -> cellplane_build::BuildStatus {
    dispatch::get_status(etcd, build).await.unwrap().unwrap().0
}

#[tokio::test]
async fn submit_is_sticky_fenced_and_recovered() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;

    let err = dispatch::submit(&etcd, &task("b0", "file:///r0", false))
        .await
        .unwrap_err();
    assert!(matches!(err, dispatch::DispatchError::NoAgents), "{err}");

    let _a1 = register(&etcd, "a1", 8).await;
    let a2 = register(&etcd, "a2", 8).await;

    // the same repository always lands on the same agent; different ones spread
    let first = dispatch::submit(&etcd, &task("b1", "file:///repo/app.git", false))
        .await
        .unwrap();
    for i in 2..6 {
        let to = dispatch::submit(
            &etcd,
            &task(&format!("b{i}"), "file:///repo/app.git", false),
        )
        .await
        .unwrap();
        assert_eq!(to, first);
    }
    let dup = dispatch::submit(&etcd, &task("b1", "file:///repo/app.git", false)).await;
    assert!(matches!(
        dup,
        Err(dispatch::DispatchError::AlreadyExists(_))
    ));

    // fencing: the agent can write while it holds the task, not after it is gone
    let mut st = status(&etcd, "b1").await;
    assert_eq!(st.state, BuildState::Queued);
    st.state = BuildState::Running;
    assert!(dispatch::update_status(&etcd, &first, &st).await.unwrap());
    assert!(!dispatch::update_status(&etcd, "someone-else", &st)
        .await
        .unwrap());
    st.state = BuildState::Succeeded;
    assert!(dispatch::finish(&etcd, &first, &st).await.unwrap());
    assert!(!dispatch::update_status(&etcd, &first, &st).await.unwrap());
    assert!(matches!(
        dispatch::cancel(&etcd, "b1").await,
        Err(dispatch::DispatchError::Finished { .. })
    ));

    // cancel marks the task
    dispatch::cancel(&etcd, "b2").await.unwrap();
    let kv = etcd
        .get(&etcd.keys().build_task(&first, "b2"))
        .await
        .unwrap()
        .unwrap();
    assert!(kv.json::<BuildTask>().unwrap().cancel);

    // put everything on a2 to test recovery: b10 queued, b11 running, b12 running + retry
    let rec_repo = (0..100)
        .map(|i| format!("file:///r{i}"))
        .find(|r| cellplane_build::rendezvous::rank(r, ["a1", "a2"])[0] == "a2")
        .unwrap();
    for (b, retry) in [("b10", false), ("b11", false), ("b12", true)] {
        assert_eq!(
            dispatch::submit(&etcd, &task(b, &rec_repo, retry))
                .await
                .unwrap(),
            "a2"
        );
    }
    for b in ["b11", "b12"] {
        let mut st = status(&etcd, b).await;
        st.state = BuildState::Running;
        st.steps.push(StepRecord {
            name: "compile".into(),
            started_at_ms: 5,
            duration_ms: None,
            ok: None,
            message: None,
        });
        assert!(dispatch::update_status(&etcd, "a2", &st).await.unwrap());
    }
    // while a2 is registered, recovery leaves it alone
    assert!(dispatch::recover_agent(&etcd, "a2")
        .await
        .unwrap()
        .is_empty());

    // a2 dies: its lease expires
    drop(a2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while etcd
        .get(&etcd.keys().build_agent("a2"))
        .await
        .unwrap()
        .is_some()
    {
        assert!(std::time::Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dispatch::orphaned_agents(&etcd).await.unwrap(), vec!["a2"]);
    let mut done = dispatch::recover_agent(&etcd, "a2").await.unwrap();
    done.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done.contains(&Recovery::Moved {
        build: "b10".into(),
        to: "a1".into()
    }));
    let st10 = status(&etcd, "b10").await;
    assert_eq!(
        (st10.state, st10.agent.as_str()),
        (BuildState::Queued, "a1")
    );
    assert!(etcd
        .get(&etcd.keys().build_task("a1", "b10"))
        .await
        .unwrap()
        .is_some());

    let st11 = status(&etcd, "b11").await;
    assert_eq!(st11.state, BuildState::Failed);
    assert_eq!(st11.failed_step.as_deref(), Some("compile"));
    let err = st11.error.unwrap();
    assert!(
        err.contains("agent a2 was lost") && err.contains("compile"),
        "{err}"
    );
    assert_eq!(st11.steps[0].ok, Some(false));

    let st12 = status(&etcd, "b12").await;
    assert_eq!(
        (st12.state, st12.attempt, st12.agent.as_str()),
        (BuildState::Queued, 1, "a1")
    );
    assert!(
        st12.history[0].contains("agent a2 was lost"),
        "{:?}",
        st12.history
    );
    let t12: BuildTask = etcd
        .get(&etcd.keys().build_task("a1", "b12"))
        .await
        .unwrap()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(t12.attempt, 1);

    // nothing left under a2, and a second recovery (another replica) does nothing
    assert!(etcd
        .list(&etcd.keys().build_tasks("a2"))
        .await
        .unwrap()
        .0
        .is_empty());
    assert!(dispatch::recover_agent(&etcd, "a2")
        .await
        .unwrap()
        .is_empty());
    assert!(dispatch::orphaned_agents(&etcd).await.unwrap().is_empty());
}

#[tokio::test]
async fn recovery_loop_reacts_to_an_expired_lease() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;
    let _a1 = register(&etcd, "a1", 1).await;
    let a2 = register(&etcd, "a2", 1).await;
    // a1 is full, so everything else goes to a2
    let mut n = 0;
    let mut on_a2 = Vec::new();
    while on_a2.len() < 2 {
        let b = format!("q{n}");
        let to = dispatch::submit(&etcd, &task(&b, &format!("file:///q{n}"), false))
            .await
            .unwrap();
        if to == "a2" {
            on_a2.push(b);
        }
        n += 1;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loop_task = tokio::spawn(dispatch::run_recovery(
        etcd.clone(),
        Duration::from_secs(30),
        async move {
            let _ = stop_rx.await;
        },
    ));
    drop(a2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for b in &on_a2 {
        loop {
            let st = status(&etcd, b).await;
            if st.agent == "a1" {
                assert_eq!(st.state, BuildState::Queued);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{b} was not moved: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), loop_task)
        .await
        .expect("recovery loop stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn old_finished_statuses_are_pruned_and_nothing_else() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;
    let _a1 = register(&etcd, "a1", 4).await;
    for b in ["old-ok", "old-failed", "new-ok", "old-running", "queued"] {
        dispatch::submit(&etcd, &task(b, "file:///p", false))
            .await
            .unwrap();
    }
    let finish = |b: &'static str, state: BuildState, at: u64| {
        let etcd = etcd.clone();
        async move {
            let mut st = status(&etcd, b).await;
            st.state = state;
            st.finished_at_ms = Some(at);
            assert!(dispatch::finish(&etcd, "a1", &st).await.unwrap());
        }
    };
    finish("old-ok", BuildState::Succeeded, 1_000).await;
    finish("old-failed", BuildState::Failed, 2_000).await;
    finish("new-ok", BuildState::Succeeded, 9_000).await;
    let mut running = status(&etcd, "old-running").await;
    running.state = BuildState::Running;
    running.started_at_ms = Some(500);
    assert!(dispatch::update_status(&etcd, "a1", &running)
        .await
        .unwrap());

    assert_eq!(dispatch::prune_finished(&etcd, 5_000).await.unwrap(), 2);
    for (b, kept) in [
        ("old-ok", false),
        ("old-failed", false),
        ("new-ok", true),
        ("old-running", true),
        ("queued", true),
    ] {
        let there = dispatch::get_status(&etcd, b).await.unwrap().is_some();
        assert_eq!(there, kept, "{b}");
    }
    assert_eq!(dispatch::prune_finished(&etcd, 5_000).await.unwrap(), 0);
}
