# VirNucPro on Triton. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Deployment checkers (checkov, hadolint, kubernetes-validate, ...) for the tests, kept apart
# from .venv: their dependencies clash with its pins.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# Snakemake for workflow/ (Python >= 3.11), apart from .venv for the same reason.
WORKFLOW := .venv-workflow
WORKFLOW_STAMP := $(WORKFLOW)/.installed
DOCKER ?= docker
DOCKER_COMPOSE ?= docker-compose
GPUS ?= all
REPOSITORY ?= model_repository
DTYPE ?= fp32
IMAGE ?= virnucpro-triton:0.1.0

.DEFAULT_GOAL := help
.PHONY: help venv tools workflow-venv demo test test-slow test-unit test-server test-workflow test-container test-cluster test-gpu lint serve serve-local image export bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e '.[server,export,dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv: the pinned dependencies of every role (extras server, export, dev)

$(TOOLS_STAMP): requirements-deploy.lock
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r requirements-deploy.lock
	touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)  ## create .venv-tools with the deployment checkers the tests run

$(WORKFLOW_STAMP): requirements-workflow.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make \
	workflow-venv: snakemake needs Python >= 3.11, which $(PYTHON) is not; run make \
	workflow-venv PYTHON=python3.11"; exit 2; }
	rm -rf $(WORKFLOW)
	$(PYTHON) -m venv $(WORKFLOW)
	$(WORKFLOW)/bin/python -m pip install --quiet --upgrade pip
	$(WORKFLOW)/bin/python -m pip install --quiet -r requirements-workflow.lock
	touch $(WORKFLOW_STAMP)

workflow-venv: $(WORKFLOW_STAMP)  ## create .venv-workflow with snakemake, for workflow/ (Python >= 3.11)

demo: $(STAMP)  ## tiny random models + embedded Triton server + client on examples/*.fasta
	$(BIN)/virnucpro-triton demo

# The test tiers are the folders of tests/ (README, Tests). pytest-xdist workers take one test
# file each (--dist loadfile), so a file's module-scoped servers start once. Files go out in the
# order named (--no-loadscope-reorder; xdist would reorder by number of tests): the server
# tier's first, as each of them starts servers, then the unit tier's many short files, which
# fill the workers' ends.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP) $(TOOLS_STAMP)  ## the unit and server tiers less their slow tests (after every change; CI runs it)
	$(PYTEST_PARALLEL) -m 'not slow' tests/server tests/unit

test-slow: $(STAMP) $(TOOLS_STAMP)  ## the slow tests of the unit and server tiers (marker slow: wheel installs, replicas, image locks, the bench; CI runs it)
	$(PYTEST_PARALLEL) -m slow tests/server tests/unit

test-unit: $(STAMP) $(TOOLS_STAMP)  ## unit tier (tests/unit): no tritonserver at all
	$(PYTEST_PARALLEL) tests/unit

test-server: $(STAMP)  ## server tier (tests/server): tests against real tritonserver processes
	$(PYTEST_PARALLEL) tests/server

# Snakemake runs its jobs as processes of their own: the tier of tests/workflow.
test-workflow: $(STAMP) $(WORKFLOW_STAMP)  ## workflow tier (tests/workflow): the Snakemake workflow run by snakemake (CI runs it)
	$(PYTEST_PARALLEL) tests/workflow

# Root on Debian: installs the engine and Compose v2 when missing, builds a stand-in of the
# NGC base (cached), then the image, and serves it as compose does (tests/container).
test-container: $(STAMP)  ## container tier (tests/container): the image built and served by Docker (root; slow until the base is cached)
	tests/container/setup.sh
	$(BIN)/pytest -m container tests/container
	@cat build/container-timings.json

# Root on Debian: installs SLURM, munge and MariaDB when missing; the tests start a one-node
# cluster with accounting in a temp directory and stop it (tests/cluster).
test-cluster: $(STAMP) $(WORKFLOW_STAMP)  ## cluster tier (tests/cluster): server job and workflow on a real SLURM cluster (root; CI runs it)
	tests/cluster/setup.sh
	$(BIN)/pytest -m cluster tests/cluster

test-gpu: $(STAMP)  ## gpu tier (tests/gpu): every entry on a CUDA GPU (run on a GPU machine)
	$(BIN)/pytest -m gpu tests/gpu

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Checked when the recipe runs, so only `make serve` and `make image` need an engine. $(error)
# prints one line and makes make exit with status 2 before anything else runs.
require-docker = $(if $(shell $(DOCKER) info >/dev/null 2>&1 && echo ok),,$(error make $@: no \
  Docker engine answers ($(DOCKER) info failed); run `make serve-local` for the embedded Triton server))
require-repository = $(if $(wildcard $(REPOSITORY)/*/config.pbtxt),,$(error make $@: \
  $(REPOSITORY) holds no exported model (no */config.pbtxt); run `make export` first))
# Compose v2: the engine's plugin, else a standalone docker-compose of version 2 (Debian
# bookworm's docker-compose is v1, which cannot read compose.yaml).
compose-v2 = $(shell $(1) version --short 2>/dev/null | grep -qE '^v?2[.]' && echo '$(1)')
compose = $(or $(call compose-v2,$(DOCKER) compose),$(call compose-v2,$(DOCKER_COMPOSE)))
require-compose = $(if $(compose),,$(error make $@: Compose v2 is missing: neither \
  `$(DOCKER) compose` nor a `$(DOCKER_COMPOSE)` of version 2 answers; install Docker's compose \
  plugin (Debian: trixie's docker-compose package)))
require-gpus = $(if $(filter-out all none,$(GPUS)),$(error make $@: GPUS=$(GPUS): use GPUS=all \
  (every GPU) or GPUS=none (CPU only)))
require-nvidia = $(if $(filter none,$(GPUS)),,$(if $(shell $(DOCKER) info --format \
  '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"' && echo ok),,$(error make $@: the \
  NVIDIA container runtime is missing ($(DOCKER) info lists no nvidia runtime); install the \
  NVIDIA Container Toolkit, or run `make serve GPUS=none` (CPU only))))
# The door listens beyond loopback inside the container, so it asks for access tokens: the file
# of them is required, TLS (compose.tls.yaml) taken when its certificate is named. Compose reads
# relative paths from docker/, so each goes to it absolute.
require-file = $(if $(wildcard $($(1))),,$(error make $@: $(1)=$($(1)): no such file; $(2)))
require-token = $(if $(VIRNUCPRO_TOKEN_FILE),$(call require-file,VIRNUCPRO_TOKEN_FILE,give \
  the file of the access tokens),$(error make $@: set VIRNUCPRO_TOKEN_FILE to a file of access \
  tokens, e.g. `openssl rand -hex 32 > token` (README: Access tokens and TLS)))
require-tls = $(if $(VIRNUCPRO_TLS_CERT)$(VIRNUCPRO_TLS_KEY),$(call require-file,VIRNUCPRO_TLS_CERT,give \
  the certificate (PEM) of VIRNUCPRO_TLS_KEY)$(call require-file,VIRNUCPRO_TLS_KEY,give the \
  key (PEM) of VIRNUCPRO_TLS_CERT))
# Mutual TLS (compose.mtls.yaml): the client CA, and the client certificate of the health check.
require-mtls = $(if $(VIRNUCPRO_TLS_CLIENT_CA),$(if $(VIRNUCPRO_TLS_CERT),,$(error make $@: \
  VIRNUCPRO_TLS_CLIENT_CA needs VIRNUCPRO_TLS_CERT and VIRNUCPRO_TLS_KEY))$(foreach v,$(mtls),\
  $(call require-file,$(v),mutual TLS needs the client CA and a client certificate and key for \
  the health check)))
mtls = VIRNUCPRO_TLS_CLIENT_CA VIRNUCPRO_TLS_CLIENT_CERT VIRNUCPRO_TLS_CLIENT_KEY
compose-files = -f docker/compose.yaml $(if $(filter all,$(GPUS)),-f docker/compose.gpus.yaml) \
  $(if $(VIRNUCPRO_TLS_CERT),-f docker/compose.tls.yaml) \
  $(if $(VIRNUCPRO_TLS_CLIENT_CA),-f docker/compose.mtls.yaml)
absolute = $(foreach v,$(1),$(if $($(v)),$(v)="$(abspath $($(v)))"))

serve:  ## NGC Triton container on $(REPOSITORY), all GPUs (GPUS=none: CPU), ports 8000-8002; VIRNUCPRO_TOKEN_FILE=F
	$(require-docker)
	$(require-compose)
	$(require-gpus)
	$(require-nvidia)
	$(require-repository)
	$(require-token)
	$(require-tls)
	$(require-mtls)
	VIRNUCPRO_MODELS="$(abspath $(REPOSITORY))" \
	  $(call absolute,VIRNUCPRO_TOKEN_FILE VIRNUCPRO_TLS_CERT VIRNUCPRO_TLS_KEY) \
	  $(call absolute,$(mtls)) \
	  $(compose) $(compose-files) up --build

serve-local: $(STAMP)  ## embedded Triton server (no Docker) on $(REPOSITORY) (127.0.0.1:8000/8001/8002); VIRNUCPRO_TOKEN_FILE, VIRNUCPRO_TLS_CERT/KEY
	$(BIN)/virnucpro-triton serve --repository $(REPOSITORY)

image:  ## build the server image (docker/Dockerfile) as $(IMAGE), e.g. to push for Kubernetes
	$(require-docker)
	$(DOCKER) build -f docker/Dockerfile $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .

export: $(STAMP)  ## export checkpoints: make export DNABERT_S=dir ESM2=file CLASSIFIER_300=file ... [FORMAT=onnx]
	$(BIN)/virnucpro-triton export --out $(REPOSITORY) --dtype $(DTYPE) $(if $(FORMAT),--format $(FORMAT)) \
	  $(if $(DNABERT_S),--dnabert-s $(DNABERT_S)) $(if $(ESM2),--esm2 $(ESM2)) \
	  $(if $(CLASSIFIER_300),--classifier-300 $(CLASSIFIER_300)) \
	  $(if $(CLASSIFIER_500),--classifier-500 $(CLASSIFIER_500))

bench: $(STAMP)  ## GPU benchmark (benchmarks/): full-size random-weight models, VirNucPro's own way and in-process vs served
	$(BIN)/python -m benchmarks.bench --json-out build/bench.json

clean:  ## remove build outputs and demo results (keeps .venv)
	rm -rf build results
