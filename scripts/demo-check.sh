#!/usr/bin/env bash
# CI's check of the main job: `make demo` must succeed and `make demo-clean` must leave no
# namespaces, bridges, processes or etcd data behind.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo-lib.sh
bash scripts/demo.sh
bash scripts/demo-clean.sh
left=()
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cpdemo-' || true)
[ -z "$ns" ] || left+=("namespaces: $ns")
procs=$(pgrep -af "$DEMO_DIR|cpdemo" | grep -v -e pgrep -e demo-check || true)
[ -z "$procs" ] || left+=("processes: $procs")
[ ! -e "$DEMO_DIR" ] || left+=("directory $DEMO_DIR")
links=$(ip -br link 2>/dev/null | awk '{print $1}' | grep -E '^(br-node-|trunk-|lb0|cp[0-9a-f]{13})' || true)
[ -z "$links" ] || left+=("host links: $links")
if [ ${#left[@]} -gt 0 ]; then
  printf 'demo-check: left behind: %s\n' "${left[@]}" >&2
  exit 1
fi
echo "demo-check: demo ran and demo-clean left nothing behind"
