//! Readiness and watchdog for systemd (`Type=notify`, `WatchdogSec=`): the agent sends
//! `READY=1` after its first reconcile and `WATCHDOG=1` from its main loop to `NOTIFY_SOCKET`.
//! Its own test binary: `notifies_ready_then_watchdog` sets process-wide environment variables.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use cellplane_testkit::nginx::require_nginx;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_then_watchdog() {
    if !require_nginx() {
        return;
    }
    let mut h = Harness::new(100).await;
    let sock_path = h.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Set before the agent starts and never changed again; no other test runs in this binary.
    std::env::set_var("NOTIFY_SOCKET", &sock_path);
    std::env::set_var("WATCHDOG_USEC", "400000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    h.put_config("app.example.com", &h.domain_config()).await;
    h.start_agent().await;

    let got = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                let ready = seen.iter().position(|m| m.contains("READY=1"));
                let dog = seen.iter().rposition(|m| m.contains("WATCHDOG=1"));
                if let (Some(r), Some(d)) = (ready, dog) {
                    if d > r {
                        break;
                    }
                }
            }
        }
        seen
    })
    .await
    .unwrap();
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("WATCHDOG=1")), "{got:?}");
    h.stop_agent().await;
}

/// The real binary: config file < env < flags, and SIGTERM shuts it down cleanly (exit 0, the
/// member status key revoked with its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reads_file_env_flags_and_stops_on_sigterm() {
    if !require_nginx() {
        return;
    }
    let h = Harness::new(100).await;
    let c = &h.config;
    let n = &c.nginx;
    let file = h.root().join("nginx-agent.toml");
    std::fs::write(
        &file,
        format!(
            "group = \"from-file\"\nhost = \"from-file\"\nhttp_listen = \"{}\"\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\nprefix = \"{}\"\n[nginx]\nprefix = \"{}\"\nconf_dir = \"{}\"\npid_file = \"{}\"\nerror_log = \"{}\"\ntemp_dir = \"{}\"\nadmin_listen = \"{}\"\nlisten_address = \"127.0.0.1\"\n",
            c.http_listen,
            c.etcd.prefix,
            n.prefix.display(),
            n.conf_dir.display(),
            n.pid_file.display(),
            n.error_log.display(),
            n.temp_dir.display(),
            n.admin_listen,
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nginx-agent"))
        .arg("-c")
        .arg(&file)
        .arg("--host")
        .arg(HOST)
        .env("CELLPLANE_GROUP", GROUP)
        .env("CELLPLANE_HOST", "from-env")
        .env("CELLPLANE_ETCD_ENDPOINTS", &c.etcd.endpoints[0])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn nginx-agent");
    let mut child = KillOnDrop(child);
    let m = wait_member(&h, Duration::from_secs(15), "binary registered", |_| true).await;
    assert_eq!(m.host, HOST);
    let conf = h.root().join("conf/current/nginx.conf");
    wait_for(Duration::from_secs(10), "first tree rendered", move || {
        conf.exists()
    })
    .await;
    let child = &mut child.0;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("nginx-agent did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        h.member().await.is_none(),
        "member status revoked on shutdown"
    );
}

/// Kills the child if the test fails before it stopped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
