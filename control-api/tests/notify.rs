//! systemd: the real binary sends READY=1 once etcd answers, then WATCHDOG=1 pings, to a
//! NOTIFY_SOCKET the test binds; SIGTERM makes it say STOPPING=1 and exit 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::notify::{sigterm_and_wait, NotifyListener};

#[test]
fn binary_notifies_ready_then_watchdog_and_stops_on_sigterm() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = cellplane_testkit::free_port();
    let cfg = dir.path().join("control-api.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[etcd]\nendpoints = [\"{}\"]\nprefix = \"/notify\"\n[[tokens]]\nname = \"t\"\ntoken = \"0123456789abcdef0123\"\nscopes = [\"read\"]\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let notify = NotifyListener::bind();
    let mut child = Command::new(env!("CARGO_BIN_EXE_control-api"))
        .arg("-c")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = notify.wait_for(&["READY=1", "WATCHDOG=1"], Duration::from_secs(15));
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    let dog = seen.iter().position(|m| m.contains("WATCHDOG=1"));
    assert!(ready.is_some() && dog.is_some(), "messages: {seen:?}");
    assert!(ready < dog, "READY before the first WATCHDOG: {seen:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "listening once ready"
    );
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let rest = notify.wait_for(&["STOPPING=1"], Duration::from_secs(2));
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
}
