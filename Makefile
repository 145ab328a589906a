# One entry point for people and CI. Everything runs inside .venv, which `make install` builds
# (and every other target builds on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is only needed by `make export`; 2.13.0 is the CPU build on these machines' disk.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= export,test,dev,clients,bench

# Export sources: a hub id or a local folder (RERANKER_MODEL / RERANKER_PREFILTER in the environment work too).
# EXPORT_ARGS: --quiet (CI), --max-length N, --no-int8-reduce-range (CPUs with VNNI); PREFILTER=same uses the
# cross-encoder's int8 file as the prefilter, PREFILTER=none builds no prefilter.
MODEL ?= $(or $(RERANKER_MODEL),cross-encoder/ms-marco-MiniLM-L-6-v2)
PREFILTER ?= $(or $(RERANKER_PREFILTER),cross-encoder/ms-marco-TinyBERT-L-2-v2)
REPO ?= model_repository
EXPORT_ARGS ?=
PYTEST_ARGS ?=
# Real weights for the quality/parity tests (CI points this at ../shared/models).
RERANKER_TEST_MODELS ?= $(abspath ../shared/models)
export RERANKER_TEST_MODELS

.PHONY: install export serve triton triton-setup triton-stop triton-check test test-fast lint bench bench-gateway bench-cascade clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	# FlashRank (benchmarked side by side) requires the `onnxruntime` CPU package, which would overwrite
	# onnxruntime-gpu's module: install it without its dependencies (the rest are already here).
	if [[ ",$(EXTRAS)," == *",bench,"* ]]; then $(PY) -m pip install --no-deps flashrank==0.2.10; fi
	$(PY) -c "import onnxruntime, sys; sys.exit(0 if hasattr(onnxruntime, 'get_available_providers') else 1)"
	touch $@

install: $(VENV)/.installed

export: install
	$(PY) -m export --model "$(MODEL)" --prefilter "$(PREFILTER)" --output "$(REPO)" $(EXPORT_ARGS)

# Serves the embedded default (local ONNX Runtime, no Triton) on RERANKER_HOST:RERANKER_PORT,
# exporting the models first when the repository is missing.
serve: install
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	RERANKER_MODEL_REPOSITORY="$(REPO)" $(PY) -m gateway

# A real tritonserver (from the nvidia-pytriton wheel, python backend) on 127.0.0.1:8000/8001/8002,
# no Docker, no GPU: the repository's configs/cpu.pbtxt runs model.onnx with ONNX Runtime.
triton-setup: install
	$(PY) -m export.triton_local setup

triton: triton-setup
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m export.triton_local serve --model-repository "$(REPO)"

triton-stop:
	$(PY) -m export.triton_local stop

# Start the local server, wait until it answers /v2/health/ready, stop it.
triton-check: triton-setup
	$(PY) -m export.triton_local check --model-repository "$(REPO)"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check gateway export tests bench
	$(PY) -m ruff format --check gateway export tests bench
	$(PY) -m mypy

# Quality through the HTTP service, speed side by side, concurrency sweep -> bench/results/ (about 35 min on
# 2 idle cores; BENCH_ARGS="--size quick" about 10, "--resume" continues an interrupted run).
bench: install
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m bench --model "$(MODEL)" --prefilter "$(PREFILTER)" --model-repository "$(REPO)" $(BENCH_ARGS)

# The cascade section (bench/results/cascade.md + cascade.png): every BM25 top-100 pair scored once by both models
# (cached in bench/.work/cascade, about 15 min on 2 shared cores), then every selection rule x keep offline, and
# the speed of the shipped default against sentence-transformers side by side.
bench-cascade: install
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m bench.cascade --model-repository "$(REPO)" $(BENCH_ARGS)

# The gateway's own targets (memory, overhead over bare session.run, bucketing, two-stage gain).
bench-gateway: install
	$(PY) bench/gateway_overhead.py --repository "$(REPO)"

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .cache/test-repos
