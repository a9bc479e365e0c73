//! Builds end to end with the real binary: etcd, git, buildah, podman, docker-registry, skopeo.
//! Each test has its own etcd, registry, containers storage, repositories and agents.

mod common;

use std::time::Duration;

use cellplane_build::BuildState;
use common::*;

const T: Duration = Duration::from_secs(90);

/// Two agents; builds of one repository land on the same agent; the image is in the registry
/// under the commit id; the digest in the status is the registry's; every step is timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_repo_same_agent_and_image_pushed_with_commit_tag() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, commit) = GitRepo::simple("RUN cat /app.txt\n");
    let mut a1 = AgentProc::spawn(env.agent("cpba-a1", &storage));
    let mut a2 = AgentProc::spawn(env.agent("cpba-a2", &storage));
    a1.wait_ready(&env).await;
    a2.wait_ready(&env).await;

    let first = env.submit(&task("b-1", request(&repo.url()))).await;
    let s = env.wait_end("b-1", T).await;
    assert_state(&s, BuildState::Succeeded);
    assert_eq!(s.agent, first);
    assert_eq!(s.commit.as_deref(), Some(commit.as_str()));
    let image = format!("{}/cpba/app:{commit}", env.registry.address());
    assert_eq!(s.image.as_deref(), Some(image.as_str()));
    let digest = skopeo_digest(&env.registry.address(), "cpba/app", &commit, None);
    assert_eq!(s.digest.as_deref(), Some(digest.as_str()), "{s:#?}");
    let names: Vec<&str> = s.steps.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["fetch", "checkout", "build", "push"]);
    for st in &s.steps {
        assert_eq!(st.ok, Some(true), "{st:?}");
        assert!(st.duration_ms.is_some() && st.started_at_ms > 0, "{st:?}");
    }
    assert!(s.started_at_ms.is_some() && s.finished_at_ms.is_some());
    assert!(
        !env.task_exists(&first, "b-1").await,
        "task key removed at the end"
    );

    // the same repository again (a new commit, an explicit tag): the same agent, warm cache
    repo.write("app.txt", "second\n");
    let commit2 = repo.commit("second");
    let mut req = request(&repo.url());
    req.tag = Some("v2".into());
    let to = env.submit(&task("b-2", req)).await;
    assert_eq!(to, first, "same repository, same agent");
    let s2 = env.wait_end("b-2", T).await;
    assert_state(&s2, BuildState::Succeeded);
    assert_eq!(s2.commit.as_deref(), Some(commit2.as_str()));
    assert_eq!(
        step(&s2, "fetch").message.as_deref(),
        Some("updated the cached clone")
    );
    let d2 = skopeo_digest(&env.registry.address(), "cpba/app", "v2", None);
    assert_eq!(s2.digest.as_deref(), Some(d2.as_str()));

    // the log over HTTP, from the agent that ran it; 404 elsewhere and for unknown builds
    let (ran, other) = if first == a1.name {
        (&a1, &a2)
    } else {
        (&a2, &a1)
    };
    let (code, body) = http_get(&ran.endpoint(), "/v1/builds/b-1/log");
    assert_eq!(code, 200);
    assert!(body.contains("==> step fetch"), "{body}");
    assert!(body.contains("<== step push ok in"), "{body}");
    assert!(
        body.contains("hello from cellplane"),
        "RUN output is logged: {body}"
    );
    assert_eq!(body, ran.log_file("b-1"));
    let (code, body) = http_get(&other.endpoint(), "/v1/builds/b-1/log");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, _) = http_get(&ran.endpoint(), "/v1/builds/NOT..valid/log");
    assert_eq!(code, 400);
    // finished build + follow: the whole log, then the end
    let (code, body) = http_get(&ran.endpoint(), "/v1/builds/b-1/log?follow=true");
    assert_eq!(code, 200);
    assert_eq!(body, ran.log_file("b-1"));

    let (code, metrics) = http_get(&ran.endpoint(), "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cellplane_build_agent_builds_succeeded_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cellplane_build_agent_step_duration_seconds_count{step=\"push\"} 2"));
    // workspaces are removed, caches stay; pushed images are removed locally
    let ws: Vec<_> = std::fs::read_dir(ran.work_dir().join("workspaces"))
        .unwrap()
        .collect();
    assert!(ws.is_empty(), "{ws:?}");
    assert_eq!(
        std::fs::read_dir(ran.work_dir().join("git"))
            .unwrap()
            .count(),
        1
    );
    // the local image goes right after the status is written
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while storage.images().contains("cellplane-build/") || storage.images().contains("cpba/app") {
        assert!(
            std::time::Instant::now() < deadline,
            "pushed images not removed: {}",
            storage.images()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The script a test repository compiles with: copies each dependency from the repository's
/// `deps/` (the local "dependency source") into the cache only when missing.
const FETCH_DEPS: &str = r#"#!/bin/sh
set -e
for f in deps/*.jar; do
  n=$(basename "$f")
  if [ -f "/cache/$n" ]; then echo "cache hit $n"; else cp "$f" "/cache/$n"; echo "downloaded $n"; fi
done
mkdir -p out
cat /cache/*.jar > out/app.bin
echo "compiled $(wc -c < out/app.bin) bytes"
"#;

/// The second build of a repository finds its dependencies in the per-repository cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_build_uses_the_dependency_cache() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let repo = GitRepo::new();
    repo.write(
        "Dockerfile",
        &format!("FROM {BASE_IMAGE}\nCOPY out/app.bin /app.bin\n"),
    );
    repo.write("build.sh", FETCH_DEPS);
    for d in ["alpha", "beta", "gamma"] {
        repo.write(&format!("deps/{d}.jar"), &format!("{d}-bytes\n"));
    }
    repo.commit("app with deps");
    let mut a1 = AgentProc::spawn(env.agent("cpba-dc", &storage));
    a1.wait_ready(&env).await;

    let mut req = request(&repo.url());
    req.compile = Some(compile("sh build.sh"));
    env.submit(&task("dc-1", req.clone())).await;
    let s1 = env.wait_end("dc-1", T).await;
    assert_state(&s1, BuildState::Succeeded);
    let log1 = a1.log_file("dc-1");
    for d in ["alpha", "beta", "gamma"] {
        assert!(log1.contains(&format!("downloaded {d}.jar")), "{log1}");
    }
    assert!(!log1.contains("cache hit"), "{log1}");
    assert_eq!(
        step(&s1, "compile").message.as_deref(),
        Some("dependency cache: 0 reused, 3 added")
    );

    env.submit(&task("dc-2", req)).await;
    let s2 = env.wait_end("dc-2", T).await;
    assert_state(&s2, BuildState::Succeeded);
    let log2 = a1.log_file("dc-2");
    for d in ["alpha", "beta", "gamma"] {
        assert!(log2.contains(&format!("cache hit {d}.jar")), "{log2}");
    }
    assert!(!log2.contains("downloaded"), "{log2}");
    assert_eq!(
        step(&s2, "compile").message.as_deref(),
        Some("dependency cache: 3 reused, 0 added")
    );
    let names: Vec<&str> = s2.steps.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["fetch", "checkout", "compile", "build", "push"]);
    assert!(
        storage.podman_containers().trim().is_empty(),
        "compile containers are removed"
    );
}

/// `?follow=true` streams lines while the build runs and ends with the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_the_log_while_the_build_runs() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut a1 = AgentProc::spawn(env.agent("cpba-lg", &storage));
    a1.wait_ready(&env).await;
    let mut req = request(&repo.url());
    req.compile = Some(compile(
        "echo fir''st-line; sleep 3; echo seco''nd-line; mkdir -p out",
    ));
    env.submit(&task("lg-1", req)).await;
    env.wait_status("lg-1", T, |s| s.state == BuildState::Running)
        .await;
    let follower = Follower::start(&a1.endpoint(), "lg-1");
    let early = follower.wait_for("first-line", T).await;
    assert!(!early.contains("second-line"), "{early}");
    let st = env.status("lg-1").await.unwrap();
    assert_eq!(
        st.state,
        BuildState::Running,
        "the first line arrived before the build ended"
    );
    let full = follower.wait_end(T).await;
    assert!(full.contains("second-line"), "{full}");
    assert!(full.contains("==> build lg-1 succeeded"), "{full}");
    let s = env.wait_end("lg-1", T).await;
    assert_state(&s, BuildState::Succeeded);
    assert_eq!(full, a1.log_file("lg-1"), "the stream is the whole log");
    assert_eq!(follower.get().0, 200);
}

/// Bad ref, failing Dockerfile, unreachable registry, hostile tasks written straight into etcd,
/// a Dockerfile symlinked out of the repository: each ends `failed` with the step and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_step_and_the_reason() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let mut a1 = AgentProc::spawn(env.agent("cpba-fl", &storage));
    let mut dead_registry = env.agent("cpba-fl-noreg", &storage);
    dead_registry.registry = format!("127.0.0.1:{}", cellplane_testkit::free_port());
    let mut a2 = AgentProc::spawn(dead_registry);
    a1.wait_ready(&env).await;
    a2.wait_ready(&env).await;
    let (good, _) = GitRepo::simple("");

    // a ref that does not exist
    let mut req = request(&good.url());
    req.git_ref = "no-such-branch".into();
    let t = task("fl-ref", req);
    let agent = env.submit(&t).await;
    let s = env.wait_end("fl-ref", T).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(s.failed_step.as_deref(), Some("checkout"));
    let e = s.error.clone().unwrap();
    assert!(
        e.contains("no-such-branch") && e.contains("not found"),
        "{e}"
    );

    // RUN false
    let (bad, _) = GitRepo::simple("RUN echo about-to-fail >&2; false\n");
    env.submit(&task("fl-run", request(&bad.url()))).await;
    let s = env.wait_end("fl-run", T).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(s.failed_step.as_deref(), Some("build"), "{s:#?}");
    let e = s.error.clone().unwrap();
    assert!(e.contains("buildah bud exited with status"), "{e}");
    assert!(e.contains("about-to-fail"), "the tail of stderr: {e}");
    assert_eq!(step(&s, "build").ok, Some(false));

    // a Dockerfile that is a symlink to a file outside the repository
    let evil = GitRepo::new();
    evil.write("app.txt", "x\n");
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), format!("FROM {BASE_IMAGE}\n")).unwrap();
    evil.symlink(outside.path().to_str().unwrap(), "Dockerfile");
    evil.symlink("../../../../../../../../etc", "ctx");
    evil.commit("symlinks out");
    env.submit(&task("fl-link", request(&evil.url()))).await;
    let s = env.wait_end("fl-link", T).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(s.failed_step.as_deref(), Some("checkout"));
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("resolves outside the repository"),
        "{s:#?}"
    );
    let mut req = request(&evil.url());
    req.dockerfile = "ctx/passwd".into();
    env.submit(&task("fl-link2", req)).await;
    let s = env.wait_end("fl-link2", T).await;
    assert_eq!(s.failed_step.as_deref(), Some("checkout"));
    assert!(s
        .error
        .as_deref()
        .unwrap()
        .contains("outside the repository"));

    // tasks written straight into etcd, past the control API's validation
    let keys = env.etcd.keys();
    let put = |build: &str, mutate: &dyn Fn(&mut cellplane_build::BuildTask)| {
        let mut t = task(build, request(&good.url()));
        mutate(&mut t);
        (
            keys.build_task(&agent, build),
            serde_json::to_vec(&t).unwrap(),
        )
    };
    type Hostile<'a> = (&'a str, (String, Vec<u8>), &'a str);
    let hostile: Vec<Hostile> = vec![
        (
            "fl-tag",
            put("fl-tag", &|t| t.request.tag = Some("../../etc/x".into())),
            "invalid tag",
        ),
        (
            "fl-path",
            put("fl-path", &|t| {
                t.request.dockerfile = "../../../etc/passwd".into()
            }),
            "invalid dockerfile",
        ),
        (
            "fl-repo",
            put("fl-repo", &|t| {
                t.request.repo = "--upload-pack=touch /tmp/cpba-pwned".into()
            }),
            "invalid repo",
        ),
        (
            "fl-key",
            put("fl-key", &|t| t.build = "someone-else".into()),
            "task key names build fl-key",
        ),
    ];
    for (build, (key, value), want) in &hostile {
        env.etcd.put(key, value.clone()).await.unwrap();
        let s = env.wait_end(build, T).await;
        assert_state(&s, BuildState::Failed);
        let e = s.error.clone().unwrap();
        assert!(e.contains(want), "{build}: {e}");
        assert!(s.steps.is_empty(), "{build} never started: {s:#?}");
        assert!(!env.task_exists(&agent, build).await);
    }
    assert!(!std::path::Path::new("/tmp/cpba-pwned").exists());
    assert!(
        env.status("someone-else").await.is_none(),
        "nothing written for the build the task claimed"
    );

    // the registry does not answer
    let mut req = request(&good.url());
    req.image = "cpba/noreg".into();
    let t = task("fl-push", req);
    // straight to the agent whose registry is dead (same protocol as submit)
    let status = cellplane_build::BuildStatus::queued(&t, &a2.name);
    env.etcd
        .put(
            &keys.build_status("fl-push"),
            serde_json::to_vec(&status).unwrap(),
        )
        .await
        .unwrap();
    env.etcd
        .put(
            &keys.build_task(&a2.name, "fl-push"),
            serde_json::to_vec(&t).unwrap(),
        )
        .await
        .unwrap();
    let s = env.wait_end("fl-push", T).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(s.failed_step.as_deref(), Some("push"), "{s:#?}");
    let e = s.error.clone().unwrap();
    assert!(e.contains("buildah push exited with status"), "{e}");
    assert!(
        e.contains("connection refused") || e.contains("connect"),
        "{e}"
    );
    let hostile_agent = if agent == a1.name { &a1 } else { &a2 };
    let (_, metrics) = http_get(&hostile_agent.endpoint(), "/metrics");
    assert!(
        metrics.contains("cellplane_build_agent_tasks_refused_total 4"),
        "{metrics}"
    );
}

/// Cancelling a running build kills its step and ends it `cancelled`; a step that outlives its
/// timeout is killed and fails with "timed out after N s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_step_timeout() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut a1 = AgentProc::spawn(env.agent("cpba-cx", &storage));
    a1.wait_ready(&env).await;

    let mut req = request(&repo.url());
    req.compile = Some(compile("echo compi''ling; sleep 300"));
    env.submit(&task("cx-1", req.clone())).await;
    env.wait_status("cx-1", T, |s| s.state == BuildState::Running)
        .await;
    let follower = Follower::start(&a1.endpoint(), "cx-1");
    follower.wait_for("compiling", T).await;
    let t0 = std::time::Instant::now();
    cellplane_build::dispatch::cancel(&env.etcd, "cx-1")
        .await
        .unwrap();
    let s = env.wait_end("cx-1", Duration::from_secs(30)).await;
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_state(&s, BuildState::Cancelled);
    assert_eq!(s.error.as_deref(), Some("cancelled during step compile"));
    assert_eq!(step(&s, "compile").ok, Some(false));
    follower.wait_end(T).await;
    // the container and its sleep are gone
    assert!(storage.podman_containers().trim().is_empty());

    let mut req = request(&repo.url());
    req.compile = Some(compile("sleep 300"));
    req.step_timeout_secs = Some(2);
    env.submit(&task("cx-2", req)).await;
    let s = env.wait_end("cx-2", Duration::from_secs(60)).await;
    assert_state(&s, BuildState::Failed);
    assert_eq!(s.failed_step.as_deref(), Some("compile"));
    assert_eq!(
        s.error.as_deref(),
        Some("step compile failed: timed out after 2 s")
    );
    let c = step(&s, "compile");
    assert!(
        c.duration_ms.unwrap() >= 2000 && c.duration_ms.unwrap() < 15_000,
        "{c:?}"
    );
    assert!(storage.podman_containers().trim().is_empty());
    let (_, metrics) = http_get(&a1.endpoint(), "/metrics");
    assert!(
        metrics.contains("cellplane_build_agent_builds_cancelled_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cellplane_build_agent_builds_failed_total 1"),
        "{metrics}"
    );
}

/// A registry with basic auth: the push works with the auth file, and neither the password nor
/// its base64 form appear in the build log, the status or the daemon's stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_never_logged() {
    use cellplane_testkit::registry::{Registry, TEST_PASSWORD, TEST_USER};
    if !require_tools() {
        return;
    }
    let env = Env::with_registry(Registry::start_with_auth()).await;
    let storage = Storage::new();
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.json");
    let b64 = base64(&format!("{TEST_USER}:{TEST_PASSWORD}"));
    std::fs::write(
        &auth_file,
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{b64}\"}}}}}}",
            env.registry.address()
        ),
    )
    .unwrap();
    // a repository URL with credentials in it, printed by git on failure
    let mut opts = env.agent("cpba-cr", &storage);
    opts.auth_file = Some(auth_file);
    let mut a1 = AgentProc::spawn(opts);
    a1.wait_ready(&env).await;
    // the Dockerfile prints the password: a build's own output is redacted too
    let (repo, commit) = GitRepo::simple(&format!("RUN echo leaked {TEST_PASSWORD} {b64}\n"));
    env.submit(&task("cr-1", request(&repo.url()))).await;
    let s = env.wait_end("cr-1", T).await;
    assert_state(&s, BuildState::Succeeded);
    let d = skopeo_digest(
        &env.registry.address(),
        "cpba/app",
        &commit,
        Some(&format!("{TEST_USER}:{TEST_PASSWORD}")),
    );
    assert_eq!(s.digest.as_deref(), Some(d.as_str()));

    let mut req = request("https://cpba-user:cpba-url-s3cret@127.0.0.1:1/team/app.git");
    req.image = "cpba/other".into();
    env.submit(&task("cr-2", req)).await;
    let s2 = env.wait_end("cr-2", T).await;
    assert_state(&s2, BuildState::Failed);

    let log = a1.log_file("cr-1") + &a1.log_file("cr-2");
    assert!(log.contains("leaked ***"), "{log}");
    let status = serde_json::to_string(&s).unwrap() + &serde_json::to_string(&s2).unwrap();
    let stderr = a1.stderr();
    for secret in [TEST_PASSWORD, b64.as_str(), "cpba-url-s3cret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!status.contains(secret), "{secret} in a status: {status}");
        assert!(!stderr.contains(secret), "{secret} in stderr:\n{stderr}");
    }
    // the auth file is what made the push work: without it the registry refuses
    let mut plain = env.agent("cpba-cr-noauth", &storage);
    plain.capacity = 1;
    let mut a2 = AgentProc::spawn(plain);
    a2.wait_ready(&env).await;
    drop(a1);
    env.wait_status("cr-1", T, |_| true).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a1's registration expires
    env.submit(&task("cr-3", request(&repo.url()))).await;
    let s3 = env.wait_end("cr-3", T).await;
    assert_state(&s3, BuildState::Failed);
    assert_eq!(s3.failed_step.as_deref(), Some("push"));
    assert!(
        s3.error
            .as_deref()
            .unwrap()
            .contains("authentication required"),
        "{s3:#?}"
    );
}

fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// With capacity 1, builds run one at a time in the order they were submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_runs_in_submission_order_within_capacity() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let (repo, _) = GitRepo::simple("");
    let mut opts = env.agent("cpba-q", &storage);
    opts.capacity = 1;
    let mut a = AgentProc::spawn(opts);
    a.wait_ready(&env).await;
    let builds = ["q-3", "q-1", "q-2"]; // ids in another order than submission
    for b in builds {
        env.submit(&task(b, request(&repo.url()))).await;
    }
    let mut spans = Vec::new();
    for b in builds {
        let s = env.wait_end(b, T).await;
        assert_state(&s, BuildState::Succeeded);
        spans.push((s.started_at_ms.unwrap(), s.finished_at_ms.unwrap()));
    }
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "one at a time, in submission order: {spans:?}"
        );
    }
}
