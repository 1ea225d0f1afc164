# Two commands matter: `make demo` and `make test`. Both call `make setup`, which is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
DEMO_DIR ?= demo

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# Re-runs only when the project's dependencies change. torch is pinned to the local CPU wheel first,
# so nothing later can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[encoders,dev]' torch==2.13.0
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

test: setup lint
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/mahn demo --out $(DEMO_DIR)

bench: setup
	$(BIN)/python benchmarks/prepare_speed.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
