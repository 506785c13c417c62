# The two commands: `make demo` and `make test`. Everything else is a helper they use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS := -q --disable-pip-version-check

# Where a new terminal's Prefect reads its profiles, taken before PREFECT_HOME is set below (that one
# is the project's own): `make start`/`make demo` save the profile ow-local there and make it active.
export OW_PREFECT_PROFILES_PATH := $(or $(PREFECT_PROFILES_PATH),$(or $(PREFECT_HOME),$(HOME)/.prefect)/profiles.toml)
# Local state of the embedded default (Prefect's SQLite database, the artifact store, logs, pid files).
export OW_HOME ?= $(CURDIR)/.ow
export PREFECT_HOME ?= $(OW_HOME)/prefect
export OW_PREFECT_PORT ?= 4200
export PREFECT_API_URL ?= http://127.0.0.1:$(OW_PREFECT_PORT)/api
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Test processes (pytest-xdist, one file per process): each runs its own Prefect server and workers,
# and much of an end-to-end test is waiting on them, so two overlap well even on two cores. Files start
# longest first (tests/fixtures/scheduling.py), an order xdist keeps with --no-loadscope-reorder.
TEST_WORKERS ?= 2
# More pytest options, e.g. PYTEST_ARGS=--record-module-seconds to re-time the modules after a run.
PYTEST_ARGS ?=
# The slowest tests are listed at the end of every run (CI's log included): where make test's time goes.
TEST_DURATIONS ?= 20

.PHONY: help install demo start test stop lint lock clean

help:
	@echo "make demo   - set up, start Prefect + a worker, fine-tune the tiny model through finetune/sft, resubmit (cache hit)"
	@echo "make test   - set up and run the whole test suite"
	@echo "make start  - start (or reuse) Prefect + the workers and deployments, without the demo"
	@echo "make stop   - stop the Prefect server and workers that make demo started"
	@echo "make production DATABASE_URL=postgresql://… REDIS_URL=redis://… - the production profile (scripts/production.py)"
	@echo "make lint   - ruff"
	@echo "make lock   - re-resolve dependencies and rewrite constraints.txt"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	# constraints.txt pins torch to its CPU build so no CUDA wheels are pulled.
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py

start: install
	$(BIN)/python scripts/services.py start

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=$(TEST_DURATIONS) $(PYTEST_ARGS)

# tests/test_browser.py opens the Prefect UI in Debian's headless Chromium, driven through its
# chromedriver (no browser download). Installed once where it is missing and apt-get can (as root).
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "tests/test_browser.py needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"; fi

# The production profile: Prefect on PostgreSQL + Redis, several API processes behind one URL
# (README, "Production profile"). `python scripts/production.py stop|status` for the rest.
.PHONY: production
production: install
	$(BIN)/python scripts/production.py start --database-url '$(DATABASE_URL)' --redis-url '$(REDIS_URL)'

stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/services.py stop; else echo "nothing to stop"; fi

lint: install
	$(BIN)/ruff check .

lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	.lockenv/bin/python -m pip install $(PIP_FLAGS) 'torch==2.13.0' -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^ow-prefect' > constraints.txt
	rm -rf .lockenv

clean: stop
	rm -rf $(OW_HOME)
