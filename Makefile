# Two commands matter: `make demo` and `make test`. Both call `make setup`, which is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
DEMO_DIR ?= demo
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup test lint browser demo bench clean

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

# The page test drives Debian's Chromium: installed here when this user can, else one line says how.
# MAHN_NO_BROWSER=1 make test runs everything else.
browser:
	@[ -x $(CHROMIUM) ] || [ "$$MAHN_NO_BROWSER" = 1 ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  { echo "make test needs Chromium for the page test: sudo apt-get install chromium (or MAHN_NO_BROWSER=1 make test to skip it)" >&2; exit 2; }

# two workers, one per core (each test runs torch on one thread); a test file stays on one worker, so its
# module fixtures (trained runs) are made once
test: setup lint browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

demo: setup
	$(BIN)/mahn demo --out $(DEMO_DIR)

bench: setup
	$(BIN)/python benchmarks/prepare_speed.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
