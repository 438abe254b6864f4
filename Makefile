# Aetherium developer tasks. `make help` lists them.
# Set-up first (Docker, base image, toolchain check): sudo ./scripts/setup.sh --no-start

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

XDG_CACHE_HOME ?= $(HOME)/.cache
CARGO_TARGET_DIR ?= $(XDG_CACHE_HOME)/aetherium/target
export CARGO_TARGET_DIR

CARGO ?= cargo
NEXTEST := $(CARGO) nextest run
AGENT_BIN := $(CARGO_TARGET_DIR)/agent/aetherium-agent
TEST_IMAGE ?= aetherium/base:latest
BENCH_ARGS ?=
BENCH_HTTP_ARGS ?=

# What the Docker-backed tests need.
AETHERIUM_AGENT_BIN ?= $(AGENT_BIN)
AETHERIUM_TEST_IMAGE ?= $(TEST_IMAGE)
export AETHERIUM_AGENT_BIN AETHERIUM_TEST_IMAGE

.PHONY: help build agent test lint fmt bench bench-api bench-agent clean check-env \
	test-types test-common test-store test-queue test-sandbox test-integrations test-core test-agent test-gateway test-cli test-k8s-manager \
	test-e2b test-api-fuzz bench-http bench-e2b bench-queue bench-boot cluster-up cluster-down \
	dashboard dashboard-api test-dashboard

help:
	@echo "make build        cargo build --workspace"
	@echo "make agent        static in-sandbox agent -> $(AGENT_BIN)"
	@echo "make test         all tests (needs Docker + $(TEST_IMAGE): run scripts/setup.sh --no-start first)"
	@echo "make test-<svc>   one crate: types common store queue sandbox integrations core agent gateway cli k8s-manager"
	@echo "make test-e2b     E2B's Python and JS SDKs: against the agent, then a real server and a cluster (tests/e2b, needs PyPI/npm once)"
	@echo "make test-api-fuzz  schemathesis against the served OpenAPI spec (tests/api-fuzz, needs PyPI once)"
	@echo "make test-dashboard  dashboard unit tests (vitest) + end-to-end tests (Chromium, a real aetherium up)"
	@echo "make dashboard    build the web dashboard (npm ci when needed, next build) and install it to /usr/local/share/aetherium/dashboard"
	@echo "make dashboard-api  regenerate services/dashboard/openapi.json + lib/api-schema.d.ts from the served spec"
	@echo "make lint         rustfmt check + no module cycles + clippy -D warnings (+ tsc --noEmit of the dashboard once its node_modules exist)"
	@echo "make fmt          rustfmt"
	@echo "make bench        bench-api (benches/exec_latency.sh, BENCH_ARGS='-n 20') + bench-agent"
	@echo "make bench-queue  task queue throughput + enqueue->lease latency (embedded, Redis; needs redis-server)"
	@echo "make bench-boot   microVM boot-to-agent-ready per backend vs a bare qemu boot to /init"
	@echo "make bench-http   wrk: authenticated GET /api/v1/vms vs GET /health (BENCH_HTTP_ARGS='-d 30')"
	@echo "make bench-e2b    E2B SDK vs /api/v1 create->output; /e2b relay vs agent socket: RTT, MiB/s (BENCH_E2B_ARGS='-n 20')"
	@echo "make cluster-up   a local distributed cluster: PostgreSQL, Redis, 1 gateway (:8090), 2 workers (docs/distributed.md)"
	@echo "make cluster-down stop it (by pid)"
	@echo "make clean        cargo clean (CARGO_TARGET_DIR=$(CARGO_TARGET_DIR))"

build:
	$(CARGO) build --workspace

# Static (glibc +crt-static) so it runs inside any sandbox image, whatever its libc.
agent:
	$(CARGO) rustc -p aetherium-agent --profile agent --bin aetherium-agent -- -C target-feature=+crt-static
	@echo "agent: $(AGENT_BIN)"

check-env:
	@docker info >/dev/null 2>&1 || { echo "error: docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first" >&2; exit 1; }
	@docker image inspect $(TEST_IMAGE) >/dev/null 2>&1 || { echo "error: image $(TEST_IMAGE) is missing: run scripts/setup.sh --no-start first" >&2; exit 1; }

test: check-env agent
	status=0; $(NEXTEST) --workspace --no-fail-fast || status=$$?; \
	bash tests/e2b/run.sh || status=$$((status ? status : $$?)); \
	bash tests/api-fuzz/run.sh || status=$$((status ? status : $$?)); \
	$(MAKE) --no-print-directory test-dashboard || status=$$((status ? status : $$?)); \
	exit $$status

# E2B's SDKs: Python in debug mode against the agent (docs/e2b-compat.md), then Python
# and JS in normal mode against `aetherium up` and a local cluster (docs/e2b.md).
test-e2b: agent
	bash tests/e2b/run.sh

# schemathesis against the OpenAPI document a real `aetherium up` serves: tests/api-fuzz.
test-api-fuzz: check-env agent
	bash tests/api-fuzz/run.sh

# The dashboard: vitest (jsdom), then the end-to-end tests (services/dashboard/e2e)
# in Chromium against a real `aetherium up` serving the static export. The build is
# skipped when its sources have not changed since the last one.
test-dashboard: check-env agent
	$(CARGO) build -p aetherium-cli
	bash -c '. scripts/lib.sh && ensure_node && build_dashboard'
	cd services/dashboard && npx vitest run && \
		AETHERIUM_BIN="$(CARGO_TARGET_DIR)/debug/aetherium" \
		DASHBOARD_OUT="$(CURDIR)/services/dashboard/out" \
		npm run e2e

# Build the dashboard and install it where the gateway serves it from (as root, or
# with AETHERIUM_DASHBOARD_DIR set to a directory of your own for both).
dashboard:
	bash -c '. scripts/lib.sh && ensure_dashboard'

# The dashboard's copy of the API spec and its generated types, from a real server.
dashboard-api:
	$(CARGO) build -p aetherium-cli
	bash -c '. scripts/lib.sh && regen_dashboard_api "$(CARGO_TARGET_DIR)/debug/aetherium"'

# Per-service tests. Crates without Docker-backed tests skip the agent build.
test-types:
	$(NEXTEST) -p aetherium-types --no-tests=warn
test-common:
	$(NEXTEST) -p aetherium-common --no-tests=warn
# The store's, queue's and sandbox's suites still live in services/core/tests
# (test-core); these run the crates' own unit tests.
test-store:
	$(NEXTEST) -p aetherium-store --no-tests=warn
test-queue:
	$(NEXTEST) -p aetherium-queue --no-tests=warn
test-sandbox: check-env agent
	$(NEXTEST) -p aetherium-sandbox --no-tests=warn
test-agent:
	$(NEXTEST) -p aetherium-agent --no-tests=warn
test-integrations:
	$(NEXTEST) -p aetherium-integrations --no-tests=warn
test-core: check-env agent
	$(NEXTEST) -p aetherium-core --no-tests=warn
test-gateway: check-env agent
	$(NEXTEST) -p aetherium-gateway --no-tests=warn
test-cli: check-env agent
	$(NEXTEST) -p aetherium-cli --no-tests=warn
test-k8s-manager:
	$(NEXTEST) -p aetherium-k8s-manager --no-tests=warn

lint:
	$(CARGO) fmt --all --check
	python3 scripts/check-module-cycles.py
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	if [ -d services/dashboard/node_modules ]; then cd services/dashboard && npx tsc --noEmit; fi

fmt:
	$(CARGO) fmt --all

bench: bench-api bench-agent

# API level: create→first output and exec, against plain docker run / docker exec.
bench-api:
	bash benches/exec_latency.sh $(BENCH_ARGS)

# Agent level: exec round trip vs docker exec, stdout throughput vs docker exec cat
# and a raw unix-socket copy.
bench-agent: check-env agent
	$(CARGO) bench -p aetherium-core --bench agent_exec

# Task queue: no-op tasks per second and enqueue→lease latency, embedded and Redis
# (records in SQLite / PostgreSQL), next to redis-benchmark on the same server.
bench-queue:
	$(CARGO) bench -p aetherium-core --bench queue_throughput

# MicroVM boot-to-agent-ready per backend vs a bare QEMU boot to /init (BENCH_RUNS=5).
bench-boot: check-env agent
	$(CARGO) bench -p aetherium-core --bench microvm_boot

# HTTP throughput with wrk: authenticated GET /api/v1/vms next to GET /health.
bench-http: check-env agent
	bash benches/api_throughput.sh $(BENCH_HTTP_ARGS)

# E2B compatibility: E2B's SDK vs /api/v1 (create -> first output), and the /e2b envd
# relay vs the agent's own socket (unary call latency, file download/upload MiB/s).
bench-e2b:
	bash benches/e2b.sh $(BENCH_E2B_ARGS)

clean:
	$(CARGO) clean

# A local distributed cluster (docs/distributed.md): state in ~/.local/state/aetherium-cluster.
cluster-up: agent
	$(CARGO) build -p aetherium-cli
	bash scripts/cluster.sh up

cluster-down:
	bash scripts/cluster.sh down
