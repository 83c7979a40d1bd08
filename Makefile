# dispatchbox — `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help test quick demo lint typecheck bench clean system api-docs services

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev]"
	@touch $(STAMP)

system: ## install the system packages the suite needs (pg_cron, pgbouncer, promtool), or say how
	@scripts/system-packages.sh

services: ## start RabbitMQ, NATS JetStream and Redis on loopback if they are not running
	@scripts/services.sh

install: $(STAMP) ## create the virtualenv and install dispatchbox with dev extras

lint: $(STAMP) ## ruff (lint and format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy --strict on dispatchbox/
	$(VENV)/bin/mypy

# On our own throwaway cluster every test runs: a skip (no pg_cron, no pgbouncer) is a failure.
test: system services $(STAMP) lint typecheck ## lint, typecheck, then the whole test suite on a real PostgreSQL
	$(if $(DISPATCHBOX_TEST_DSN),,DISPATCHBOX_REQUIRE_PG_CRON=1) $(VENV)/bin/pytest $(PYTEST_ARGS)

quick: services $(STAMP) ## the everyday suite: everything but the fault-injection tests
	$(VENV)/bin/pytest -m "not fault" $(PYTEST_ARGS)

demo: $(STAMP) ## the end-to-end demo on a throwaway database
	$(VENV)/bin/dispatchbox demo

api-docs: $(STAMP) ## regenerate docs/en/api.md and docs/pl/api.md from the docstrings
	$(PY) scripts/api_reference.py

bench: $(STAMP) ## every benchmark, figures as a table and JSON
	$(PY) -m bench

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
