# Every target installs what it needs; `make test` works on a fresh clone.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help install services demo dev test check bench seed

help: ## Show this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@if [ -L $(VENV) ]; then echo "$(VENV) links to another checkout's venv: installing here would point its editable package at this checkout; run make there, or PYTHONPATH=$(CURDIR) here" >&2; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the project with its dev tools

services: ## Make sure PostgreSQL, Redis, Chromium and axe-core are there (starts or installs them)
	@bash scripts/ensure-services.sh

demo: install ## Seed ~1,000 demo users and run each market's current or next session (embedded defaults)
	$(BIN)/overnight demo

# The one Dagster home of this checkout: `make demo` writes its runs there, `make dev`
# serves it; its dagster.yaml is written from deploy/dagster.yaml (runner.prepare_home).
# Instance storage is SQLite files inside it, or PostgreSQL when DAGSTER_PG_URL
# is set (`make dev DAGSTER_PG_URL=postgresql+psycopg2://root@127.0.0.1:5432/dagster`).
DAGSTER_HOME_DIR := $(CURDIR)/.data/dagster-home
PORT ?= 3000
dev: install services ## Start the Dagster UI (dagster dev) on http://127.0.0.1:$(PORT) (make dev PORT=3001)
	@if [ -n "$${DAGSTER_PG_URL:-}" ]; then bash scripts/ensure-dagster-db.sh; fi
	@$(BIN)/python -m overnight_pipeline.runner >/dev/null
	$(BIN)/overnight migrate
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) exec $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(PORT) \
	  $(if $(filter json,$(LOG_FORMAT)),--log-format json)

# Two workers (pytest-xdist), a test module per worker at a time (its module fixtures built
# once): the end-to-end modules wait on daemons and subprocesses while the other worker runs.
# `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2
test: install services ## Run the test suite against real PostgreSQL and Redis
	$(BIN)/pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

check: install ## Lint, format check, types, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/dg check defs

bench: install services ## Run the benchmarks (results go in docs/PERFORMANCE.md)
	$(BIN)/python bench/seed_bench.py
	$(BIN)/python bench/load_removals_bench.py
	$(BIN)/python bench/load_bench.py
	$(BIN)/python bench/core_bench.py
	HYPOTHESIS_PROFILE=exact-long $(BIN)/pytest -q -p no:cacheprovider overnight_pipeline_tests/core/test_exact_oracle.py
	$(BIN)/python bench/providers_bench.py
	$(BIN)/python bench/pipeline_bench.py --users 1000 10000 --with-100k --shards 1 2
	$(BIN)/python bench/storage_bench.py
	$(BIN)/python bench/two_year_bench.py
	$(BIN)/python bench/dashboard_bench.py
	$(BIN)/python bench/recalc_latency_bench.py

seed: install ## Seed N synthetic users into DATABASE_URL (make seed N=1000)
	$(BIN)/overnight migrate
	$(BIN)/overnight seed --users $(or $(N),1000)
