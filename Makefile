# Everything a fresh machine needs is installed by these targets (venv, packages,
# Kubernetes binaries built from the Go module proxy and cached per user).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv node-packages kube-binaries images test test-fast lint typecheck demo bench clean

# Debian packages the local cluster's node needs (runc, CNI plugins, iptables, ipset for
# kube-router, gcc for the pause image, busybox for the test image, buildah/debootstrap
# for the project images). Installs only what is missing; needs root.
NODE_PACKAGES := runc containernetworking-plugins iptables ipset iproute2 util-linux \
	gcc libc6-dev binutils busybox-static buildah debootstrap

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

node-packages:
	@missing=$$(for p in $(NODE_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "error: the local cluster's node needs these Debian packages: $$missing;" \
				"run 'make node-packages' as root (or: sudo apt-get install $$missing)" >&2; exit 1; \
		fi; \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing \
			|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
				--no-install-recommends $$missing; }; \
	fi

# Control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)
# and node (kubelet, kube-proxy, containerd, crictl, kube-router) for the pinned releases;
# cached under ~/.cache/akidb-embed/kube/<version> and reused.
kube-binaries: venv
	$(BIN)/akidb-embed cluster build

# The operator, model-server and converter images (buildah, offline from a wheelhouse;
# cached by content, so an unchanged tree takes seconds). Built before pytest so that no
# test's timeout has to cover the first, long build (docs/IMAGES.md).
images: venv node-packages
	$(BIN)/akidb-embed cluster images

lint: venv
	$(BIN)/ruff check akidb_embed tests bench
	$(BIN)/ruff format --check akidb_embed tests bench

typecheck: venv
	$(BIN)/mypy

# The whole suite, cluster tests included (pytest exit 5, "no tests", is not a failure).
test: venv node-packages kube-binaries lint typecheck images
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Without the slow local-cluster tests.
test-fast: venv
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

demo: venv node-packages kube-binaries images
	$(BIN)/akidb-embed demo

# Benchmarks print their numbers and write bench/results/*.json; the report turns
# those into docs/MODEL-PERFORMANCE.md. Each ratio is measured in one run against a
# baseline measured in the same rounds: the code of BENCH_BASELINE (default: the last
# commit before the performance work), extracted with git archive. wrk is the external
# load generator (Debian package wrk).
BENCH_BASELINE ?= 1196e5f
BENCH_BASE_DIR := $(CURDIR)/.bench-baseline/$(BENCH_BASELINE)

bench: venv node-packages kube-binaries
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk
	test -d $(BENCH_BASE_DIR) || { mkdir -p $(BENCH_BASE_DIR) && git archive $(BENCH_BASELINE) | tar -x -C $(BENCH_BASE_DIR); }
	$(BIN)/python -m bench.model_server --baseline-pythonpath $(BENCH_BASE_DIR)
	$(BIN)/python -m bench.cold_start --baseline-pythonpath $(BENCH_BASE_DIR)
	$(BIN)/python -m bench.http_floor
	$(BIN)/python -m bench.gateway_hotpath --before $(BENCH_BASE_DIR)
	$(BIN)/python -m bench.gateway_hotpath --before $(BENCH_BASE_DIR) --upstream floor
	$(BIN)/python -m bench.models --wrk
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.operator_decisions --cluster
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
