//! Fixtures for the build-agent tests, over real components: an etcd, a `docker-registry`, a
//! private containers storage with a local busybox base image, git repositories made with
//! `git init`, and the real `build-agent` binary. Everything is removed on drop, also when a
//! test panics.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellplane_build::dispatch;
use cellplane_build::{BuildRequest, BuildState, BuildStatus, BuildTask, CompileSpec};
use cellplane_etcd::{Etcd, EtcdConfig};
use cellplane_testkit::etcd::EtcdServer;
use cellplane_testkit::registry::Registry;
use tempfile::TempDir;

pub const BASE_IMAGE: &str = "localhost/cpba-busybox:1";

/// Root, and every tool the agent drives. Missing ones skip the test, or fail it under
/// `CELLPLANE_REQUIRE_PRIV=1`.
pub fn require_tools() -> bool {
    use cellplane_testkit::{have_binary, prerequisite};
    if !prerequisite("root", nix::unistd::geteuid().is_root()) {
        return false;
    }
    for bin in [
        "git",
        "buildah",
        "podman",
        "skopeo",
        "docker-registry",
        "runc",
    ] {
        if !prerequisite(bin, have_binary(bin)) {
            return false;
        }
    }
    prerequisite(
        "/bin/busybox (busybox-static)",
        Path::new("/bin/busybox").is_file(),
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private containers storage (vfs) shared by the agents of one test, with the base image.
pub struct Storage {
    dir: TempDir,
}

impl Storage {
    pub fn new() -> Storage {
        let dir = tempfile::Builder::new()
            .prefix("cpba-storage-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        let s = Storage { dir };
        s.make_base_image();
        s
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn runroot(&self) -> PathBuf {
        self.dir.path().join("runroot")
    }

    fn tool(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("--root")
            .arg(self.root())
            .arg("--runroot")
            .arg(self.runroot())
            .arg("--storage-driver")
            .arg("vfs")
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        c
    }

    /// `buildah from scratch` + busybox-static + `--install -s` + commit.
    fn make_base_image(&self) {
        let ctr = run(self.tool("buildah").args(["from", "scratch"]))
            .trim()
            .to_string();
        let mnt = run(self.tool("buildah").args(["mount", &ctr]))
            .trim()
            .to_string();
        let mnt = Path::new(&mnt);
        std::fs::create_dir_all(mnt.join("bin")).unwrap();
        std::fs::create_dir_all(mnt.join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", mnt.join("bin/busybox")).unwrap();
        run(Command::new("chroot")
            .arg(mnt)
            .args(["/bin/busybox", "--install", "-s", "/bin"]));
        run(self.tool("buildah").args(["umount", &ctr]));
        run(self
            .tool("buildah")
            .args(["commit", "--quiet", &ctr, BASE_IMAGE]));
        run(self.tool("buildah").args(["rm", &ctr]));
    }

    /// Local images (names).
    pub fn images(&self) -> String {
        run(self
            .tool("buildah")
            .args(["images", "--format", "{{.Name}}:{{.Tag}}"]))
    }

    /// Containers podman knows of (names).
    pub fn podman_containers(&self) -> String {
        run(self
            .tool("podman")
            .args(["ps", "-a", "--format", "{{.Names}}"]))
    }

    /// The settings for an agent's `[containers]` table.
    pub fn toml(&self) -> String {
        format!(
            "[containers]\nroot = \"{}\"\nrunroot = \"{}\"\nstorage_driver = \"vfs\"\n",
            self.root().display(),
            self.runroot().display()
        )
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = self
            .tool("podman")
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .tool("buildah")
            .args(["rm", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // anything still mounted under the storage (shm of a killed container) goes first
        let base = self.dir.path().to_string_lossy().into_owned();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&base))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// A git repository made by the test.
pub struct GitRepo {
    dir: TempDir,
}

impl GitRepo {
    pub fn new() -> GitRepo {
        let dir = tempfile::Builder::new()
            .prefix("cpba-repo-")
            .tempdir()
            .unwrap();
        let r = GitRepo { dir };
        r.git(&["init", "--quiet", "-b", "main"]);
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        run(Command::new("git")
            .arg("-C")
            .arg(self.dir.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "cellplane test")
            .env("GIT_AUTHOR_EMAIL", "test@cellplane.invalid")
            .env("GIT_COMMITTER_NAME", "cellplane test")
            .env("GIT_COMMITTER_EMAIL", "test@cellplane.invalid"))
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn symlink(&self, target: &str, rel: &str) {
        std::os::unix::fs::symlink(target, self.dir.path().join(rel)).unwrap();
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "-m", msg]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// A repository with a Dockerfile on the base image; returns it and its commit.
    pub fn simple(extra_dockerfile: &str) -> (GitRepo, String) {
        let r = GitRepo::new();
        r.write(
            "Dockerfile",
            &format!("FROM {BASE_IMAGE}\nCOPY app.txt /app.txt\n{extra_dockerfile}"),
        );
        r.write("app.txt", "hello from cellplane\n");
        let c = r.commit("first");
        (r, c)
    }
}

/// One test's etcd (own process), client with a unique prefix, and registry.
pub struct Env {
    pub etcd_server: EtcdServer,
    pub etcd: Etcd,
    pub prefix: String,
    pub registry: Registry,
}

impl Env {
    pub async fn new() -> Env {
        Env::with_registry(Registry::start()).await
    }

    pub async fn with_registry(registry: Registry) -> Env {
        let etcd_server = EtcdServer::start();
        let prefix = format!("/{}", cellplane_testkit::unique("cpba"));
        let etcd = Etcd::connect(&EtcdConfig {
            endpoints: vec![etcd_server.endpoint()],
            prefix: prefix.clone(),
            ..EtcdConfig::default()
        })
        .await
        .unwrap();
        Env {
            etcd_server,
            etcd,
            prefix,
            registry,
        }
    }

    pub fn agent(&self, name: &str, storage: &Storage) -> AgentOpts {
        AgentOpts {
            name: name.to_string(),
            etcd_endpoint: self.etcd_server.endpoint(),
            prefix: self.prefix.clone(),
            registry: self.registry.address(),
            containers: storage.toml(),
            capacity: 2,
            step_timeout_secs: 120,
            lease_ttl_secs: 2,
            extra: String::new(),
            auth_file: None,
            env: Vec::new(),
        }
    }

    pub async fn submit(&self, task: &BuildTask) -> String {
        dispatch::submit(&self.etcd, task).await.unwrap()
    }

    pub async fn status(&self, build: &str) -> Option<BuildStatus> {
        dispatch::get_status(&self.etcd, build)
            .await
            .unwrap()
            .map(|(s, _)| s)
    }

    /// Polls the status until `pred` holds; panics with the last status after `timeout`.
    pub async fn wait_status(
        &self,
        build: &str,
        timeout: Duration,
        pred: impl Fn(&BuildStatus) -> bool,
    ) -> BuildStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(build).await;
            if let Some(s) = &s {
                if pred(s) {
                    return s.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("build {build}: condition not met within {timeout:?}; last status: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_end(&self, build: &str, timeout: Duration) -> BuildStatus {
        self.wait_status(build, timeout, |s| s.state.is_terminal())
            .await
    }

    pub async fn task_exists(&self, agent: &str, build: &str) -> bool {
        self.etcd
            .get(&self.etcd.keys().build_task(agent, build))
            .await
            .unwrap()
            .is_some()
    }
}

pub struct AgentOpts {
    pub name: String,
    pub etcd_endpoint: String,
    pub prefix: String,
    pub registry: String,
    pub containers: String,
    pub capacity: u32,
    pub step_timeout_secs: u64,
    pub lease_ttl_secs: i64,
    /// More top-level TOML (before the tables).
    pub extra: String,
    pub auth_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

/// The real `build-agent` binary with its own work dir and config.
pub struct AgentProc {
    pub name: String,
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
}

impl AgentProc {
    pub fn spawn(o: AgentOpts) -> AgentProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cpba-agent-{}-", o.name))
            .tempdir()
            .unwrap();
        let port = cellplane_testkit::free_port();
        let config = format!(
            "name = \"{name}\"\ncapacity = {cap}\nhttp_listen = \"127.0.0.1:{port}\"\nendpoint = \"http://127.0.0.1:{port}\"\nwork_dir = \"{work}\"\nstep_timeout_secs = {timeout}\nlease_ttl_secs = {ttl}\nshutdown_timeout_secs = 10\nretry_ms = 200\n{extra}\n[compile]\nnetwork = \"none\"\n[registry]\naddress = \"{reg}\"\ntls_verify = false\n{auth}\n{containers}\n[etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"{prefix}\"\n",
            name = o.name,
            cap = o.capacity,
            work = dir.path().join("work").display(),
            timeout = o.step_timeout_secs,
            ttl = o.lease_ttl_secs,
            extra = o.extra,
            auth = o
                .auth_file
                .as_ref()
                .map(|f| format!("auth_file = \"{}\"", f.display()))
                .unwrap_or_default(),
            reg = o.registry,
            containers = o.containers,
            etcd = o.etcd_endpoint,
            prefix = o.prefix,
        );
        let cfg_path = dir.path().join("build-agent.toml");
        std::fs::write(&cfg_path, config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_build-agent"));
        cmd.arg("--config")
            .arg(&cfg_path)
            .env_remove("CELLPLANE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("CELLPLANE_LOG", "info,cellplane_build_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn build-agent");
        AgentProc {
            name: o.name,
            child: Some(child),
            dir,
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits until the agent has registered and answers `/healthz` with 200.
    pub async fn wait_ready(&mut self, env: &Env) {
        let key = env.etcd.keys().build_agent(&self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent {} exited with {st}: {}", self.name, self.stderr());
            }
            let registered = env.etcd.get(&key).await.unwrap().is_some();
            let ep = self.endpoint();
            let healthy = registered
                && tokio::task::spawn_blocking(move || http_get(&ep, "/healthz").0 == 200)
                    .await
                    .unwrap();
            if healthy {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "agent {} not ready after 30 s: {}",
                    self.name,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the agent to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("agent running");
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                panic!("agent {} still running after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as abrupt as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        cellplane_testkit::notify::sigterm_and_wait(&mut c, timeout)
    }

    pub fn log_file(&self, build: &str) -> String {
        std::fs::read_to_string(self.work_dir().join("logs").join(format!("{build}.log")))
            .unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- stderr of agent {} ----\n{}", self.name, self.stderr());
        }
    }
}

pub fn request(repo: &str) -> BuildRequest {
    BuildRequest {
        repo: repo.into(),
        git_ref: "main".into(),
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        image: "cpba/app".into(),
        tag: None,
        compile: None,
        retry: false,
        step_timeout_secs: None,
    }
}

pub fn task(build: &str, request: BuildRequest) -> BuildTask {
    BuildTask {
        build: build.into(),
        request,
        attempt: 0,
        submitted_at_ms: cellplane_etcd::now_ms(),
        submitted_by: "test".into(),
        cancel: false,
    }
}

pub fn compile(command: &str) -> CompileSpec {
    CompileSpec {
        image: BASE_IMAGE.into(),
        command: command.into(),
        cache_mount: "/cache".into(),
        env: Default::default(),
    }
}

/// `skopeo inspect` of `registry/image:tag`: the manifest digest.
pub fn skopeo_digest(registry: &str, image: &str, tag: &str, creds: Option<&str>) -> String {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    if let Some(cr) = creds {
        c.arg("--creds").arg(cr);
    }
    c.arg(format!("docker://{registry}/{image}:{tag}"));
    run(&mut c).trim().to_string()
}

/// A blocking `GET`: (status, body), chunked bodies decoded.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

/// Decodes a chunked body (as much as is complete).
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            out.push_str(&rest[..rest.len().min(n)]);
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A `?follow=true` client reading in the background: the bytes so far, and whether the
/// server has ended the response.
pub struct Follower {
    raw: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
}

impl Follower {
    pub fn start(addr: &str, build: &str) -> Follower {
        Follower::start_with(addr, build, "")
    }

    /// With extra header lines (each ending in `\r\n`), e.g. an `Authorization`.
    pub fn start_with(addr: &str, build: &str, headers: &str) -> Follower {
        let raw: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>> = Default::default();
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /v1/builds/{build}/log?follow=true HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"
        )
        .unwrap();
        let r = raw.clone();
        std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => r.lock().unwrap().0.extend_from_slice(&buf[..n]),
                }
            }
            r.lock().unwrap().1 = true;
        });
        Follower { raw }
    }

    /// (status, body so far, ended)
    pub fn get(&self) -> (u16, String, bool) {
        let g = self.raw.lock().unwrap();
        let (code, body) = parse_response(&g.0);
        (code, body, g.1)
    }

    pub async fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body, ended) = self.get();
            if body.contains(what) {
                return body;
            }
            if ended || Instant::now() > deadline {
                panic!("{what:?} not received (ended: {ended}); got:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_end(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body, ended) = self.get();
            if ended {
                return body;
            }
            if Instant::now() > deadline {
                panic!("follow stream did not end; got:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn step<'a>(s: &'a BuildStatus, name: &str) -> &'a cellplane_build::StepRecord {
    s.steps
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {s:#?}"))
}

pub fn assert_state(s: &BuildStatus, state: BuildState) {
    assert_eq!(s.state, state, "{s:#?}");
}
