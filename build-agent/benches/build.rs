//! Build-agent benchmark against real components (etcd, git, podman, buildah, docker-registry)
//! and the real binary. Writes `target/bench/build.json`:
//!
//! - `dispatch_p50_ms`, `dispatch_p99_ms`: from `dispatch::submit` returning to the status
//!   showing `running` with its first step started (seen through an etcd watch), over
//!   `dispatch_n` lightweight builds run one after the other (a ref that does not exist: fetch,
//!   then checkout fails).
//! - `cold_build_ms`, `warm_build_ms`: submit → `succeeded` for the first and the second build
//!   of a repository with a compile step filling a dependency cache (cold: no git cache, no
//!   dependency cache; warm: both filled), with per-step durations. Each of the `dependencies`
//!   costs 100 ms to "download" (a sleep standing in for the network: no remote repository
//!   can be reached here), so the cache's effect shows in `compile`.
//!
//! Run: `cargo bench -p cellplane-build-agent --bench build`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cellplane_build::{BuildState, BuildStatus};
use cellplane_etcd::{watch_prefix, WatchStream, WatchUpdate};
use cellplane_testkit::bench::{percentile, write_report};
use common::*;

const DISPATCH_N: usize = 40;
const DEPS: usize = 20;

/// Waits on the status watch until `pred` holds for `build`; returns when it was seen.
async fn seen(
    watch: &mut WatchStream,
    build: &str,
    pred: impl Fn(&BuildStatus) -> bool,
) -> (Instant, BuildStatus) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let u = tokio::time::timeout(left, watch.next())
            .await
            .unwrap_or_else(|_| panic!("build {build}: no matching status within 120 s"))
            .expect("watch ended");
        let at = Instant::now();
        let kvs = match u {
            WatchUpdate::Events { events, .. } => events.into_iter().map(|e| e.kv).collect(),
            WatchUpdate::Resync { kvs, .. } => kvs,
        };
        for kv in kvs {
            if let Ok(s) = kv.json::<BuildStatus>() {
                if s.build == build && pred(&s) {
                    return (at, s);
                }
            }
        }
    }
}

fn steps(s: &BuildStatus) -> BTreeMap<String, u64> {
    s.steps
        .iter()
        .map(|x| (x.name.clone(), x.duration_ms.unwrap_or(0)))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !require_tools() {
        return;
    }
    let env = Env::new().await;
    let storage = Storage::new();
    let mut agent = AgentProc::spawn(env.agent("cpba-bench", &storage));
    agent.wait_ready(&env).await;
    let mut watch = watch_prefix(
        env.etcd.clone(),
        env.etcd.keys().all_build_status(),
        Some(env.etcd.revision().await.unwrap()),
    );

    // dispatch latency
    let (light, _) = GitRepo::simple("");
    let mut lat = Vec::new();
    for i in 0..DISPATCH_N {
        let build = format!("bd-{i}");
        let mut req = request(&light.url());
        req.git_ref = "no-such-ref".into();
        env.submit(&task(&build, req)).await;
        let t0 = Instant::now();
        let (at, _) = seen(&mut watch, &build, |s| {
            s.state == BuildState::Running && !s.steps.is_empty()
        })
        .await;
        lat.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        seen(&mut watch, &build, |s| s.state.is_terminal()).await;
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // cold vs warm build of one repository with a compile step and a dependency cache
    let repo = GitRepo::new();
    repo.write(
        "Dockerfile",
        &format!("FROM {BASE_IMAGE}\nCOPY out/app.bin /app.bin\nRUN wc -c /app.bin\n"),
    );
    repo.write(
        "build.sh",
        "#!/bin/sh\nset -e\nfor f in deps/*.jar; do n=$(basename \"$f\"); [ -f \"/cache/$n\" ] || { sleep 0.1; cp \"$f\" \"/cache/$n\"; echo \"downloaded $n\"; }; done\nmkdir -p out\ncat /cache/*.jar > out/app.bin\n",
    );
    for i in 0..DEPS {
        repo.write(&format!("deps/lib{i}.jar"), &"x".repeat(64 * 1024));
    }
    repo.commit("bench app");
    let mut req = request(&repo.url());
    req.compile = Some(compile("sh build.sh"));
    let mut builds = Vec::new();
    for build in ["bw-cold", "bw-warm"] {
        env.submit(&task(build, req.clone())).await;
        let t0 = Instant::now();
        let (at, s) = seen(&mut watch, build, |s| s.state.is_terminal()).await;
        assert_eq!(s.state, BuildState::Succeeded, "{s:#?}");
        builds.push((at.duration_since(t0).as_secs_f64() * 1000.0, s));
    }
    let out = serde_json::json!({
        "dispatch_p50_ms": (percentile(&lat, 0.50) * 100.0).round() / 100.0,
        "dispatch_p99_ms": (percentile(&lat, 0.99) * 100.0).round() / 100.0,
        "dispatch_max_ms": (lat[lat.len() - 1] * 100.0).round() / 100.0,
        "dispatch_n": lat.len(),
        "cold_build_ms": builds[0].0.round(),
        "warm_build_ms": builds[1].0.round(),
        "cold_steps_ms": steps(&builds[0].1),
        "warm_steps_ms": steps(&builds[1].1),
        "cold_compile": builds[0].1.steps.iter().find(|s| s.name == "compile").and_then(|s| s.message.clone()),
        "warm_compile": builds[1].1.steps.iter().find(|s| s.name == "compile").and_then(|s| s.message.clone()),
        "dependencies": DEPS,
    });
    write_report("build", &out);
    drop(agent);
}
