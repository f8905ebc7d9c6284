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
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the project with its dev tools

services: ## Make sure PostgreSQL and Redis are reachable (starts or installs them)
	@bash scripts/ensure-services.sh

demo: install ## Seed ~1,000 demo users and run today's partition of every market (embedded defaults)
	$(BIN)/overnight demo

DAGSTER_HOME_DIR := $(CURDIR)/.data/dagster-home
dev: install services ## Start the Dagster UI (dagster dev) on http://127.0.0.1:3000
	@mkdir -p $(DAGSTER_HOME_DIR) && cp dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	@export DAGSTER_PG_URL=$${DAGSTER_PG_URL:-postgresql+psycopg2://root@127.0.0.1:5432/dagster}; \
	  bash scripts/ensure-dagster-db.sh && \
	  DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/overnight migrate && \
	  DAGSTER_HOME=$(DAGSTER_HOME_DIR) exec $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: install services ## Run the test suite against real PostgreSQL and Redis
	$(BIN)/pytest

check: install ## Lint, format check, types, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install services ## Run the benchmarks (results go in docs/PERFORMANCE.md)
	$(BIN)/python bench/seed_bench.py
	$(BIN)/python bench/core_bench.py --floor
	$(BIN)/python bench/providers_bench.py
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/dashboard_bench.py

seed: install ## Seed N synthetic users into DATABASE_URL (make seed N=1000)
	$(BIN)/overnight migrate
	$(BIN)/overnight seed --users $(or $(N),1000)
