//! A private Open vSwitch per test: its own `ovsdb-server` (database and unix socket in a temp
//! dir) and its own `ovs-vswitchd` running inside a test namespace, so bridges (userspace,
//! `datapath_type=netdev`), their tap devices and every port live in that namespace.
//! Children die with the test thread (`PR_SET_PDEATHSIG`) and are stopped on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{run, TestNetns};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// The binaries a test using [`Ovs`] needs (for [`crate::netns::require_priv`]).
pub const OVS_BINARIES: &[&str] = &[
    "ovsdb-server",
    "ovs-vswitchd",
    "ovsdb-tool",
    "ovs-vsctl",
    SCHEMA,
];

pub struct Ovs {
    dir: tempfile::TempDir,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
    netns: String,
    netns_path: String,
}

fn pdeathsig(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Ovs {
    /// Starts ovsdb-server and ovs-vswitchd (the latter inside `node`). Panics when anything
    /// fails to start.
    pub fn start(node: &TestNetns) -> Ovs {
        let dir = tempfile::Builder::new()
            .prefix("cpovs")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        let mut ovs = Ovs {
            dir,
            ovsdb: None,
            vswitchd: None,
            netns: node.name().to_string(),
            netns_path: node.path(),
        };
        run(ovs
            .cmd("ovsdb-tool")
            .arg("create")
            .arg(d.join("conf.db"))
            .arg(SCHEMA));
        ovs.start_ovsdb();
        run(ovs
            .cmd("ovs-vsctl")
            .arg(format!("--db={}", ovs.db_url()))
            .args(["--no-wait", "init"]));
        ovs.start_vswitchd();
        ovs
    }

    fn cmd(&self, bin: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(bin);
        for v in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(v, d);
        }
        c.stdin(Stdio::null());
        c
    }

    /// (Re)starts ovsdb-server on the same database.
    pub fn start_ovsdb(&mut self) {
        let d = self.dir.path().to_path_buf();
        let _ = std::fs::remove_file(self.db_sock());
        let mut c = self.cmd("ovsdb-server");
        c.arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", self.db_sock().display()))
            .arg(format!(
                "--unixctl={}",
                d.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovsdb-server.log").display()
            ))
            .args(["--no-chdir", "-vconsole:off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pdeathsig(&mut c);
        self.ovsdb = Some(c.spawn().expect("spawn ovsdb-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.db_sock()).is_err() {
            assert!(
                Instant::now() < deadline,
                "ovsdb-server did not open {:?}",
                self.db_sock()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// (Re)starts ovs-vswitchd inside the node namespace.
    pub fn start_vswitchd(&mut self) {
        let d = self.dir.path().to_path_buf();
        let ns = File::open(&self.netns_path).expect("open node netns");
        let fd = ns.as_raw_fd();
        let mut c = self.cmd("ovs-vswitchd");
        c.arg(self.db_url())
            .arg(format!(
                "--unixctl={}",
                d.join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovs-vswitchd.log").display()
            ))
            .args(["--no-chdir", "-vconsole:off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setns/prctl are plain syscalls, safe between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.vswitchd = Some(c.spawn().expect("spawn ovs-vswitchd"));
        drop(ns);
        // wait until it answers (it bumps cur_cfg when done with the current config)
        run(self.vsctl_cmd().args([
            "--timeout=10",
            "--",
            "set",
            "Open_vSwitch",
            ".",
            "external_ids:cellplane-test=1",
        ]));
    }

    /// Stops ovs-vswitchd (fault tests).
    pub fn stop_vswitchd(&mut self) {
        if let Some(mut c) = self.vswitchd.take() {
            stop(&mut c);
        }
    }

    /// Stops ovsdb-server (fault tests): the socket stops answering.
    pub fn stop_ovsdb(&mut self) {
        if let Some(mut c) = self.ovsdb.take() {
            stop(&mut c);
        }
        let _ = std::fs::remove_file(self.db_sock());
    }

    /// The pid of ovsdb-server (to freeze it with SIGSTOP in fault tests).
    pub fn ovsdb_pid(&self) -> Option<u32> {
        self.ovsdb.as_ref().map(Child::id)
    }

    pub fn db_sock(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    /// `unix:PATH` as the CNI config's `ovsdb` key takes it.
    pub fn db_url(&self) -> String {
        format!("unix:{}", self.db_sock().display())
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn vsctl_cmd(&self) -> Command {
        let mut c = self.cmd("ovs-vsctl");
        c.arg(format!("--db={}", self.db_url()));
        c
    }

    /// `ovs-vsctl --db=... ARGS` (waits for vswitchd unless `--no-wait` is given); stdout.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = run(self.vsctl_cmd().arg("--timeout=10").args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Adds a userspace bridge and sets its tap device up.
    pub fn add_bridge(&self, name: &str) {
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ]);
        run(Command::new("ip").args(["-n", &self.netns, "link", "set", name, "up"]));
    }

    /// Adds an existing link of the node namespace as a trunk port (all VLANs).
    pub fn add_trunk_port(&self, bridge: &str, port: &str) {
        self.vsctl(&["add-port", bridge, port]);
    }

    /// Adds an existing link of the node namespace as an access port with `tag`.
    pub fn add_access_port(&self, bridge: &str, port: &str, tag: u16) {
        self.vsctl(&["add-port", bridge, port, &format!("tag={tag}")]);
    }

    /// Port names of a bridge.
    pub fn ports(&self, bridge: &str) -> Vec<String> {
        self.vsctl(&["list-ports", bridge])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Every port of every bridge (via `--no-wait`, works without vswitchd).
    pub fn all_ports(&self) -> Vec<String> {
        let out = run(self.vsctl_cmd().args([
            "--no-wait",
            "--columns=name",
            "--format=csv",
            "--no-headings",
            "list",
            "Port",
        ]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        if self.ovsdb.is_some() && self.vswitchd.is_some() {
            // delete bridges first so vswitchd removes their tap devices
            if let Ok(out) = self.vsctl_cmd().args(["--timeout=5", "list-br"]).output() {
                for br in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                {
                    let _ = self
                        .vsctl_cmd()
                        .args(["--timeout=5", "del-br", br])
                        .output();
                }
            }
        }
        if let Some(mut c) = self.vswitchd.take() {
            stop(&mut c);
        }
        if let Some(mut c) = self.ovsdb.take() {
            stop(&mut c);
        }
    }
}
