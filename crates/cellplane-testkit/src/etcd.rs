//! A real etcd for a test: the `etcd` binary on free loopback ports with a temporary data dir
//! (on tmpfs when /dev/shm exists). `start` checks that the etcd answering on the port is the
//! child it started (by its unique member name), not a stale one. Dropping the fixture kills
//! the child and removes the data dir; the child also dies with the thread that started it
//! (PR_SET_PDEATHSIG), so a killed test run leaves no etcd behind.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    name: String,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts a fresh single-member etcd. Panics with etcd's log when it does not come up.
    pub fn start() -> EtcdServer {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cp-etcd-")
                .tempdir_in(&base)
                .expect("temp dir for etcd");
            let mut s = EtcdServer {
                child: None,
                dir,
                name: crate::unique("cp-etcd-"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
            };
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(e) => last_err = e, // most likely a port taken meanwhile: try new ports
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops etcd (SIGKILL: as abrupt as a crash); its data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("etcd did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Compacts the store at its current revision; returns that revision.
    pub fn compact(&self) -> i64 {
        let ep = self.endpoint();
        block_on(async move {
            let mut c = etcd_client::Client::connect([ep], None).await?;
            let rev = c
                .get("/", None)
                .await?
                .header()
                .map(|h| h.revision())
                .unwrap_or(0);
            c.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await?;
            Ok::<_, etcd_client::Error>(rev)
        })
        .expect("compact etcd")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .arg("--log-level")
            .arg("warn")
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: prctl is async-signal-safe; it only sets the death signal of the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run etcd (is etcd-server installed?): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("etcd exited with {status}: {}", self.log_tail()));
            }
            if self.answers_as_ours() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("etcd not healthy after 15 s: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Is the etcd on our client port healthy, and is it the member we started?
    fn answers_as_ours(&self) -> bool {
        let ep = self.endpoint();
        let name = self.name.clone();
        block_on(async move {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_millis(500));
            let mut c = etcd_client::Client::connect([ep], Some(opts)).await?;
            let members = c.member_list().await?;
            c.get("health-probe", None).await?;
            Ok::<_, etcd_client::Error>(members.members().iter().any(|m| m.name() == name))
        })
        .unwrap_or(false)
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = s.len().saturating_sub(2000);
        s[start..].to_string()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a future to completion on a private runtime in its own thread, so fixtures work both
/// from plain tests and from inside a tokio runtime.
fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(fut)
    })
    .join()
    .expect("fixture thread")
}
