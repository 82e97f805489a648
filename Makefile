# Two commands matter: `make run` and `make test`. Both create the virtual
# environment on first use. Override TORCH_SPEC (and TORCH_INDEX_URL) on GPU
# hosts, e.g. TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX_URL ?=
PROFILE     ?= cpu
DATA        ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test test-fast fuzz gpu-check lint docs results-export results-add lock setup system-deps setup-gpu serve serve-stack stop-stack stack-status demo demo-aa bench bench-ab bench-cuped bench-gpu bench-service bench-capacity bench-bad-input bench-session bench-requests bench-compare bench-taste bench-new-items bench-scale bench-prepare bench-ray mlflow-ui clean

# requirements.lock pins everything but torch (resolved by `make lock`); torch comes first, from TORCH_SPEC
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e ".[dev]"
	touch $(STAMP)

# where the CPU build of torch is found: a local wheel folder where the machine has one, else PyTorch's CPU index
TORCH_CPU_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

# Re-resolve requirements.lock from pyproject.toml (uv, run from a throw-away tool folder); torch stays out
lock:
	$(PYTHON) -m pip install -q --target $(VENV)-tools "uv==0.13.8"
	echo "$(TORCH_SPEC)+cpu" > $(VENV)-tools/torch-override.txt
	PYTHONPATH=$(VENV)-tools $(VENV)-tools/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line $(TORCH_CPU_WHEELS) \
	  --override $(VENV)-tools/torch-override.txt --no-emit-package torch -o requirements.lock

# ruff (lint + format check) and pyright (basic, through basedpyright) on the library, registry and service
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/basedpyright

# Every generated page: the reference from the code (config fields, CLI help, HTTP API) into docs/reference/, and
# the results pages' sections from the run records in docs/results/runs/; tests/unit/test_{reference,results}_docs.py
# fail while a committed page is stale
docs: $(STAMP)
	$(BIN)/python -m ops.reference
	$(BIN)/python -m ops.results

# After `make run` (DATA=, PROFILE= as it ran): record the champion's run as docs/results/runs/$(NAME).json, then
# rewrite the results pages from the records
results-export: $(STAMP)
	$(BIN)/python -m ops.results export --name $(or $(NAME),movielens-100k) --profile $(PROFILE) \
	  --command "make run$(if $(DATA), DATA=$(DATA))$(if $(filter-out cpu,$(PROFILE)), PROFILE=$(PROFILE))"

# After a benchmark: record its JSON (FILE=bench/results/scorer-cpu.json, NAME= as the page names it), then `make docs`
results-add: $(STAMP)
	$(BIN)/python -m ops.results add $(FILE) $(if $(NAME),--name $(NAME))

# The inner loop: everything not marked slow, model or integration (pyproject.toml lists the tiers): no whole flow runs, no servers, no trained fixtures
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not model and not integration"

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/instructrec pipeline --profile $(PROFILE) $(if $(DATA),--data $(DATA))

# Two workers (pytest-xdist), each taking one work unit at a time in file order: a test module (its module fixtures,
# a trained scorer or a stack, built once), or the modules on the local Ray cluster together (tests/conftest.py);
# the whole-flow tests wait on servers and subprocesses, and the other worker computes meanwhile.
# TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --no-loadscope-reorder)

# The small-data fuzzer at length: FUZZ_DRAWS (default 200) random datasets through every stage (`make test` runs 6)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/flows/test_fuzz.py --hypothesis-show-statistics

# Debian packages the tests drive for real: headless Chromium + ChromeDriver (UI review), PostgreSQL (MLflow store)
SYSTEM_PACKAGES := chromium chromium-driver postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; \
	then echo "system packages present: $(SYSTEM_PACKAGES)"; \
	else echo "installing $(SYSTEM_PACKAGES) (apt)"; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }; fi

# The HTTP service on the champion (and challenger): /recommend, /feedback, /health, /docs
serve: $(STAMP)
	$(BIN)/instructrec serve --profile $(PROFILE)

# The feedback loop end to end in its own home: train on the past, serve, simulated users react, fine-tune, A/B, promote
DEMO_HOME ?= .instructrec-demo
demo: $(STAMP)
	INSTRUCTREC_HOME=$(DEMO_HOME) $(BIN)/instructrec demo --profile $(PROFILE) --rounds 3 --set export.variants=false

# A live A/A: the champion served again as its own challenger, one look of the online gate per round (never promotes)
demo-aa: $(STAMP)
	INSTRUCTREC_HOME=$(DEMO_HOME)-aa $(BIN)/instructrec demo --aa --profile $(PROFILE) --rounds 6 --set export.variants=false

# GPU hosts: the CUDA build of torch and the CUDA 13 / cuDNN 9 runtime that onnxruntime-gpu loads
# the onnxruntime-gpu version pyproject.toml pins (written once)
ORT_GPU_VERSION := $(shell sed -n 's/.*"onnxruntime-gpu==\([^"]*\)".*/\1/p' pyproject.toml)
setup-gpu:
	$(MAKE) setup TORCH_INDEX_URL=$${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu130}
	$(BIN)/python -m pip install -q "onnxruntime-gpu[cuda,cudnn]==$(ORT_GPU_VERSION)"

# Benchmarks print tables and write bench/results/*.json (after `make run`: they use its champion)
bench: $(STAMP)
	$(BIN)/python bench/scorer.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/pipeline.py

# One command on a GPU host: set up CUDA, then the scorer benchmark (fp16 on CUDA, IOBinding)
bench-gpu: setup-gpu
	$(BIN)/python bench/scorer.py

# A GPU host with no project environment (torch, numpy, transformers, onnxruntime-gpu only): the system Python
# runs the training steps at ML-1M's shape (examples/s, MFU) and the exported scorer under ORT's CUDA provider
gpu-check:
	$(PYTHON) bench/gpu_check.py --out bench/results/gpu_check.json

# 50 concurrent clients for 60 s against the service (after `make run`): requests/s, p50/p99, no lost feedback
bench-service: $(STAMP)
	$(BIN)/python bench/service.py

# Serving capacity (after `make run`): the highest /recommend rate at p99 < 50 ms, requests scored alone and
# micro-batched, side by side (~10 min)
bench-capacity: $(STAMP)
	$(BIN)/python bench/capacity.py

# Each class of bad input through the tiny pipeline: exit code, seconds to refuse, the message (docs/how-to/troubleshooting.md)
bench-bad-input: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bad_input.py

# Is the online gate's error rate what it says? Monte-Carlo A/B tests through the gate's own code (~1 h on 2 cores)
bench-ab: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/ab_validity.py --experiments 10000 --aa-experiments 10000 --workers 2

# What CUPED (each user's like rate before the test as a covariate) would save the online test (~1 min)
bench-cuped: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/cuped.py

# Session adaptation A/B on the demo's simulated users (own home .instructrec-session-ab; trains once)
bench-session: $(STAMP)
	$(BIN)/python bench/session_ab.py --profile $(PROFILE)

# Requests as people write them (era, composite, negation, a named title) on the champion of `make run`, served and
# with the rules off (~5 min on ML-100k)
bench-requests: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/request_classes.py --profile $(PROFILE)

# Two homes' champions on the protocol's test cases, per type, paired bootstrap (~5 min on ML-100k):
# make bench-compare BEFORE=/path/home-a AFTER=/path/home-b
bench-compare: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/compare_models.py --profile $(PROFILE) --before $(BEFORE) --after $(AFTER)

# What a stated taste (P2/I0) can say beyond popularity, on the champion of `make run`
bench-taste: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/stated_taste.py --profile $(PROFILE)

# Items held out of training, served through their text vectors: NDCG@10 on them vs popularity
bench-new-items: $(STAMP)
	$(BIN)/python bench/new_items.py --profile $(PROFILE)

# What prepare costs per part, beside another revision's code on the same data (digests must agree)
# make bench-prepare SCALE=100 AGAINST=HEAD~1
bench-prepare: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/prepare.py $(if $(SCALE),--scale $(SCALE)) $(if $(AGAINST),--against $(AGAINST))

# Cost growth of every pipeline stage at 1x, 10x, 100x ML-100k's size (about 100k, 1M, 10M interactions; ~20 min)
bench-scale: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/scale.py

# Batch top-k for 1M synthetic users, one process vs a Ray Data actor pool, side by side (~5 min)
bench-ray: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/ray_batch.py --users 1000000

# Prefect server + worker + MLflow server, every deployment of prefect.yaml (schedules, triggers), the failure
# automation; MLFLOW_BACKEND=postgres puts MLflow on a local PostgreSQL server. Stopped by recorded pid.
serve-stack: $(STAMP) system-deps
	$(BIN)/instructrec stack up

stop-stack: $(STAMP)
	$(BIN)/instructrec stack down

stack-status: $(STAMP)
	$(BIN)/instructrec stack status

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$${INSTRUCTREC_HOME:-.instructrec}/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf .instructrec .instructrec-demo .instructrec-demo-aa
