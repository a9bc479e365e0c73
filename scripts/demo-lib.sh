# Shared by demo.sh and demo-clean.sh.
DEMO_DIR=${DEMO_DIR:-/tmp/cellplane-demo}
say() { printf '\n\033[1m*** %s\033[0m\n' "$*"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

demo_etcd_start() {
  mkdir -p "$DEMO_DIR"
  if [ -f "$DEMO_DIR/etcd.pid" ] && kill -0 "$(cat "$DEMO_DIR/etcd.pid")" 2>/dev/null; then
    DEMO_ETCD=$(cat "$DEMO_DIR/etcd.endpoint")
    return
  fi
  local cport pport
  cport=$(free_port); pport=$(free_port)
  DEMO_ETCD="http://127.0.0.1:$cport"
  etcd --name cellplane-demo --data-dir "$DEMO_DIR/etcd" \
    --listen-client-urls "$DEMO_ETCD" --advertise-client-urls "$DEMO_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "cellplane-demo=http://127.0.0.1:$pport" --log-level warn --logger zap \
    >"$DEMO_DIR/etcd.log" 2>&1 &
  echo $! >"$DEMO_DIR/etcd.pid"
  echo "$DEMO_ETCD" >"$DEMO_DIR/etcd.endpoint"
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$DEMO_ETCD" endpoint health >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "demo: etcd did not start; see $DEMO_DIR/etcd.log" >&2
  exit 1
}
