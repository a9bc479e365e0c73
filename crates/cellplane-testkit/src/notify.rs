//! systemd's side of `Type=notify`, for tests: a datagram socket to hand a daemon as
//! `NOTIFY_SOCKET`, and SIGTERM-and-wait for the daemon's clean shutdown.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

pub struct NotifyListener {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifyListener {
    pub fn bind() -> NotifyListener {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifyListener {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The value for the daemon's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every message received until each of `wants` has appeared in one, or `timeout`.
    pub fn wait_for(&self, wants: &[&str], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline && !wants.iter().all(|w| seen.iter().any(|m| m.contains(w)))
        {
            if let Ok(n) = self.sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }
}

/// Sends SIGTERM and waits up to `timeout` for the child to exit.
pub fn sigterm_and_wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not stop within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
