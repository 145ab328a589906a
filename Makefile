# One entry point for people and CI. Everything runs inside .venv, which `make install` builds
# (and every other target builds on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is only needed by `make export`; 2.13.0 is the CPU build on these machines' disk.
TORCH_SPEC ?= torch==2.13.0
# `make serve` (and export, triton) installs the gateway and the exporter only; test, lint, bench and CI
# (`make install`) the full set: test tools, the client libraries the dialect tests drive, benchmark tools,
# the Helm engine and Kubernetes schemas of `make deploy-check`.
SERVE_EXTRAS ?= export
EXTRAS ?= export,test,dev,clients,bench,deploy

# Export sources: a hub id or a local folder (RERANKER_MODEL / RERANKER_PREFILTER in the environment work too).
# EXPORT_ARGS: --quiet (CI), --max-length N, --int8-full-range (CPUs with VNNI); PREFILTER=same uses the
# cross-encoder's int8 file as the prefilter, PREFILTER=none builds no prefilter.
MODEL ?= $(or $(RERANKER_MODEL),cross-encoder/ms-marco-MiniLM-L-6-v2)
PREFILTER ?= $(or $(RERANKER_PREFILTER),cross-encoder/ms-marco-TinyBERT-L-2-v2)
# The repository `make serve`, `make export` and the benches use: RERANKER_MODEL_REPOSITORY when set, as the gateway reads it.
REPO ?= $(or $(RERANKER_MODEL_REPOSITORY),model_repository)
EXPORT_ARGS ?=
PYTEST_ARGS ?=
# Real weights for the quality/parity tests (CI points this at ../shared/models).
RERANKER_TEST_MODELS ?= $(abspath ../shared/models)
export RERANKER_TEST_MODELS

.PHONY: install install-serve export serve triton triton-setup triton-stop triton-check test test-fast lint deploy-check bench bench-gateway bench-families bench-cascade bench-mixed bench-soak gpu-check clean

# $(call venv_install,EXTRAS): the virtual environment with torch (CPU build from this machine's disk) and
# the project's extras.
define venv_install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(1)]"
	# FlashRank (benchmarked side by side) requires the `onnxruntime` CPU package, which would overwrite
	# onnxruntime-gpu's module: install it without its dependencies (the rest are already here).
	if [[ ",$(1)," == *",bench,"* ]]; then $(PY) -m pip install --no-deps flashrank==0.2.10; fi
	$(PY) -c "import onnxruntime, sys; sys.exit(0 if hasattr(onnxruntime, 'get_available_providers') else 1)"
endef

$(VENV)/.installed: pyproject.toml
	$(call venv_install,$(EXTRAS))
	touch $@

$(VENV)/.installed-serve: pyproject.toml
	$(call venv_install,$(SERVE_EXTRAS))
	touch $@

# Serving targets use the full environment when one is there, else the lean one.
SERVE_INSTALL := $(if $(wildcard $(VENV)/.installed),$(VENV)/.installed,$(VENV)/.installed-serve)

install: $(VENV)/.installed

install-serve: $(VENV)/.installed-serve

export: $(SERVE_INSTALL)
	$(PY) -m export --model "$(MODEL)" --prefilter "$(PREFILTER)" --output "$(REPO)" $(EXPORT_ARGS)

# Serves the embedded default (local ONNX Runtime, no Triton) on RERANKER_HOST:RERANKER_PORT. First
# `python -m gateway check` looks for the models it will serve (RERANKER_MODELS, RERANKER_MODELS_FILE, else
# RERANKER_MODEL_NAME, and the prefilter): all there, it serves; only the default `reranker`/`prefilter` folders
# missing (exit 3), `make export` builds them first; other models missing, it stops and says how to export them.
serve: $(SERVE_INSTALL)
	@RERANKER_MODEL_REPOSITORY="$(REPO)" $(PY) -m gateway check; status=$$?; \
	if [ $$status -eq 3 ]; then $(MAKE) export; elif [ $$status -ne 0 ]; then exit $$status; fi
	RERANKER_MODEL_REPOSITORY="$(REPO)" $(PY) -m gateway

# A real tritonserver (from the nvidia-pytriton wheel, python backend) on 127.0.0.1:8000/8001/8002,
# no Docker, no GPU: the repository's configs/cpu.pbtxt runs model.onnx with ONNX Runtime.
triton-setup: $(SERVE_INSTALL)
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
	$(PY) -m ruff check gateway export tests bench deploy
	$(PY) -m ruff format --check gateway export tests bench deploy
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

# The Helm chart (deploy/helm/reranker) offline: helm lint + render with each values file, every object against
# the Kubernetes schemas, and the wiring against the code (deploy/check.py; tests/unit/deploy runs it in `make test`).
deploy-check: install
	$(PY) -m deploy.check

# Quality through the HTTP service, speed side by side, concurrency sweep, padding, speed and memory per model
# family, several models under load -> bench/results/ (about 60 min on 2 idle cores, plus the mixed section's
# exports on first use; BENCH_ARGS="--size quick" about 20, "--resume"
# continues an interrupted run, "--sections quality,speed" a subset).
bench: install
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m bench --model "$(MODEL)" --prefilter "$(PREFILTER)" --model-repository "$(REPO)" $(BENCH_ARGS)

# The cascade section (bench/results/cascade.md + cascade.png): every BM25 top-100 pair scored once by both models
# (cached in bench/.work/cascade, about 15 min on 2 shared cores), then every selection rule x keep offline, and
# the speed of the shipped default against sentence-transformers side by side.
bench-cascade: install
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m bench.cascade --model-repository "$(REPO)" $(BENCH_ARGS)

# Speed and memory per model family alone (bench/results/families.{json,md}): a ModernBERT-base-sized classifier
# and a Qwen3-0.6B-sized decoder reranker (random weights, the real cost), the gateway in process (fp32, int8)
# against sentence-transformers CrossEncoder side by side, and the peak RSS of one gateway serving both
# (RERANKER_MODELS) against each alone. About 25 min on 2 shared cores; BENCH_ARGS="--size quick" less.
bench-families: install
	$(PY) -m bench.families $(BENCH_ARGS)

# Several models in one gateway under load (bench/results/mixed.{json,md}): the MiniLM stand-in beside an 8-layer
# Qwen3-layout decoder (real Qwen3 tokenizer, random weights; both exported into bench/.work/mixed on first use,
# about 40 min on 2 shared cores); a light client on the small model alone for 30 s, then while 6 clients flood
# the decoder for 60 s. BENCH_ARGS="--size quick": 10 s + 20 s.
bench-mixed: install
	$(PY) -m bench.mixed $(BENCH_ARGS)

# The gateway's own targets (memory, overhead over bare session.run, bucketing, two-stage gain).
bench-gateway: install
	$(PY) bench/gateway_overhead.py --repository "$(REPO)"

# Issue 11's soak: closed-loop clients while the local tritonserver is SIGKILLed every minute; fails on any 5xx.
SOAK_ARGS ?= --minutes 10 --clients 32 --kill-every 60
bench-soak: install
	$(MAKE) triton-setup
	@test -f "$(REPO)/reranker/manifest.json" || $(MAKE) export
	$(PY) -m bench.soak --model-repository "$(REPO)" --out bench/results/soak.json $(SOAK_ARGS)

# The GPU path in one command (bench/gpu_check.py; exit codes in its EXIT_CODES and README). Online, on a GPU
# machine that reaches the registry: the preflight (no NVIDIA GPU and driver: exit 3 at once, nothing installed),
# the venv with onnxruntime-gpu's CUDA/cuDNN wheels and torch's CUDA build (GPU_WHEELS=DIR: from a folder of
# wheels, no registry), the export only when MODEL/PREFILTER are given and the repository was not exported from
# them, then bench/results/gpu.{json,md} (GPU_OUT). Offline, GPU_BUNDLE=DIR (the pieces of
# `python -m bench.gpu_bundle build`, received there): no venv and no `make install`: GPU_PYTHON and its own
# packages, what it lacks installed from the bundle with --no-index, nothing exported. GPU_DEADLINE_S bounds the
# run (the report of what was measured is written anyway).
GPU_WHEELS ?=
GPU_BUNDLE ?=
GPU_PYTHON ?= $(PYTHON)
GPU_OUT ?= bench/results
GPU_DEADLINE_S ?= 480
gpu-check:
ifneq ($(GPU_BUNDLE),)
	$(GPU_PYTHON) -m bench.gpu_check run --bundle "$(GPU_BUNDLE)" --out "$(GPU_OUT)" --deadline-s $(GPU_DEADLINE_S)
else
	$(PYTHON) -m bench.gpu_check preflight
	$(MAKE) install
	$(PY) -m bench.gpu_check run --model-repository "$(REPO)" --out "$(GPU_OUT)" --deadline-s $(GPU_DEADLINE_S) \
		$(if $(filter command line environment,$(origin MODEL)),--model "$(MODEL)") \
		$(if $(filter command line environment,$(origin PREFILTER)),--prefilter "$(PREFILTER)") \
		$(if $(GPU_WHEELS),--wheels "$(GPU_WHEELS)")
endif

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .cache/test-repos
