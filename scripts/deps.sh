#!/usr/bin/env bash
# Installs every Debian package cellplane needs and starts Open vSwitch (userspace datapath:
# these machines have no openvswitch kernel module). Idempotent; run as root on Debian 12.
set -euo pipefail

PACKAGES=(
  etcd-server etcd-client                      # the source of truth (3.4)
  openvswitch-switch                           # bridges for pods (datapath_type=netdev)
  nginx libnginx-mod-http-lua lua-cjson        # load balancer with reload-free upstreams
  protobuf-compiler libprotobuf-dev            # etcd-client's build
  iproute2 iputils-ping procps psmisc ethtool  # namespaces, veth, ping, pkill, offloads
  podman runc buildah skopeo docker-registry   # a real CNI runtime; image build and push
  containernetworking-plugins                  # the reference CNI plugins, for benchmarks
  busybox-static                               # a tiny rootfs for demo "pods"
  wrk curl jq git make                         # load, checks, scripts
  systemd                                      # systemd-analyze verify for our units
)

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: run as root (apt-get and OVS need it)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: all Debian packages present"
fi

# The Debian etcd package starts a system etcd on 2379 where an init system runs it; our tests
# and the demo start their own on free ports and never use it.

# Open vSwitch, userspace datapath (see FIELD-NOTES.md).
if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
  echo "deps: starting Open vSwitch"
  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor 2>&1 \
    | grep -v "ulimit" || true
fi
ovs-vsctl --timeout=5 show >/dev/null
echo "deps: Open vSwitch $(ovs-vsctl --version | head -1 | awk '{print $NF}') running"

command -v cargo >/dev/null || { echo "deps: cargo (Rust toolchain) not found" >&2; exit 1; }
echo "deps: ready"
