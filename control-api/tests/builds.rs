//! Build routes, the log proxy, the GitLab webhook and build recovery, with control-api running
//! in-process against a real etcd. Agents are registrations the test writes under a lease, plus
//! a tiny HTTP server for the log endpoint.
//! Run: `cargo test -p cellplane-control-api --test builds`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellplane_build::{dispatch, AgentRecord, BuildState, BuildStatus, BuildTask};
use cellplane_control_api::auth::Scope;
use cellplane_control_api::config::WebhookProject;
use cellplane_etcd::client::to_json;
use cellplane_etcd::{Etcd, LeaseKeeper};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const ADMIN: &str = "admin-token-0123456789";
const BUILDER: &str = "builder-token-0123456789";
const READER: &str = "reader-token-0123456789";
const SLB: &str = "slb-token-0123456789";
const SECRET: &str = "gitlab-secret-0123456789";

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

mod common;
use common::{token, Api};

impl Api {
    async fn start() -> Api {
        Api::start_with(
            "bapi",
            vec![
                token("ops", ADMIN, Scope::Admin),
                token("ci", BUILDER, Scope::BuildsWrite),
                token("dashboard", READER, Scope::Read),
                token("discovery", SLB, Scope::SlbWrite),
            ],
            |config| {
                config.webhook.gitlab_secret = Some(SECRET.into());
                config.webhook.projects = vec![WebhookProject {
                    path: "team/app".into(),
                    repo: None,
                    image: "team/app".into(),
                    dockerfile: "docker/Dockerfile".into(),
                    context: ".".into(),
                    branches: vec!["main".into(), "release/*".into()],
                    compile: None,
                    retry: false,
                    step_timeout_secs: None,
                }];
            },
        )
        .await
    }

    async fn submit(&self, body: Value) -> Value {
        let (status, v) = self
            .call("POST", "/v1/builds", Some(BUILDER), &body.to_string())
            .await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Keys under `builds/` other than agent registrations (what a submit writes).
    async fn build_keys(&self) -> Vec<String> {
        let k = self.etcd.keys();
        let mut out = Vec::new();
        for prefix in [k.all_build_tasks(), k.all_build_status()] {
            let (kvs, _) = self.etcd.list(&prefix).await.unwrap();
            out.extend(kvs.into_iter().map(|kv| kv.key));
        }
        out
    }

    async fn status(&self, build: &str) -> BuildStatus {
        dispatch::get_status(&self.etcd, build)
            .await
            .unwrap()
            .expect("status")
            .0
    }

    async fn task(&self, agent: &str, build: &str) -> Option<BuildTask> {
        self.etcd
            .get(&self.etcd.keys().build_task(agent, build))
            .await
            .unwrap()
            .map(|kv| kv.json().unwrap())
    }
}

/// Registers `name` under a 2 s lease, as a build agent does.
async fn register(etcd: &Etcd, name: &str, capacity: u32, endpoint: &str) -> LeaseKeeper {
    let lease = LeaseKeeper::grant(etcd, 2).await.unwrap();
    let rec = AgentRecord {
        host: "127.0.0.1".into(),
        capacity,
        labels: Default::default(),
        endpoint: endpoint.into(),
        version: "test".into(),
        started_at_ms: 1,
    };
    etcd.put_with_lease(&etcd.keys().build_agent(name), to_json(&rec), lease.id())
        .await
        .unwrap();
    lease
}

fn request(repo: &str) -> Value {
    json!({ "repo": repo, "ref": "main", "image": "team/app" })
}

/// A repository whose rendezvous winner among `agents` is `want`.
fn repo_for(want: &str, agents: [&str; 2]) -> String {
    (0..1000)
        .map(|i| format!("https://git.example.com/team/r{i}.git"))
        .find(|r| cellplane_build::rendezvous::rank(r, agents)[0] == want)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_is_dispatched_sticky_and_spread_and_listed() {
    let api = Api::start().await;
    let _a1 = register(&api.etcd, "a1", 100, "http://127.0.0.1:1").await;
    let _a2 = register(&api.etcd, "a2", 100, "http://127.0.0.1:1").await;

    let v = api
        .submit(json!({
            "repo": "https://git.example.com/team/app.git", "ref": "main", "image": "team/app",
            "tag": "v1.2.3", "dockerfile": "docker/Dockerfile",
            "compile": {"image": "maven:3", "command": "mvn -q package", "cache_mount": "/root/.m2"}
        }))
        .await;
    let build = v["build"].as_str().unwrap().to_string();
    let agent = v["agent"].as_str().unwrap().to_string();
    cellplane_build::validate_build_id(&build).unwrap();
    assert!(build.starts_with("b-"), "{build}");
    assert_eq!(v["status_url"], format!("/v1/builds/{build}"));
    assert_eq!(v["log_url"], format!("/v1/builds/{build}/log"));

    // the task and a queued status are in etcd
    let task = api
        .task(&agent, &build)
        .await
        .expect("task under its agent");
    assert_eq!(task.submitted_by, "ci");
    assert_eq!(task.request.tag.as_deref(), Some("v1.2.3"));
    assert_eq!(task.request.compile.unwrap().cache_mount, "/root/.m2");
    let st = api.status(&build).await;
    assert_eq!(
        (st.state, st.agent.as_str()),
        (BuildState::Queued, agent.as_str())
    );

    // the same repository (spelled with or without .git) goes to the same agent
    for repo in [
        "https://git.example.com/team/app.git",
        "https://git.example.com/team/app",
        "https://git.example.com/team/app.git",
    ] {
        assert_eq!(api.submit(request(repo)).await["agent"], agent.as_str());
    }
    // different repositories spread over both agents
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..16 {
        let v = api
            .submit(request(&format!("https://git.example.com/team/svc{i}.git")))
            .await;
        seen.insert(v["agent"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // status; 404 for an unknown build; 400 for a malformed id
    let (status, v) = api
        .call("GET", &format!("/v1/builds/{build}"), Some(READER), "")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["build"].as_str(), v["state"].as_str()),
        (Some(build.as_str()), Some("queued"))
    );
    let (status, v) = api.call("GET", "/v1/builds/b-nope", Some(READER), "").await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("b-nope"), "{v}");
    assert_eq!(
        api.call("GET", "/v1/builds/No_Such", Some(READER), "")
            .await
            .0,
        400
    );

    // list: newest first, limited
    let (status, v) = api
        .call("GET", "/v1/builds?limit=3", Some(READER), "")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 20);
    let listed: Vec<&Value> = v["builds"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 3);
    let times: Vec<u64> = listed
        .iter()
        .map(|b| b["submitted_at_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(
        listed.iter().all(|b| b["build"] != build.as_str()),
        "the first build is the oldest"
    );
    let (_, all) = api.call("GET", "/v1/builds", Some(READER), "").await;
    assert_eq!(all["builds"].as_array().unwrap().len(), 20);
    assert_eq!(all["builds"][19]["build"], build.as_str());
    let (status, v) = api
        .call("GET", "/v1/builds?limit=x", Some(READER), "")
        .await;
    assert_eq!((status, v["field"].as_str()), (400, Some("limit")), "{v}");

    // agents with their task counts (the static route wins over /v1/builds/{build})
    let (status, v) = api.call("GET", "/v1/builds/agents", Some(READER), "").await;
    assert_eq!(status, 200, "{v}");
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{v}");
    let total: u64 = agents.iter().map(|a| a["queued"].as_u64().unwrap()).sum();
    assert_eq!(total, 20);
    assert!(agents
        .iter()
        .all(|a| a["running"] == 0 && a["capacity"] == 100));
    // one build running on its agent is counted as running
    let mut st = api.status(&build).await;
    st.state = BuildState::Running;
    assert!(dispatch::update_status(&api.etcd, &agent, &st)
        .await
        .unwrap());
    let (_, v) = api.call("GET", "/v1/builds/agents", Some(READER), "").await;
    let a = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == agent.as_str())
        .unwrap();
    assert_eq!(a["running"], 1, "{a}");
    let (_, v) = api
        .call("GET", "/v1/builds?state=running", Some(READER), "")
        .await;
    assert_eq!(v["total"], 1, "{v}");

    // metrics count submitted builds by source
    let (_, m) = api.call("GET", "/metrics", None, "").await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("cellplane_api_builds_submitted_total{source=\"api\"} 20"),
        "{m}"
    );
    assert!(
        m.contains("route=\"/v1/builds\",status=\"201\"}"),
        "request counters keep working: {m}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_400_naming_the_field_and_write_nothing() {
    let api = Api::start().await;
    let _a1 = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    let with = |k: &str, v: Value| {
        let mut r = request("https://git.example.com/team/app.git");
        r[k] = v;
        r.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (with("tag", json!("../../x")), "tag"),
        (with("tag", json!("-f")), "tag"),
        (with("dockerfile", json!("../../etc/passwd")), "dockerfile"),
        (with("dockerfile", json!("/etc/passwd")), "dockerfile"),
        (with("context", json!("a/../..")), "context"),
        (with("ref", json!("--upload-pack=touch /tmp/x")), "ref"),
        (with("ref", json!("a/../../b")), "ref"),
        (with("repo", json!("ext::sh -c touch% /tmp/x")), "repo"),
        (with("repo", json!("--upload-pack=touch /tmp/x")), "repo"),
        (with("image", json!("evil.com:5000/app")), "image"),
        (with("image", json!("Team/App")), "image"),
        (
            with(
                "compile",
                json!({"image": "maven:3", "command": "mvn", "cache_mount": "/x:/host"}),
            ),
            "compile.cache_mount",
        ),
        (with("step_timeout_secs", json!(0)), "step_timeout_secs"),
        (with("tga", json!("x")), "tga"),
        (with("retry", json!("yes")), "retry"),
        (r#"{"ref":"main","image":"team/app"}"#.into(), "repo"),
        ("{".into(), "body"),
        ("not json".into(), "body"),
        ("[]".into(), "body"),
    ];
    for (body, field) in cases {
        let (status, v) = api.call("POST", "/v1/builds", Some(BUILDER), &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(field),
            "{body}: message names the field: {msg}"
        );
    }
    // the message names the value too
    let (_, v) = api
        .call(
            "POST",
            "/v1/builds",
            Some(BUILDER),
            &with("tag", json!("../../x")),
        )
        .await;
    assert!(v["error"].as_str().unwrap().contains("../../x"), "{v}");
    assert!(
        api.build_keys().await.is_empty(),
        "{:?}",
        api.build_keys().await
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agents_is_503_and_scopes_are_enforced() {
    let api = Api::start().await;
    let body = request("https://git.example.com/team/app.git").to_string();
    let (status, v) = api.call("POST", "/v1/builds", Some(BUILDER), &body).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no build agent"),
        "{v}"
    );
    assert!(api.build_keys().await.is_empty());

    let _a1 = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    for (token, want) in [
        (None, 401),
        (Some("not-a-known-token-000000"), 401),
        (Some(READER), 403),
        (Some(SLB), 403),
    ] {
        let (status, v) = api.call("POST", "/v1/builds", token, &body).await;
        assert_eq!(status, want, "POST with {token:?}: {v}");
        let (status, v) = api.call("POST", "/v1/builds/b-x/cancel", token, "").await;
        assert_eq!(status, want, "cancel with {token:?}: {v}");
    }
    assert!(api.build_keys().await.is_empty());
    assert_eq!(api.call("GET", "/v1/builds", None, "").await.0, 401);
    for t in [READER, BUILDER, ADMIN, SLB] {
        assert_eq!(
            api.call("GET", "/v1/builds", Some(t), "").await.0,
            200,
            "{t}"
        );
    }
    for t in [BUILDER, ADMIN] {
        assert_eq!(api.call("POST", "/v1/builds", Some(t), &body).await.0, 201);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_marks_the_task_and_refuses_finished_builds() {
    let api = Api::start().await;
    let _a1 = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let (build, agent) = (v["build"].as_str().unwrap(), v["agent"].as_str().unwrap());
    let (status, v) = api
        .call(
            "POST",
            &format!("/v1/builds/{build}/cancel"),
            Some(BUILDER),
            "",
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["cancel_requested"], true);
    assert!(api.task(agent, build).await.unwrap().cancel);
    // asking again is harmless
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/builds/{build}/cancel"),
            Some(BUILDER),
            "",
        )
        .await;
    assert_eq!(status, 202);

    // a finished build: 409
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let done = v["build"].as_str().unwrap();
    let mut st = api.status(done).await;
    st.state = BuildState::Succeeded;
    assert!(dispatch::finish(&api.etcd, agent, &st).await.unwrap());
    let (status, v) = api
        .call(
            "POST",
            &format!("/v1/builds/{done}/cancel"),
            Some(BUILDER),
            "",
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("succeeded"), "{v}");
    let (status, _) = api
        .call("POST", "/v1/builds/b-unknown/cancel", Some(BUILDER), "")
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

/// A build agent's log endpoint: `GET /v1/builds/{build}/log[?follow=true]`, chunked. The
/// followed log sends "line 1", then waits for `release` before "line 2" and the end.
struct FakeAgent {
    addr: SocketAddr,
    /// The builds it has a log for (a test may add one later, as an agent taking a task).
    builds: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    async fn start(builds: Vec<String>) -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(Notify::new());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let builds = Arc::new(Mutex::new(builds));
        let (rel, reqs, known) = (release.clone(), requests.clone(), builds.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(Self::serve(conn, known.clone(), rel.clone(), reqs.clone()));
            }
        });
        FakeAgent {
            addr,
            builds,
            release,
            requests,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn serve(
        mut conn: TcpStream,
        builds: Arc<Mutex<Vec<String>>>,
        release: Arc<Notify>,
        requests: Arc<Mutex<Vec<String>>>,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        requests.lock().unwrap().push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let build = path
            .strip_prefix("/v1/builds/")
            .and_then(|r| r.strip_suffix("/log"))
            .unwrap_or("");
        let known = builds.lock().unwrap().iter().any(|b| b == build);
        if !known {
            let body = r#"{"error":"build not found"}"#;
            let _ = conn
                .write_all(
                    format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        .as_bytes(),
                )
                .await;
            return;
        }
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await;
        let _ = conn.write_all(chunk("line 1\n").as_bytes()).await;
        if query.contains("follow=true") {
            let _ = conn.flush().await;
            release.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.write_all(chunk("line 2\n").as_bytes()).await;
        let _ = conn.write_all(b"0\r\n\r\n").await;
        let _ = conn.shutdown().await;
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a raw request to the API and returns the stream after the request is written.
async fn open(addr: SocketAddr, path: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until `pattern` has been received (or fails after `within`).
async fn read_until(s: &mut TcpStream, got: &mut String, pattern: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !got.contains(pattern) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("connection closed before {pattern:?}; got {got:?}"),
            Ok(Ok(n)) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("read: {e}; got {got:?}"),
            Err(_) => panic!("no {pattern:?} within {within:?}; got {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_streamed_from_the_agent_and_502_when_it_is_gone() {
    let api = Api::start().await;
    // the agent's server is started once the build ids are known
    let placeholder = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let build = v["build"].as_str().unwrap().to_string();
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let other = v["build"].as_str().unwrap().to_string(); // unknown to the agent's server
    let agent = FakeAgent::start(vec![build.clone()]).await;
    placeholder.revoke().await.unwrap();
    let lease = register(&api.etcd, "a1", 4, &agent.endpoint()).await;

    // the whole log
    let (status, v) = api
        .call("GET", &format!("/v1/builds/{build}/log"), Some(READER), "")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, Value::String("line 1\nline 2\n".into()));

    // followed: the first chunk arrives before the agent has sent the last one
    let mut s = open(
        api.addr,
        &format!("/v1/builds/{build}/log?follow=true"),
        READER,
    )
    .await;
    let mut got = String::new();
    read_until(&mut s, &mut got, "line 1", Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{got}"
    );
    assert!(
        got.to_ascii_lowercase().contains("x-build-agent: a1"),
        "{got}"
    );
    assert!(!got.contains("line 2"), "{got}");
    agent.release.notify_one();
    read_until(&mut s, &mut got, "line 2", Duration::from_secs(5)).await;
    read_until(&mut s, &mut got, "0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        agent
            .requests
            .lock()
            .unwrap()
            .contains(&format!("/v1/builds/{build}/log?follow=true")),
        "{:?}",
        agent.requests.lock().unwrap()
    );

    // asked right after the submit, before the agent has taken the task: the request waits
    // for the agent instead of answering 404
    let asked = Instant::now();
    let early = {
        let (addr, path) = (api.addr, format!("/v1/builds/{other}/log"));
        tokio::task::spawn_blocking(move || {
            let h = [("Authorization", format!("Bearer {READER}"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            cellplane_testkit::nginx::http_request(addr, "GET", "api", &path, &h, b"").unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.builds.lock().unwrap().push(other.clone());
    let r = early.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "line 1\nline 2\n"));
    assert!(asked.elapsed() >= Duration::from_millis(300));

    // an ended build the agent has no log for: 404 at once; unknown build: 404
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let ended = v["build"].as_str().unwrap().to_string();
    let mut st = api.status(&ended).await;
    st.state = BuildState::Failed;
    assert!(dispatch::finish(&api.etcd, "a1", &st).await.unwrap());
    let asked = Instant::now();
    let (status, v) = api
        .call("GET", &format!("/v1/builds/{ended}/log"), Some(READER), "")
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(asked.elapsed() < Duration::from_secs(2));
    let (status, _) = api
        .call("GET", "/v1/builds/b-unknown/log", Some(READER), "")
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        api.call("GET", &format!("/v1/builds/{build}/log"), None, "")
            .await
            .0,
        401
    );

    // registered but not answering: 502 naming the agent
    drop(agent);
    let (status, v) = api
        .call("GET", &format!("/v1/builds/{build}/log"), Some(READER), "")
        .await;
    assert_eq!(status, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("a1"), "{v}");

    // gone (registration deleted): 502 saying so
    lease.revoke().await.unwrap();
    let (status, v) = api
        .call("GET", &format!("/v1/builds/{build}/log"), Some(READER), "")
        .await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not registered"),
        "{v}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_does_not_hold_up_shutdown() {
    let api = Api::start().await;
    let placeholder = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    let v = api
        .submit(request("https://git.example.com/team/app.git"))
        .await;
    let build = v["build"].as_str().unwrap().to_string();
    let agent = FakeAgent::start(vec![build.clone()]).await;
    placeholder.revoke().await.unwrap();
    let _lease = register(&api.etcd, "a1", 4, &agent.endpoint()).await;
    let mut s = open(
        api.addr,
        &format!("/v1/builds/{build}/log?follow=true"),
        READER,
    )
    .await;
    let mut got = String::new();
    read_until(&mut s, &mut got, "line 1", Duration::from_secs(5)).await;
    let started = Instant::now();
    api.stop().await; // never releases the agent
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn push(project: &str, branch: &str, after: &str, checkout_sha: Option<&str>) -> String {
    json!({
        "object_kind": "push",
        "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": after,
        "ref": format!("refs/heads/{branch}"),
        "checkout_sha": checkout_sha,
        "user_username": "jsmith",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "app",
            "path_with_namespace": project,
            "git_http_url": format!("https://gitlab.example.com/{project}.git"),
            "git_ssh_url": format!("git@gitlab.example.com:{project}.git"),
            "default_branch": "main"
        },
        "commits": [],
        "total_commits_count": 1,
        "repository": {"name": "app"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_webhook() {
    let api = Api::start().await;
    let _a1 = register(&api.etcd, "a1", 4, "http://127.0.0.1:1").await;
    let hook = |token: Option<&'static str>, event: &'static str| {
        let mut h = vec![("X-Gitlab-Event", event)];
        if let Some(t) = token {
            h.push(("X-Gitlab-Token", t));
        }
        h
    };
    let body = push("team/app", "main", COMMIT, Some(COMMIT));

    // wrong or missing token: 401, nothing written
    for token in [None, Some("wrong-secret-0123456789"), Some("")] {
        let (status, v) = api
            .request(
                "POST",
                "/v1/webhooks/gitlab",
                &hook(token, "Push Hook"),
                &body,
            )
            .await;
        assert_eq!(status, 401, "{token:?}: {v}");
    }
    // a bearer token is not the webhook secret
    let (status, _) = api
        .request(
            "POST",
            "/v1/webhooks/gitlab",
            &[
                ("X-Gitlab-Event", "Push Hook"),
                ("Authorization", "Bearer admin-token-0123456789"),
            ],
            &body,
        )
        .await;
    assert_eq!(status, 401);
    assert!(api.build_keys().await.is_empty());

    // the right token: the project's build of the pushed commit
    let (status, v) = api
        .request(
            "POST",
            "/v1/webhooks/gitlab",
            &hook(Some(SECRET), "Push Hook"),
            &body,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (
            v["project"].as_str(),
            v["branch"].as_str(),
            v["commit"].as_str()
        ),
        (Some("team/app"), Some("main"), Some(COMMIT))
    );
    let build = v["build"].as_str().unwrap();
    let task = api.task("a1", build).await.expect("task");
    assert_eq!(task.submitted_by, "webhook:team/app");
    assert_eq!(task.request.repo, "https://gitlab.example.com/team/app.git");
    assert_eq!(task.request.git_ref, COMMIT);
    assert_eq!(task.request.image, "team/app");
    assert_eq!(task.request.dockerfile, "docker/Dockerfile");
    assert!(
        task.request.tag.is_none(),
        "tagged with the commit by the agent"
    );
    assert_eq!(api.status(build).await.state, BuildState::Queued);
    // a branch matching a prefix pattern
    let (status, v) = api
        .request(
            "POST",
            "/v1/webhooks/gitlab",
            &hook(Some(SECRET), "Push Hook"),
            &push("team/app", "release/1.2", COMMIT, Some(COMMIT)),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let written = api.build_keys().await.len();
    assert_eq!(written, 4, "two tasks and two statuses");

    // ignored: a branch deletion, a branch outside the filter, other events
    let deletion = push(
        "team/app",
        "main",
        "0000000000000000000000000000000000000000",
        None,
    );
    let other_branch = push("team/app", "feature/x", COMMIT, Some(COMMIT));
    for (event, body, want) in [
        ("Push Hook", deletion.as_str(), 200),
        ("Push Hook", other_branch.as_str(), 200),
        ("Merge Request Hook", body.as_str(), 202),
    ] {
        let (status, v) = api
            .request(
                "POST",
                "/v1/webhooks/gitlab",
                &hook(Some(SECRET), event),
                body,
            )
            .await;
        assert_eq!(status, want, "{event} {body}: {v}");
        assert_eq!(v["ignored"], true, "{v}");
    }
    // an unknown project: 404 naming it
    let (status, v) = api
        .request(
            "POST",
            "/v1/webhooks/gitlab",
            &hook(Some(SECRET), "Push Hook"),
            &push("team/other", "main", COMMIT, Some(COMMIT)),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("team/other"), "{v}");
    // malformed
    let (status, v) = api
        .request(
            "POST",
            "/v1/webhooks/gitlab",
            &hook(Some(SECRET), "Push Hook"),
            "{",
        )
        .await;
    assert_eq!((status, v["field"].as_str()), (400, Some("body")), "{v}");
    assert_eq!(
        api.build_keys().await.len(),
        written,
        "nothing more written"
    );

    let (_, m) = api.call("GET", "/metrics", None, "").await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("cellplane_api_builds_submitted_total{source=\"webhook\"} 2"),
        "{m}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agents_queued_build_moves_to_another_agent() {
    let api = Api::start().await;
    let _a1 = register(&api.etcd, "a1", 8, "http://127.0.0.1:1").await;
    let a2 = register(&api.etcd, "a2", 8, "http://127.0.0.1:1").await;
    let repo = repo_for("a2", ["a1", "a2"]);
    let mut builds = BTreeMap::new();
    for _ in 0..2 {
        let v = api.submit(request(&repo)).await;
        assert_eq!(v["agent"], "a2", "{v}");
        builds.insert(v["build"].as_str().unwrap().to_string(), ());
    }
    // a2 stops keeping its lease alive; the recovery loop that `run` started moves its tasks
    drop(a2);
    let deadline = Instant::now() + Duration::from_secs(15);
    for build in builds.keys() {
        loop {
            let st = api.status(build).await;
            if st.agent == "a1" {
                assert_eq!(st.state, BuildState::Queued);
                assert!(api.task("a1", build).await.is_some());
                assert!(api.task("a2", build).await.is_none());
                assert!(st.history[0].contains("a2"), "{:?}", st.history);
                break;
            }
            assert!(Instant::now() < deadline, "{build} not moved: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, v) = api.call("GET", "/v1/builds/agents", Some(READER), "").await;
    assert_eq!(v["agents"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["agents"][0]["queued"], 2, "{v}");
    api.stop().await;
}
