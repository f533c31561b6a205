# VirNucPro on Triton. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Deployment checkers (checkov, hadolint, kubernetes-validate, ...) for the tests, kept apart
# from .venv: their dependencies clash with its pins.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
DOCKER ?= docker
REPOSITORY ?= model_repository
DTYPE ?= fp32
IMAGE ?= virnucpro-triton:0.1.0

.DEFAULT_GOAL := help
.PHONY: help venv tools demo test lint serve serve-local image export bench clean

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

demo: $(STAMP)  ## tiny random models + embedded Triton server + client on examples/*.fasta
	$(BIN)/virnucpro-triton demo

test: $(STAMP) $(TOOLS_STAMP)  ## unit and integration tests (starts real tritonserver processes)
	$(BIN)/pytest

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Checked when the recipe runs, so only `make serve` and `make image` need an engine. $(error)
# prints one line and makes make exit with status 2 before anything else runs.
require-docker = $(if $(shell $(DOCKER) info >/dev/null 2>&1 && echo ok),,$(error make $@: no \
  Docker engine answers ($(DOCKER) info failed); run `make serve-local` for the embedded Triton server))
require-repository = $(if $(wildcard $(REPOSITORY)/*/config.pbtxt),,$(error make $@: \
  $(REPOSITORY) holds no exported model (no */config.pbtxt); run `make export` first))

serve:  ## NGC Triton container with the project on $(REPOSITORY), all GPUs, ports 8000-8002 (Docker)
	$(require-docker)
	$(require-repository)
	VIRNUCPRO_MODELS="$(abspath $(REPOSITORY))" $(DOCKER) compose -f docker/compose.yaml up --build

serve-local: $(STAMP)  ## embedded Triton server (no Docker) on $(REPOSITORY) (127.0.0.1:8000/8001/8002)
	$(BIN)/virnucpro-triton serve --repository $(REPOSITORY)

image:  ## build the server image (docker/Dockerfile) as $(IMAGE), e.g. to push for Kubernetes
	$(require-docker)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) .

export: $(STAMP)  ## export checkpoints: make export DNABERT_S=dir ESM2=file CLASSIFIER_300=file ... [FORMAT=onnx]
	$(BIN)/virnucpro-triton export --out $(REPOSITORY) --dtype $(DTYPE) $(if $(FORMAT),--format $(FORMAT)) \
	  $(if $(DNABERT_S),--dnabert-s $(DNABERT_S)) $(if $(ESM2),--esm2 $(ESM2)) \
	  $(if $(CLASSIFIER_300),--classifier-300 $(CLASSIFIER_300)) \
	  $(if $(CLASSIFIER_500),--classifier-500 $(CLASSIFIER_500))

bench: $(STAMP)  ## GPU benchmark: full-size random-weight models, in-process vs served (docs/performance.md)
	$(BIN)/python -m virnucpro_triton.bench --json-out build/bench.json

clean:  ## remove build outputs and demo results (keeps .venv)
	rm -rf build results
