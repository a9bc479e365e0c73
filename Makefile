# cellplane: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo


.PHONY: all deps build package test-package test test-unit test-etcd test-net test-cni test-nginx test-cnictl test-control-api test-discovery test-build \
        bench demo demo-clean demo-check lint fmt

all: build

## Install Debian packages and start Open vSwitch (idempotent; root).
deps:
	bash scripts/deps.sh

build:
	$(CARGO) build --workspace --all-targets

## Every test tier. Privileged tiers need root; with CELLPLANE_REQUIRE_PRIV=1 a missing
## prerequisite fails instead of skipping.
test: build
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) test-package

# Tiers, for running one at a time.
test-unit:          ## pure logic, runs anywhere
	$(CARGO) test -p cellplane-core
test-etcd:          ## real etcd: IPAM invariants, watch, lease
	$(CARGO) test -p cellplane-etcd
test-net:           ## root: netns, netlink, OVSDB client
	$(CARGO) test -p cellplane-net -p cellplane-slb
test-cni:           ## root: the CNI binary against real OVS, netns, etcd
	$(CARGO) test -p cellplane-cni
test-nginx:         ## real nginx + etcd
	$(CARGO) test -p cellplane-nginx-agent
test-cnictl:        ## real etcd + in-process Kubernetes API; --local with netns and OVS
	$(CARGO) test -p cellplane-cnictl
test-control-api:
	$(CARGO) test -p cellplane-control-api
test-discovery:     ## in-process Kubernetes API + real control-api, nginx-agent, nginx, wrk
	$(CARGO) test -p cellplane-discovery
test-build:         ## real etcd, git, buildah, podman, docker-registry, skopeo; the build-agent binary
	$(CARGO) test -p cellplane-build -p cellplane-build-agent

## Benchmarks against real components; results in target/bench/*.json.
bench:
	$(CARGO) bench -p cellplane-etcd --bench ipam
	$(CARGO) bench -p cellplane-cnictl --bench check
	$(CARGO) bench -p cellplane-cni --bench cni
	$(CARGO) bench -p cellplane-nginx-agent --bench nginx
	$(CARGO) bench -p cellplane-discovery --bench discovery
	$(CARGO) bench -p cellplane-build-agent --bench build
	@echo; for f in target/bench/*.json; do echo "== $$f"; cat $$f; echo; done

## .deb packages of every component into target/debian/ (release build).
package:
	bash packaging/build-debs.sh
## Install, --version, systemd-analyze verify, conffile kept, remove, purge (root).
test-package: package
	bash scripts/package-test.sh

## The main job: a local demo cell. `make demo-clean` removes everything it created.
demo: build
	bash scripts/demo.sh
demo-clean:
	bash scripts/demo-clean.sh
## CI: the demo, then demo-clean, then a check that nothing was left behind.
demo-check: build
	bash scripts/demo-check.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
fmt:
	$(CARGO) fmt --all
