//! `make bench`: ADD and DEL exec'd as a runtime does (fresh pod netns each), for cellplane
//! (real etcd + private OVS, userspace bridge) and, side by side in the same run and by the
//! same harness, the reference plugins (`bridge` + `host-local` from
//! containernetworking-plugins). Writes `target/bench/cni.json`.
//!
//! Our DEL answers before its detached child has deleted the veth; the harness waits (untimed)
//! for that child before it times the reference's DEL, and reports how long after the answer
//! it was done (`del_veth_deleted_after_answer_p50_ms`).
//!
//! `CELLPLANE_BENCH_N` sets the iterations (default 50).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use cellplane_testkit::bench::{bench_dir, percentile, write_report};
use cellplane_testkit::netns::unique_name;
use common::*;
use serde_json::{json, Value};

const REF_DIR: &str = "/usr/lib/cni";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Exec a reference plugin the way `Call` execs ours (same env handling, same setns).
fn ref_call(node: &Node, command: &str, cid: &str, netns: &str, conf: &Value) -> Out {
    let mut c = Call::new(node, command, conf).cid(cid).netns(netns);
    c.args = Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1");
    let (mut cmd, _ns) = c.command();
    // same Command, other program: rebuild it with the reference binary
    let mut r = std::process::Command::new(format!("{REF_DIR}/bridge"));
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            r.env(k, v);
        }
    }
    r.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            r.env(k, v);
        }
    }
    r.env("CNI_PATH", REF_DIR);
    let _ = &mut cmd;
    let ns = std::fs::File::open(node.ns.path()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
    // SAFETY: setns only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut r, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    r.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let t = std::time::Instant::now();
    let mut child = r.spawn().expect("spawn reference bridge plugin");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&serde_json::to_vec(conf).unwrap()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t.elapsed(),
    }
}

/// The pid of the veth-deleting child of the last DEL, from the plugin's log.
fn detached_pid(node: &Node) -> Option<i32> {
    let log = std::fs::read_to_string(log_path(node)).ok()?;
    let line = log.lines().rev().find(|l| l.contains("DEL done"))?;
    let i = line.find("(pid ")? + 5;
    line[i..].split(')').next()?.parse().ok()
}

/// Whether `pid` still runs (a zombie waiting for its reaper counts as done).
fn child_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !privileged("bench cni") {
        return;
    }
    let n: usize = std::env::var("CELLPLANE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let store = Store::start().await;
    store
        .add_pool("vlan100-a", "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    let mut node = Node::new("node-bench");
    node.reach(&store.endpoint());
    let mut conf = node.conf(&store.endpoint(), &store.prefix, &["vlan100-a"], "1.0.0");
    conf["logLevel"] =
        json!(std::env::var("CELLPLANE_BENCH_LOG").unwrap_or_else(|_| "info".into()));

    let ref_data = tempfile::Builder::new().prefix("cpref").tempdir().unwrap();
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge",
        "bridge": unique_name("cprb"), "isGateway": false, "ipMasq": false, "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "10.246.0.0/22", "gateway": "10.246.0.1",
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ref_data.path()},
    });

    let (mut add, mut del, mut radd, mut rdel) = (vec![], vec![], vec![], vec![]);
    let mut veth_gone = vec![];
    // one warm-up of each (first block claim, first bridge creation)
    for i in 0..n + 1 {
        let (pa, pb) = (pod_ns(), pod_ns());
        let (ca, cb) = (format!("bench-a{i}"), format!("bench-r{i}"));
        // interleaved, so that both see the same machine conditions
        let a = Call::new(&node, "ADD", &conf)
            .cid(&ca)
            .netns(&pa.path())
            .run();
        a.ok();
        let ra = ref_call(&node, "ADD", &cb, &pb.path(), &ref_conf);
        ra.ok();
        let d = Call::new(&node, "DEL", &conf)
            .cid(&ca)
            .netns(&pa.path())
            .run();
        d.ok();
        // Our DEL answers before its detached child has deleted the veth: let that child
        // finish (untimed) so that it does not run during the reference's DEL, and record when
        // it was seen done (polled every 0.2 ms).
        let answered = std::time::Instant::now();
        if let Some(pid) = detached_pid(&node) {
            while child_running(pid) {
                assert!(
                    answered.elapsed() < Duration::from_secs(5),
                    "pid {pid} hangs"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let gone = ms(answered.elapsed());
        assert!(node.plugin_links().is_empty(), "veth left after DEL");
        let rd = ref_call(&node, "DEL", &cb, &pb.path(), &ref_conf);
        rd.ok();
        if i > 0 {
            add.push(ms(a.elapsed));
            del.push(ms(d.elapsed));
            veth_gone.push(gone);
            radd.push(ms(ra.elapsed));
            rdel.push(ms(rd.elapsed));
        }
    }
    assert!(store.handles().await.is_empty());

    // where our ADD's time goes, from the plugin's own log (alloc_ms / total_ms per ADD)
    let log = std::fs::read_to_string(log_path(&node)).unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<f64> {
        let i = line.find(&format!("{key}="))? + key.len() + 1;
        line[i..].split_whitespace().next()?.parse().ok()
    };
    let p50_of = |marker: &str, key: &str| -> Value {
        let v: Vec<f64> = log
            .lines()
            .filter(|l| l.contains(marker))
            .filter_map(|l| field(l, key))
            .collect();
        if v.is_empty() {
            Value::Null
        } else {
            json!(percentile(&v, 0.5))
        }
    };
    let breakdown = json!({
        "add_netns_sockets_ms": p50_of("ADD done", "netns_ms"),
        "del_ovsdb_ms": p50_of("DEL done", "ovs_ms"),
        "del_release_ms": p50_of("DEL done", "release_ms"),
        "del_veth_handoff_ms": p50_of("DEL done", "veth_ms"),
        "del_in_process_ms": p50_of("DEL done", "total_ms"),
        "main_to_exit_ms": p50_of("exiting", "process_ms"),
    });
    let (mut alloc, mut total) = (vec![], vec![]);
    for l in log.lines().filter(|l| l.contains("ADD done")) {
        if let (Some(a), Some(t)) = (field(l, "alloc_ms"), field(l, "total_ms")) {
            alloc.push(a);
            total.push(t);
        }
    }
    let report = json!({
        "n": n,
        "add_p50_ms": percentile(&add, 0.5), "add_p99_ms": percentile(&add, 0.99),
        "del_p50_ms": percentile(&del, 0.5), "del_p99_ms": percentile(&del, 0.99),
        "del_veth_deleted_after_answer_p50_ms": percentile(&veth_gone, 0.5),
        "ref_add_p50_ms": percentile(&radd, 0.5), "ref_add_p99_ms": percentile(&radd, 0.99),
        "ref_del_p50_ms": percentile(&rdel, 0.5), "ref_del_p99_ms": percentile(&rdel, 0.99),
        "add_in_process_p50_ms": if total.is_empty() { Value::Null } else { json!(percentile(&total, 0.5)) },
        "add_lock_and_ipam_p50_ms": if alloc.is_empty() { Value::Null } else { json!(percentile(&alloc, 0.5)) },
        "p50_breakdown_ms": breakdown,
    });
    let _ = std::fs::write(bench_dir().join("cni-plugin.log"), &log);
    write_report("cni", &report);
}
