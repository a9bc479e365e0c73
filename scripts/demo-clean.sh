#!/usr/bin/env bash
# Removes everything `make demo` created: its processes and its state directory.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/demo-lib.sh
for pidfile in "$DEMO_DIR"/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "demo-clean: stopped $(basename "$pidfile" .pid) (pid $pid)"
  fi
done
rm -rf "$DEMO_DIR"
echo "demo-clean: removed $DEMO_DIR"
