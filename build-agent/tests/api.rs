//! End to end through the control API: builds submitted over HTTP (and by a GitLab push) are
//! dispatched to the same agent for the same repository, built and pushed by the real agents,
//! and their logs are followed through the API's proxy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cellplane_build::{BuildState, BuildStatus};
use cellplane_control_api::auth::Scope;
use cellplane_control_api::config::WebhookProject;
use cellplane_control_api::{ApiConfig, TokenConfig};
use cellplane_etcd::EtcdConfig;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);
const TOKEN: &str = "cpba-builder-token";
const HOOK_SECRET: &str = "cpba-hook-secret";

/// A blocking request with a JSON body: (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn submit(api: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (code, text) = http(
        api,
        "POST",
        "/v1/builds",
        &[("Authorization", &auth)],
        &body.to_string(),
    );
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_end(api: &str, build: &str) -> BuildStatus {
    let deadline = std::time::Instant::now() + T;
    loop {
        let auth = format!("Bearer {TOKEN}");
        let (code, text) = http(
            api,
            "GET",
            &format!("/v1/builds/{build}"),
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(code, 200, "{text}");
        let s: BuildStatus = serde_json::from_str(&text).unwrap();
        if s.state.is_terminal() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{build} did not end: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_through_the_control_api_and_the_gitlab_webhook() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, commit) = GitRepo::simple("RUN cat /app.txt\n");
    let mut a1 = AgentProc::spawn(env.agent("cpba-api1", &storage));
    let mut a2 = AgentProc::spawn(env.agent("cpba-api2", &storage));
    a1.wait_ready(&env).await;
    a2.wait_ready(&env).await;

    // the control API, in process; the builder's token (builds:write) also reads
    let port = cellplane_testkit::free_port();
    let api = format!("127.0.0.1:{port}");
    let config = ApiConfig {
        listen: api.parse().unwrap(),
        etcd: EtcdConfig {
            endpoints: vec![env.etcd_server.endpoint()],
            prefix: env.prefix.clone(),
            ..EtcdConfig::default()
        },
        tokens: vec![TokenConfig {
            name: "builder".into(),
            token: TOKEN.into(),
            scopes: vec![Scope::BuildsWrite],
        }],
        webhook: cellplane_control_api::config::WebhookConfig {
            gitlab_secret: Some(HOOK_SECRET.into()),
            gitlab_secret_file: None,
            projects: vec![WebhookProject {
                path: "team/app".into(),
                repo: Some(repo.url()),
                image: "cpba/hook".into(),
                dockerfile: "Dockerfile".into(),
                context: ".".into(),
                branches: vec!["main".into()],
                compile: None,
                retry: false,
                step_timeout_secs: None,
            }],
        },
        ..ApiConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cellplane_control_api::run(config, async move {
        let _ = stop_rx.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(&api, "/healthz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "control-api did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = |path: String| {
        let api = api.clone();
        async move {
            let auth = format!("Bearer {TOKEN}");
            http(&api, "GET", &path, &[("Authorization", &auth)], "")
        }
    };

    // a malicious tag is refused at submit, and nothing is dispatched
    let (code, body) = submit(
        &api,
        &json!({"repo": repo.url(), "ref": "main", "image": "cpba/app", "tag": "../../x"}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("tag"), "{body}");

    // two builds of one repository: the same agent; commit-id tag; pushed
    let req = json!({"repo": repo.url(), "ref": "main", "image": "cpba/app"});
    let (code, first) = submit(&api, &req);
    assert_eq!(code, 201, "{first}");
    let (code, second) = submit(&api, &req);
    assert_eq!(code, 201, "{second}");
    assert_eq!(
        first["agent"], second["agent"],
        "same repository, same agent"
    );
    let b1 = first["build"].as_str().unwrap().to_string();
    let b2 = second["build"].as_str().unwrap().to_string();

    // follow the first build's log through the API's proxy while it runs
    let follower = Follower::start_with(&api, &b1, &format!("Authorization: Bearer {TOKEN}\r\n"));
    let s1 = wait_end(&api, &b1).await;
    let s2 = wait_end(&api, &b2).await;
    for s in [&s1, &s2] {
        assert_eq!(s.state, BuildState::Succeeded, "{s:#?}");
        assert_eq!(s.agent, first["agent"].as_str().unwrap());
        assert_eq!(s.commit.as_deref(), Some(commit.as_str()));
        for st in &s.steps {
            assert!(st.duration_ms.is_some() && st.ok == Some(true), "{st:?}");
        }
    }
    // both ran at once and pushed the same tag: it names the one pushed last, and each
    // build's own manifest is in the registry under its digest
    let tagged = skopeo_digest(&env.registry.address(), "cpba/app", &commit, None);
    let d1 = s1.digest.clone().unwrap();
    let d2 = s2.digest.clone().unwrap();
    assert!(
        tagged == d1 || tagged == d2,
        "{tagged} is neither {d1} nor {d2}"
    );
    for d in [&d1, &d2] {
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(format!("docker://{}/cpba/app@{d}", env.registry.address()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{d}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d.as_str());
    }
    let followed = follower.wait_end(T).await;
    let (_, direct) = get(format!("/v1/builds/{b1}/log")).await;
    assert!(followed.contains("push"), "{followed}");
    assert_eq!(followed, direct, "the followed log is the whole log");

    // the agents list shows both, with nothing left queued
    let (code, agents) = get("/v1/builds/agents".into()).await;
    assert_eq!(code, 200, "{agents}");
    assert!(
        agents.contains("cpba-api1") && agents.contains("cpba-api2"),
        "{agents}"
    );

    // a GitLab push: wrong token refused; right token builds the pushed commit
    repo.write("app.txt", "pushed\n");
    let pushed = repo.commit("pushed");
    let event = json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": commit,
        "after": pushed,
        "checkout_sha": pushed,
        "project": {"path_with_namespace": "team/app", "git_http_url": "https://gitlab.invalid/team/app.git"},
    })
    .to_string();
    let (code, _) = http(
        &api,
        "POST",
        "/v1/webhooks/gitlab",
        &[("X-Gitlab-Token", "wrong"), ("X-Gitlab-Event", "Push Hook")],
        &event,
    );
    assert_eq!(code, 401);
    let (code, text) = http(
        &api,
        "POST",
        "/v1/webhooks/gitlab",
        &[
            ("X-Gitlab-Token", HOOK_SECRET),
            ("X-Gitlab-Event", "Push Hook"),
        ],
        &event,
    );
    assert_eq!(code, 201, "{text}");
    let hook: Value = serde_json::from_str(&text).unwrap();
    let hb = hook["build"].as_str().unwrap();
    let sh = wait_end(&api, hb).await;
    assert_eq!(sh.state, BuildState::Succeeded, "{sh:#?}");
    assert_eq!(sh.commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(
        sh.agent,
        first["agent"].as_str().unwrap(),
        "same repository, same agent"
    );
    let hd = skopeo_digest(&env.registry.address(), "cpba/hook", &pushed, None);
    assert_eq!(sh.digest.as_deref(), Some(hd.as_str()));

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("control-api stops")
        .unwrap()
        .unwrap();
    a1.terminate(Duration::from_secs(20));
    a2.terminate(Duration::from_secs(20));
}
