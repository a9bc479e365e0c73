//! nginx fixtures: a real nginx master (`nginx -p DIR -c FILE -g "daemon off;"`, our child, so
//! it is stopped on drop and dies with the test thread), tiny keep-alive HTTP backends on
//! loopback, a blocking HTTP client, and a bounded `wrk` run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Modules our nginx instances load explicitly (Debian `libnginx-mod-http-lua`).
pub const LUA_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
];
pub const CJSON: &str = "/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so";

/// nginx, the Lua module, lua-cjson, resty.core and wrk are installed. Skips (or, with
/// `CELLPLANE_REQUIRE_PRIV=1`, fails) otherwise.
pub fn require_nginx() -> bool {
    let ok = crate::have_binary("nginx")
        && LUA_MODULES.iter().all(|m| Path::new(m).is_file())
        && Path::new(CJSON).is_file()
        && Path::new("/usr/share/lua/5.1/resty/core.lua").is_file();
    crate::prerequisite("nginx + libnginx-mod-http-lua + lua-cjson", ok)
        && crate::prerequisite("wrk", crate::have_binary("wrk"))
}

/// A running nginx master started by the test.
pub struct NginxProcess {
    child: Option<Child>,
    error_log: PathBuf,
}

impl NginxProcess {
    /// Starts nginx on an existing config and waits until the master wrote its pid file and
    /// `probe` (an address the config listens on) accepts connections.
    pub fn start(
        prefix: &Path,
        conf: &Path,
        pid_file: &Path,
        error_log: &Path,
        probe: SocketAddr,
    ) -> NginxProcess {
        let _ = std::fs::remove_file(pid_file);
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(error_log)
            .arg("-c")
            .arg(conf)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SIGTERM (not KILL) when the test thread dies: the master then stops its workers.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn nginx");
        let mut p = NginxProcess {
            child: Some(child),
            error_log: error_log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("nginx exited at start ({st}): {}", p.error_log_tail());
                }
            }
            let pid_ok = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(p.master_pid());
            if pid_ok && TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
                return p;
            }
            if Instant::now() > deadline {
                panic!("nginx did not come up: {}", p.error_log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Worker pids (children of the master), sorted.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    pub fn error_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.error_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fast shutdown (TERM), then KILL after 5 s; waits for the workers too.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let workers = children_of(pid);
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for w in workers {
            let until = Instant::now() + Duration::from_secs(2);
            while Path::new(&format!("/proc/{w}")).exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            unsafe {
                libc::kill(w as i32, libc::SIGKILL);
            }
        }
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pids whose parent is `ppid`, sorted.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." — comm may hold spaces; split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let state = it.next();
        if it.next().and_then(|s| s.parse::<u32>().ok()) == Some(ppid) && state != Some("Z") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A keep-alive HTTP/1.1 backend on 127.0.0.1 answering every request with `200`, body
/// `name` and header `X-Backend: name`. Stops on drop.
pub struct Backend {
    addr: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let (s2, h2, n2) = (stop.clone(), hits.clone(), name.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s3, h3, n3) = (s2.clone(), h2.clone(), n2.clone());
                std::thread::spawn(move || serve_conn(conn, &n3, &s3, &h3));
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            stop,
            hits,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_conn(conn: TcpStream, name: &str, stop: &AtomicBool, hits: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = conn.set_nodelay(true);
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut content_length = 0usize;
        let mut close = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if first && line.is_empty() {
                        continue;
                    }
                    return;
                }
                Err(_) => return,
            }
            first = false;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; content_length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        hits.fetch_add(1, Ordering::Relaxed);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {name}\r\n{}\r\n{name}",
            name.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Lowercased names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A blocking HTTP/1.1 request with `Connection: close` (timeout 5 s).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = BTreeMap::new();
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            if k == "transfer-encoding" && v.contains("chunked") {
                chunked = true;
            }
            headers.insert(k, v);
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path` with the given Host header.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", host, path, &[], b"")
}

#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub output: String,
}

/// Runs `wrk` against `http://addr/` with a Host header for `duration` (bounded: at most 30 s).
pub fn run_wrk(addr: SocketAddr, host: &str, duration: Duration, connections: u32) -> WrkResult {
    let secs = duration.as_secs().clamp(1, 30);
    let out = Command::new("wrk")
        .arg(format!("-t{}", connections.clamp(1, 2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .expect("run wrk");
    let output = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = WrkResult {
        output: output.clone(),
        ..WrkResult::default()
    };
    for line in output.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if l.contains("requests in") {
            r.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    assert!(
        out.status.success(),
        "wrk failed: {output} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}
