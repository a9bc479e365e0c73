//! A real CNI runtime drives the plugin: podman (CNI backend, runc) runs a container on a
//! network whose conflist uses `cellplane`; podman itself runs inside the simulated node's
//! namespace so the host veth ends land there, next to the node's OVS.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use cellplane_testkit::netns::{require_priv, unique_name};
use common::*;
use serde_json::json;

#[tokio::test]
async fn podman_runs_a_container_on_a_cellplane_network() {
    if !privileged("podman_runs_a_container_on_a_cellplane_network")
        || !require_priv(
            "podman_runs_a_container_on_a_cellplane_network",
            &["podman", "runc", "/bin/busybox"],
        )
    {
        return;
    }
    let store = Store::start().await;
    store
        .add_pool("vlan100-a", "10.244.0.0/22", 100, "10.244.0.1")
        .await;
    let mut node = Node::new("node-p");
    node.reach(&store.endpoint());

    let dir = tempfile::Builder::new()
        .prefix("cppodman")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let (bin, netd, rootfs) = (d.join("cni-bin"), d.join("net.d"), d.join("rootfs"));
    for p in [&bin, &netd, &rootfs.join("bin")] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::copy(BIN, bin.join("cellplane")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let st = Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/busybox", "--install", "-s", "/bin"])
        .status()
        .unwrap();
    assert!(st.success());

    // podman's libcni speaks up to 1.0.0
    let net = unique_name("cpnet");
    let mut plugin = node.conf(&store.endpoint(), &store.prefix, &["vlan100-a"], "1.0.0");
    plugin.as_object_mut().unwrap().remove("cniVersion");
    plugin.as_object_mut().unwrap().remove("name");
    let conflist = json!({"cniVersion": "1.0.0", "name": net, "plugins": [plugin]});
    std::fs::write(
        netd.join(format!("{net}.conflist")),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    let conf = d.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n",
            bin.display(),
            netd.display(),
            d.join("events.log").display()
        ),
    )
    .unwrap();

    let ns = File::open(node.ns.path()).unwrap();
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(d.join("storage"))
        .arg("--runroot")
        .arg(d.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "run",
            "--rm",
        ])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args(["--network", &net, "--rootfs"])
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "ip -4 -o addr show eth0; ip route show default",
        ]);
    // SAFETY: setns/prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(log_path(&node)).unwrap_or_default();
    assert!(
        out.status.success(),
        "podman failed: {}\nstdout: {stdout}\nstderr: {}\nplugin log:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.244."),
        "container had no pool address: {stdout}"
    );
    assert!(
        stdout.contains("default via 10.244.0.1"),
        "no default route: {stdout}"
    );
    assert!(
        log.contains("ADD done") && log.contains("DEL done"),
        "{log}"
    );

    // after the container exited: no allocation, port or veth left
    assert!(
        store.handles().await.is_empty(),
        "{:?}",
        store.handles().await
    );
    assert_eq!(store.allocations().await, 0);
    assert!(node.plugin_ports().is_empty());
    assert!(node.plugin_links_settled().is_empty());
    drop(ns);
}
