# WorkerFleet developer entry points. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-unit test-integration lint demo bench clean cluster-bins cluster-up cluster-down

# List the targets with the comment above each (this text).
.PHONY: help
help:
	@awk '/^\.PHONY/ {next} /^# / {c = (c ? c " " : "") substr($$0, 3); next} \
	  /^[a-z][a-z0-9-]*:/ {split($$0, t, ":"); if (c) printf "  %-16s %s\n", t[1], c} {c = ""}' \
	  $(firstword $(MAKEFILE_LIST))

# The virtualenv with the project and its dev tools (again when pyproject.toml changes).
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Every test: unit, integration (real PostgreSQL), e2e (real Kubernetes API, pods as
# processes). pytest's exit 5 (nothing collected) is a broken suite, not a pass.
test: install cluster-bins gotools
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; \
	exit $$rc

# Unit tests only (pure logic; seconds).
test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Integration tests only (a real PostgreSQL).
test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# ruff, ruff format --check, mypy strict, lint-imports (the layers in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The real tools the tests use (kstatus-check: sigs.k8s.io/cli-utils' kstatus; helm), built
# from the Go module proxy into ~/.cache/workerfleet/gotools once (helm: a few minutes).
.PHONY: gotools
gotools: install
	$(PY) -m workerfleet_dev.gotools

# etcd/kube-apiserver/kube-controller-manager: KUBEBUILDER_ASSETS, else the per-user cache,
# else a build from the Go module proxy (minutes, once). No-op when cached.
cluster-bins: install
	$(PY) -m localcluster bins

# A background control plane + node agent for the demo; IMAGES=<table.yaml> maps images.
cluster-up: cluster-bins
	$(PY) -m localcluster up $(if $(IMAGES),--images $(IMAGES))

# Stop the background cluster.
cluster-down: install
	$(PY) -m localcluster down

# Regenerate crds/ from the operator's pydantic models, and the monitoring bundle's generated
# files (deploy/monitoring); unit tests fail when either is stale.
.PHONY: crds
crds: install
	$(PY) -m workerfleet_operator.crdgen
	$(PY) -m workerfleet_operator.docgen
	cp crds/workerfleet.yaml deploy/helm/workerfleet-operator/crds/workerfleet.yaml
	$(PY) -m workerfleet_dev.monitoring

# The real node's Debian packages (containerd, runc, CNI plugins, docker for image builds).
.PHONY: node-prereqs node-bins e2e-node
node-prereqs:
	scripts/node-prereqs.sh

# Wheels of this checkout and its dependencies for the Dockerfiles (no network in a build).
.PHONY: wheels images
wheels: install
	$(PY) -m workerfleet_dev.images --wheels-only

# Every image (base, pause, worker, operator, test and demo apps) built here with a private
# dockerd, saved as one archive for the real node's containerd.
images: install node-prereqs
	$(PY) -m workerfleet_dev.images

# kubelet and kube-scheduler for the real node, from the Go module proxy.
node-bins: cluster-bins
	$(PY) -m localcluster bins --node

# The operator e2e suite on the real node (root on Debian; docs/realnode.md).
e2e-node: install node-prereqs node-bins gotools
	@WORKERFLEET_E2E_BACKEND=node $(PY) -m pytest $(or $(E2E_PATHS),tests/e2e) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make e2e-node: pytest collected no tests; failing" >&2; exit 1; fi; \
	exit $$rc

# The operator e2e suite on kind with real images. Needs Docker, kind and kubectl; these
# development machines have none, so it has never run here (see README).
.PHONY: e2e-kind
e2e-kind: install
	scripts/e2e-kind/run.sh $(PYTEST_ARGS)

# fleet-worker beside Graphile Worker, pgqueuer and procrastinate (installed into a cache).
bench: install
	$(PY) -m bench.compare $(BENCH_ARGS)

# Throughput as the queue grows: near-empty, 1,000,000 queued, 100,000 scheduled ahead.
.PHONY: bench-scale
bench-scale: install
	$(PY) -m bench.scale $(BENCH_ARGS)

# Table size over a long run: 5,000 jobs/s for 3 minutes through one worker.
.PHONY: bench-steady
bench-steady: install
	$(PY) -m bench.steady $(BENCH_ARGS)

# fleet-worker alone: batched against unbatched fetch, enqueue, SIGKILL-to-recovery time.
.PHONY: bench-worker
bench-worker: install
	$(PY) -m bench.worker_throughput $(BENCH_ARGS)

# The operator's cost against the number of fleets (1 to 1,000 at replicas 0).
.PHONY: bench-operator
bench-operator: install cluster-bins
	$(PY) -m bench.operator_scale $(BENCH_ARGS)

# An upgrade (safe, then breaking migration) under a steady stream: a Deployment of
# self-migrating Graphile Worker pods beside a WorkerFleet; lost, twice, schema errors, gaps.
.PHONY: bench-rollout
bench-rollout: install cluster-bins
	$(PY) -m bench.rollout $(BENCH_ARGS)

# The process agent and the real node side by side: start, pod to Ready, rollouts, gaps.
.PHONY: bench-node
bench-node: install cluster-bins node-prereqs node-bins
	$(PY) -m bench.backends $(BENCH_ARGS)

# The end-to-end demo on the embedded PostgreSQL; DEMO_ARGS=--keep keeps the cluster up.
demo: install cluster-bins $(if $(findstring --real-node,$(DEMO_ARGS)),node-prereqs node-bins)
	$(PY) -m workerfleet_demo.run $(DEMO_ARGS)

# Remove the virtualenv and build outputs (caches in ~/.cache/workerfleet stay).
clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
