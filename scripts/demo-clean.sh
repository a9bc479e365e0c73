#!/usr/bin/env bash
# Removes everything `make demo` created: its processes, namespaces and state directory.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/demo-lib.sh

stop_pid() { # NAME PID
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  echo "demo-clean: stopped $name (pid $pid)"
}

if [ -f "$DEMO_DIR/nginx/nginx.pid" ]; then stop_pid nginx "$(cat "$DEMO_DIR/nginx/nginx.pid")"; fi
for pidfile in "$DEMO_DIR"/*.pid; do
  [ -f "$pidfile" ] || continue
  stop_pid "$(basename "$pidfile" .pid)" "$(cat "$pidfile")"
done
# anything still running inside the demo's namespaces
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cpdemo-'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "process in $ns" "$pid"; done
  ip netns del "$ns" && echo "demo-clean: deleted namespace $ns"
done
rm -rf "$DEMO_DIR"
echo "demo-clean: removed $DEMO_DIR"
