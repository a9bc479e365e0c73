#!/usr/bin/env bash
# The demo cell. Today: a private etcd, a pool, simulated pods on two simulated nodes taking
# addresses, and the usage report. `make demo-clean` removes whatever a run left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo-lib.sh

say "starting a private etcd for the demo (data in $DEMO_DIR)"
demo_etcd_start
say "etcd is up at $DEMO_ETCD"
cargo run -q -p cellplane-etcd --example demo -- "$DEMO_ETCD" /cellplane-demo
say "done. The demo's etcd keeps running at $DEMO_ETCD; 'make demo-clean' stops it and removes everything."
