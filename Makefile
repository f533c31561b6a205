# VirNucPro on Triton. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPOSITORY ?= model_repository
DTYPE ?= fp32

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint serve export bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned dependencies and the virnucpro-triton command

demo: $(STAMP)  ## tiny random models + embedded Triton server + client on examples/*.fasta
	$(BIN)/virnucpro-triton demo

test: $(STAMP)  ## unit and integration tests (starts real tritonserver processes)
	$(BIN)/pytest

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: $(STAMP)  ## run the embedded Triton server on $(REPOSITORY) (127.0.0.1:8000/8001/8002)
	$(BIN)/virnucpro-triton serve --repository $(REPOSITORY)

export: $(STAMP)  ## export checkpoints: make export DNABERT_S=dir ESM2=file CLASSIFIER_300=file ... [FORMAT=onnx]
	$(BIN)/virnucpro-triton export --out $(REPOSITORY) --dtype $(DTYPE) $(if $(FORMAT),--format $(FORMAT)) \
	  $(if $(DNABERT_S),--dnabert-s $(DNABERT_S)) $(if $(ESM2),--esm2 $(ESM2)) \
	  $(if $(CLASSIFIER_300),--classifier-300 $(CLASSIFIER_300)) \
	  $(if $(CLASSIFIER_500),--classifier-500 $(CLASSIFIER_500))

bench: $(STAMP)  ## GPU benchmark: full-size random-weight models, in-process vs served (docs/performance.md)
	$(BIN)/python -m virnucpro_triton.bench --json-out build/bench.json

clean:  ## remove build outputs and demo results (keeps .venv)
	rm -rf build results
