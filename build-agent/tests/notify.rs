//! systemd: the real binary sends READY=1 once registered and its task prefix read, then
//! WATCHDOG=1 pings, to a NOTIFY_SOCKET the test binds; SIGTERM makes it exit 0.

mod common;

use std::time::Duration;

use cellplane_testkit::notify::NotifyListener;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_then_watchdog_and_stops_on_sigterm() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let notify = NotifyListener::bind();
    let mut opts = env.agent("cpba-nt", &storage);
    opts.env = vec![
        (
            "NOTIFY_SOCKET".into(),
            notify.path().to_string_lossy().into_owned(),
        ),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    let mut agent = AgentProc::spawn(opts);
    let seen = tokio::task::spawn_blocking(move || {
        let seen = notify.wait_for(&["READY=1", "WATCHDOG=1"], Duration::from_secs(20));
        (seen, notify)
    })
    .await
    .unwrap()
    .0;
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    let dog = seen.iter().rposition(|m| m.contains("WATCHDOG=1"));
    assert!(ready.is_some() && dog.is_some(), "messages: {seen:?}");
    assert!(ready < dog, "READY before a WATCHDOG: {seen:?}");
    // READY means registered
    let key = env.etcd.keys().build_agent("cpba-nt");
    let rec: cellplane_build::AgentRecord =
        env.etcd.get(&key).await.unwrap().unwrap().json().unwrap();
    assert_eq!(rec.endpoint, format!("http://{}", agent.endpoint()));
    assert_eq!(rec.capacity, 2);
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(env.etcd.get(&key).await.unwrap().is_none());
}
