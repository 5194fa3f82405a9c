# The README's commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

run: $(STAMP)  ## migrate the database named by DATABASE_URL and serve on http://$(HOST):$(PORT)
	$(BIN)/alembic upgrade head
	$(BIN)/uvicorn users_api.main:app --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest  ## ruff, mypy --strict, and every test on SQLite and PostgreSQL

# schemathesis against users_api's schema on both databases, with many more examples than
# the short run in `make test` (FUZZ_EXAMPLES, FUZZ_SEED).
FUZZ_EXAMPLES ?= 300
FUZZ_SEED ?= 1
fuzz: $(STAMP)  ## fuzz the API (tests/fuzz) for longer
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/pytest tests/fuzz -p no:cacheprovider

# Measures users_api against a raw-driver app, a SQLAlchemy async ORM app, the tutorial's
# sync-session app and a no-database app, on PostgreSQL (BENCH_POSTGRES_URL, default
# TEST_POSTGRES_URL) and SQLite; writes bench/results/<date>.md/.json/.png (~20 min).
# BENCH_QUICK=1: a short run that checks it all works, written to bench/results/tmp/.
bench: $(BENCH_STAMP)  ## benchmark; see bench/NOTES.md
	BENCH_QUICK=$(BENCH_QUICK) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache users_api.db*
