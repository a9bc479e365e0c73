#!/usr/bin/env bash
# The demo cell: etcd, Open vSwitch with two simulated nodes on a VLAN trunk, the control API,
# a pool, pods attached by the real CNI plugin, an nginx-agent with nginx in front; then a
# request through nginx to the pods, a scale change without reload, usage, and a leaked address
# found and released by cnictl gc. `make demo-clean` removes everything it created.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo-lib.sh

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (namespaces, OVS)" >&2; exit 1; }
for b in cellplane cnictl control-api nginx-agent; do
  [ -x "$BIN/$b" ] || { echo "demo: $BIN/$b missing; run 'make build' first" >&2; exit 1; }
done
if ip netns list | grep -q "^$NS\b" || [ -d "$DEMO_DIR" ]; then
  echo "demo: an earlier demo is still there; cleaning it first"
  bash scripts/demo-clean.sh >/dev/null
fi
mkdir -p "$DEMO_DIR"/{ovs,www,nginx/temp,cni}

say "1. The cell: a network namespace ($NS) that holds every process of the demo"
ip netns add "$NS"
in_ns ip link set lo up
info "etcd, OVS, the control API, nginx-agent and nginx run inside it; the host is untouched"

say "2. etcd, the source of truth (127.0.0.1:23790 inside the cell)"
background etcd etcd --name cpdemo --data-dir "$DEMO_DIR/etcd" \
  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster cpdemo=http://127.0.0.1:23800 --log-level warn --logger zap
wait_for "etcd to answer" 20 in_ns env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health
info "etcd $(etcd --version | head -1 | awk '{print $3}') is up"

say "3. Open vSwitch (userspace datapath) with two simulated nodes joined by a VLAN trunk"
ovs_env ovsdb-tool create "$DEMO_DIR/ovs/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovs_env ip netns exec "$NS" ovsdb-server "$DEMO_DIR/ovs/conf.db" --remote="punix:$DEMO_DIR/ovs/db.sock" \
  --pidfile="$DEMO_DIR/ovsdb-server.pid" --unixctl="$DEMO_DIR/ovs/ovsdb.ctl" \
  --log-file="$DEMO_DIR/ovs/ovsdb-server.log" --detach
vsctl --no-wait init
ovs_env ip netns exec "$NS" ovs-vswitchd "$OVSDB" --pidfile="$DEMO_DIR/ovs-vswitchd.pid" \
  --unixctl="$DEMO_DIR/ovs/vswitchd.ctl" --log-file="$DEMO_DIR/ovs/ovs-vswitchd.log" --detach 2>/dev/null
for n in a b; do
  vsctl add-br "br-node-$n" -- set bridge "br-node-$n" datapath_type=netdev
done
in_ns ip link add trunk-a type veth peer name trunk-b
in_ns ip link set trunk-a up
in_ns ip link set trunk-b up
vsctl add-port br-node-a trunk-a -- add-port br-node-b trunk-b
info "br-node-a and br-node-b, joined by a trunk (trunk-a <-> trunk-b) carrying every VLAN"
# the load balancer's leg on VLAN 100, on node a's bridge
vsctl add-port br-node-a lb0 tag=100 -- set interface lb0 type=internal
wait_for "the lb0 port" 10 in_ns ip link show lb0
in_ns ip addr add 10.20.3.254/22 dev lb0
in_ns ip link set lb0 up
info "the load balancer reaches VLAN 100 at 10.20.3.254 (an access port on br-node-a)"

say "4. The control API (127.0.0.1:28080 inside the cell)"
cat >"$DEMO_DIR/control-api.toml" <<EOF
listen = "127.0.0.1:28080"
[etcd]
endpoints = ["$ETCD"]
[[tokens]]
name = "demo"
token = "$TOKEN"
scopes = ["admin"]
EOF
background control-api "$BIN/control-api" -c "$DEMO_DIR/control-api.toml"
wait_for "the control API" 20 in_ns curl -sf "$API/healthz"
info "serving; writes need a bearer token with the slb:write scope"

say "5. A pool: 10.20.0.0/22 on VLAN 100 (cnictl pool add)"
printf '[etcd]\nendpoints = ["%s"]\n[gc]\nstate_file = "%s"\naudit_log = "%s"\n' \
  "$ETCD" "$DEMO_DIR/cnictl-state.json" "$DEMO_DIR/cnictl-audit.log" >"$DEMO_DIR/cnictl.toml"
cnictl pool add vlan100 --cidr 10.20.0.0/22 --vlan 100 --gateway 10.20.0.1 --exclude 10.20.3.254 | sed 's/^/    /'

# add_pod NODE NAME: a namespace with a busybox web server, attached by the CNI plugin exec'd
# exactly as kubelet or podman would
add_pod() {
  local node=$1 name=$2 ns=cpdemo-pod-$2
  cat >"$DEMO_DIR/cni/$node.json" <<EOF
{"cniVersion": "1.1.0", "name": "cell", "type": "cellplane", "bridge": "br-$node", "node": "$node",
 "pools": ["vlan100"], "etcd": {"endpoints": ["$ETCD"]}, "ovsdb": "$OVSDB",
 "lockFile": "$DEMO_DIR/$node.lock", "logFile": "$DEMO_DIR/cni.log"}
EOF
  ip netns add "$ns"
  local out
  out=$(in_ns env CNI_COMMAND=ADD CNI_CONTAINERID="demo-$name" CNI_NETNS="/run/netns/$ns" CNI_IFNAME=eth0 \
    CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$name;K8S_POD_UID=uid-$name" \
    "$BIN/cellplane" <"$DEMO_DIR/cni/$node.json")
  local ip
  ip=$(echo "$out" | jq -r '.ips[0].address' | cut -d/ -f1)
  [ -n "$ip" ] && [ "$ip" != null ] || { echo "demo: CNI ADD failed: $out" >&2; exit 1; }
  # No ethtool here: on these userspace-datapath bridges the plugin itself turns TX checksum
  # offload off on both veth ends (txChecksumOffload, packaging/cni/README.md).
  mkdir -p "$DEMO_DIR/www/$name"
  echo "hello from pod $name on $node ($ip)" >"$DEMO_DIR/www/$name/index.html"
  ip netns exec "$ns" busybox httpd -f -p 8080 -h "$DEMO_DIR/www/$name" &
  echo $! >"$DEMO_DIR/httpd-$name.pid"
  echo "$ip" >"$DEMO_DIR/ip-$name"
  info "pod $name on $node: $ip (veth $(echo "$out" | jq -r '.interfaces[0].name') on br-$node, VLAN 100)"
}

say "6. Pods: the real CNI plugin attaches each to its node's bridge, address from etcd"
add_pod node-a web-1
add_pod node-a web-2
add_pod node-b web-3
servers() { local s=""; for p in "$@"; do s="$s{\"addr\":\"$(cat "$DEMO_DIR/ip-$p"):8080\",\"weight\":1},"; done; echo "{\"servers\":[${s%,}]}"; }

say "7. A domain $DOMAIN on the nginx group 'demo', its upstreams = the three pods"
api PUT "/v1/slb/demo/domains/$DOMAIN" '{"listen":[{"port":8081}],"locations":[{"path":"/"}]}' >/dev/null
api PUT "/v1/slb/demo/domains/$DOMAIN/upstreams" "$(servers web-1 web-2 web-3)" >/dev/null
info "$(api GET "/v1/slb/demo/domains/$DOMAIN/upstreams" | jq -c '[.servers[].addr]')"

say "8. nginx-agent and nginx in front"
cat >"$DEMO_DIR/nginx-agent.toml" <<EOF
group = "demo"
host = "lb-1"
http_listen = "127.0.0.1:29180"
debounce_ms = 200
[etcd]
endpoints = ["$ETCD"]
[nginx]
prefix = "$DEMO_DIR/nginx"
conf_dir = "$DEMO_DIR/nginx/conf"
pid_file = "$DEMO_DIR/nginx/nginx.pid"
error_log = "$DEMO_DIR/nginx/error.log"
temp_dir = "$DEMO_DIR/nginx/temp"
admin_listen = "127.0.0.1:29181"
worker_processes = "2"
EOF
background nginx-agent "$BIN/nginx-agent" -c "$DEMO_DIR/nginx-agent.toml"
wait_for "nginx-agent's first render" 30 test -f "$DEMO_DIR/nginx/conf/current/nginx.conf"
in_ns nginx -p "$DEMO_DIR/nginx" -e "$DEMO_DIR/nginx/error.log" -c "$DEMO_DIR/nginx/conf/current/nginx.conf"
wait_for "nginx to serve $DOMAIN" 30 in_ns curl -sf -H "Host: $DOMAIN" "http://127.0.0.1:$LB_PORT/"
master=$(cat "$DEMO_DIR/nginx/nginx.pid")
info "nginx master pid $master serves $DOMAIN on port $LB_PORT"

say "9. Requests through nginx reach the pods"
for _ in $(seq 1 6); do info "$(in_ns curl -s -H "Host: $DOMAIN" "http://127.0.0.1:$LB_PORT/")"; done

say "10. Scale up: a fourth pod joins the upstreams, pushed into nginx without a reload"
add_pod node-b web-4
api PUT "/v1/slb/demo/domains/$DOMAIN/upstreams" "$(servers web-1 web-2 web-3 web-4)" >/dev/null
wait_for "a request served by web-4" 20 bash -c "for i in 1 2 3 4 5 6 7 8; do ip netns exec $NS curl -s -H 'Host: $DOMAIN' http://127.0.0.1:$LB_PORT/ | grep -q web-4 && exit 0; done; exit 1"
info "web-4 answers through nginx; nginx master pid $(cat "$DEMO_DIR/nginx/nginx.pid") (was $master): no reload"
info "agent metrics: $(in_ns curl -s http://127.0.0.1:29180/metrics | grep -E '^cellplane_nginx_agent_(reloads_total|upstream_pushes_total)' | tr '\n' ' ')"

say "11. Address usage (cnictl usage)"
cnictl usage | sed 's/^/    /'

say "12. A leak: pod web-4's namespace disappears without a CNI DEL (a crashed runtime)"
kill "$(cat "$DEMO_DIR/httpd-web-4.pid")" 2>/dev/null || true
ip netns del cpdemo-pod-web-4
info "cnictl check --local on node-b compares etcd with the node's namespaces and OVS ports:"
cnictl --node node-b check --local --no-kube --ovsdb "$OVSDB" | sed 's/^/    /' || true
info "cnictl gc --apply releases only what two observations a grace period (3 s) apart agree on:"
# the address first; once it is released, the pod's OVS port becomes an orphan and is removed
# after its own two observations
for round in 1 2 3 4; do
  cnictl --node node-b gc --apply --local --no-kube --ovsdb "$OVSDB" --grace 3s | tail -n +2 | sed "s/^/    gc #$round: /"
  [ $round -lt 4 ] && sleep 3.2
done
info "the released address was guarded by its block's revision; the audit log says who, what, why:"
tail -n 2 "$DEMO_DIR/cnictl-audit.log" | jq -c '{actor, command, result, what: (.finding.ip // .finding.port), kind: .finding.kind}' | sed 's/^/    /'
api PUT "/v1/slb/demo/domains/$DOMAIN/upstreams" "$(servers web-1 web-2 web-3)" >/dev/null

say "Done. Everything runs in namespace $NS; 'make demo-clean' removes it all."
