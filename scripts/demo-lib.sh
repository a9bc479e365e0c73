# Shared by demo.sh and demo-clean.sh. Everything the demo creates is named cpdemo-* or lives
# under $DEMO_DIR, and the whole cell runs inside the network namespace $NS: nothing of it
# touches the host's interfaces or addresses.
DEMO_DIR=${DEMO_DIR:-/tmp/cellplane-demo}
NS=cpdemo-cell
BIN=${BIN:-$PWD/target/debug}
ETCD=http://127.0.0.1:23790
API=http://127.0.0.1:28080
TOKEN=demo-token-0123456789abcdef
OVSDB=unix:$DEMO_DIR/ovs/db.sock
DOMAIN=web.demo.local
LB_PORT=8081

say() { printf '\n\033[1m*** %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
in_ns() { ip netns exec "$NS" "$@"; }
ovs_env() { env OVS_RUNDIR="$DEMO_DIR/ovs" OVS_DBDIR="$DEMO_DIR/ovs" OVS_LOGDIR="$DEMO_DIR/ovs" OVS_SYSCONFDIR="$DEMO_DIR/ovs" "$@"; }
vsctl() { ovs-vsctl --db="$OVSDB" --timeout=10 "$@"; }
cnictl() { in_ns "$BIN/cnictl" --config "$DEMO_DIR/cnictl.toml" "$@"; }
api() { # METHOD PATH [JSON]
  in_ns curl -sS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$API$2"
}

wait_for() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: $what did not happen within ${secs}s" >&2
  return 1
}

# background DAEMON-NAME COMMAND...: runs in the cell namespace, pid in $DEMO_DIR/NAME.pid
background() {
  local name=$1; shift
  ip netns exec "$NS" "$@" >"$DEMO_DIR/$name.log" 2>&1 &
  echo $! >"$DEMO_DIR/$name.pid"
}
