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

.PHONY: run test setup lint mlflow-ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/instructrec pipeline --profile $(PROFILE) $(if $(DATA),--data $(DATA))

test: $(STAMP)
	$(BIN)/python -m pytest -q

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$${INSTRUCTREC_HOME:-.instructrec}/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf .instructrec
