//! A real image registry for a test: Debian's `docker-registry` (distribution v2) on a free
//! 127.0.0.1 port with its config and storage in a temporary directory, optionally behind
//! htpasswd basic auth. Dropping the fixture kills it and removes the directory; the child also
//! dies with the thread that started it (PR_SET_PDEATHSIG).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A user and password the fixture can require (`Registry::start_with_auth`): the bcrypt hash
/// below is of [`TEST_PASSWORD`] (cost 4, to keep the tests fast).
pub const TEST_USER: &str = "cpba-user";
pub const TEST_PASSWORD: &str = "cpba-Pa55w0rd-test";
const TEST_HTPASSWD: &str =
    "cpba-user:$2b$04$OoyAgvPqk4UHz.7vyl6rp.pLt0qEPy.WXMAF/WpLapV9kmjH8C3sq\n";

pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Registry {
    /// Is `docker-registry` installed?
    pub fn available() -> bool {
        crate::have_binary("docker-registry")
    }

    /// A registry without authentication.
    pub fn start() -> Registry {
        Registry::start_inner(false)
    }

    /// A registry that requires [`TEST_USER`] / [`TEST_PASSWORD`].
    pub fn start_with_auth() -> Registry {
        Registry::start_inner(true)
    }

    fn start_inner(auth: bool) -> Registry {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cp-registry-")
                .tempdir()
                .expect("temp dir for the registry");
            let port = crate::free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: cellplane-test-only\n",
                dir.path().join("data").display()
            );
            if auth {
                let h = dir.path().join("htpasswd");
                std::fs::write(&h, TEST_HTPASSWD).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: cellplane-test\n    path: {}\n",
                    h.display()
                ));
            }
            let cfg_path = dir.path().join("config.yml");
            std::fs::write(&cfg_path, config).expect("write registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let log2 = log.try_clone().expect("log file");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(&cfg_path)
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
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => panic!("cannot run docker-registry (is it installed?): {e}"),
            };
            let mut r = Registry {
                child: Some(child),
                dir,
                port,
            };
            match r.wait_ready() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log()));
            }
            if let Some(code) = self.get_status("/v2/") {
                if code == 200 || code == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not answering after 15 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP status of `GET path`, if it answers.
    fn get_status(&self, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let head = String::from_utf8_lossy(&buf[..n]);
        head.split_whitespace().nth(1)?.parse().ok()
    }

    /// `127.0.0.1:PORT`, as it appears in image references.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
