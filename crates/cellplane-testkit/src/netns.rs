//! Network namespace fixtures: named namespaces (`/run/netns/NAME`) removed on drop, unique
//! names, and the privilege check that fails instead of skipping under
//! `CELLPLANE_REQUIRE_PRIV=1`.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `{prefix}{pid base36}{n}`. Keep `prefix` short
/// when the name is a link name (≤ 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut pid = std::process::id();
    let mut p = String::new();
    while pid > 0 {
        let d = (pid % 36) as u8;
        p.insert(
            0,
            if d < 10 {
                (b'0' + d) as char
            } else {
                (b'a' + d - 10) as char
            },
        );
        pid /= 36;
    }
    format!("{prefix}{p}{n}")
}

/// True when the test can run: root and every binary in `bins` found on PATH (or as an
/// absolute path). Otherwise it skips with a message, or panics when
/// `CELLPLANE_REQUIRE_PRIV=1`.
pub fn require_priv(test: &str, bins: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for b in bins {
        if !has_binary(b) {
            missing.push(format!("binary {b}"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    crate::prerequisite(&format!("{test}: {}", missing.join(", ")), false)
}

/// Whether `bin` is executable (absolute path, or found on PATH or in /usr/sbin, /sbin).
pub fn has_binary(bin: &str) -> bool {
    if bin.starts_with('/') {
        return std::path::Path::new(bin).exists();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .any(|d| std::path::Path::new(d).join(bin).exists());
    found
}

/// Runs a command and panics with its output when it fails (test helper).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A named network namespace created with `ip netns add`, deleted on drop (which also
/// destroys every link inside it).
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `/run/netns/{unique_name(prefix)}` with loopback up.
    pub fn new(prefix: &str) -> TestNetns {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = TestNetns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n NAME ARGS...`: JSON text for the caller to parse.
    pub fn ip_json(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip")
            .arg("-j")
            .arg("-n")
            .arg(&self.name)
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of all links in the namespace.
    pub fn links(&self) -> Vec<String> {
        links_of(Some(self))
    }

    /// Runs a command inside the namespace (`ip netns exec`), returning its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {cmd:?}: {e}", self.name))
    }

    /// True when `ping -c1 -W1 ip` from inside the namespace succeeds (busybox ping or
    /// iputils ping, whichever exists), retrying for up to `tries` seconds.
    pub fn ping(&self, ip: &str, tries: u32) -> bool {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        for _ in 0..tries.max(1) {
            let out = match busybox {
                Some(b) => self.exec(&[b, "ping", "-c", "1", "-W", "1", ip]),
                None => self.exec(&["ping", "-c", "1", "-W", "1", ip]),
            };
            if out.status.success() {
                return true;
            }
        }
        false
    }

    /// Deletes the namespace now (for "netns gone" tests); drop then does nothing.
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
            self.name.clear();
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Link names in a namespace (`None`: the caller's), from `ip -o link show`.
pub fn links_of(ns: Option<&TestNetns>) -> Vec<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.arg("-n").arg(ns.name());
    }
    let out = run(cmd.args(["-o", "link", "show"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// A veth pair created inside `a_ns` as `a`, with its peer `b` created directly in `b_ns`;
/// both ends up. Nothing touches the caller's namespace.
pub fn veth_pair(a: &str, a_ns: &TestNetns, b: &str, b_ns: &TestNetns) {
    run(Command::new("ip").args([
        "-n",
        a_ns.name(),
        "link",
        "add",
        a,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        b_ns.name(),
    ]));
    a_ns.ip(&["link", "set", a, "up"]);
    b_ns.ip(&["link", "set", b, "up"]);
}

/// Makes a TCP service on the caller's loopback (e.g. a test etcd) reachable on the same
/// port on a namespace's loopback: a small forwarder whose listening socket is opened inside
/// the namespace (on a dedicated thread) and whose outgoing connections are made from the
/// caller's namespace. Stops on drop.
pub struct LoopbackForward {
    listener_fd: i32,
    port: u16,
    _accept: std::thread::JoinHandle<()>,
}

impl LoopbackForward {
    pub fn start(ns: &TestNetns, port: u16) -> LoopbackForward {
        let path = ns.path();
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind in netns")
        })
        .join()
        .expect("listener thread");
        use std::os::fd::AsRawFd;
        let listener_fd = listener.as_raw_fd();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(inside) = conn else { break };
                std::thread::spawn(move || {
                    let Ok(outside) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return; // dropping `inside` closes it: the client sees the service down
                    };
                    let _ = inside.set_nodelay(true);
                    let _ = outside.set_nodelay(true);
                    let (mut i2, mut o2) = match (inside.try_clone(), outside.try_clone()) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return,
                    };
                    let (mut i1, mut o1) = (inside, outside);
                    let t = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut i2, &mut o2);
                        let _ = o2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut o1, &mut i1);
                    let _ = i1.shutdown(std::net::Shutdown::Write);
                    let _ = t.join();
                });
            }
        });
        LoopbackForward {
            listener_fd,
            port,
            _accept: accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        // wakes the blocking accept() with an error; the thread ends and closes the socket
        // SAFETY: shutdown(2) on a descriptor the accept thread still owns.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
    }
}
