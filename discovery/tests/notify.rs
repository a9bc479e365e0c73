//! systemd: the real binary sends READY=1 after its first full sync with the API server, then
//! WATCHDOG=1 pings, to a NOTIFY_SOCKET the test binds; SIGTERM makes it exit 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use cellplane_testkit::kube::FakeKube;
use cellplane_testkit::notify::{sigterm_and_wait, NotifyListener};

#[test]
fn binary_notifies_ready_then_watchdog_and_stops_on_sigterm() {
    let kube = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    let notify = NotifyListener::bind();
    let port = cellplane_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_discovery"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--control-api")
        .arg(format!(
            "http://127.0.0.1:{}",
            cellplane_testkit::free_port()
        ))
        .arg("--token-file")
        .arg(&token)
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("CELLPLANE_CONFIG")
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = notify.wait_for(&["READY=1", "WATCHDOG=1"], Duration::from_secs(20));
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    let dog = seen.iter().position(|m| m.contains("WATCHDOG=1"));
    assert!(ready.is_some() && dog.is_some(), "messages: {seen:?}");
    assert!(ready < dog, "READY before the first WATCHDOG: {seen:?}");
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}
