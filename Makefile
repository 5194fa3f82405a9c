# The README's commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest bench clean

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

# Measures users_api against a raw-driver app, a SQLAlchemy async ORM app, the tutorial's
# sync-session app and a no-database app, on PostgreSQL (BENCH_POSTGRES_URL, default
# TEST_POSTGRES_URL) and SQLite; writes bench/results/<date>.md/.json/.png (~20 min).
# BENCH_QUICK=1: a short run that checks it all works, written to bench/results/tmp/.
bench: $(BENCH_STAMP)  ## benchmark; see bench/NOTES.md
	BENCH_QUICK=$(BENCH_QUICK) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache users_api.db*

# The suite on the other supported line: the newest SQLAlchemy 2.0 and the oldest FastAPI
# with function-scoped dependencies, in a venv of its own (.venv-sa20). Old Starlette
# (what FastAPI 0.121 allows) imports an anyio alias that newer anyio deprecates.
SA20_VENV := .venv-sa20
SA20_STAMP := $(SA20_VENV)/.installed
FASTAPI_OLDEST ?= 0.121.0
SA20_PYTEST_ARGS ?= tests
$(SA20_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SA20_VENV)
	$(SA20_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SA20_VENV)/bin/python -m pip install --quiet -e '.[test]' 'sqlalchemy[asyncio]<2.1' 'fastapi==$(FASTAPI_OLDEST)'
	touch $(SA20_STAMP)

.PHONY: test-sa20
test-sa20: $(SA20_STAMP)  ## the suite on SQLAlchemy 2.0 and FastAPI $(FASTAPI_OLDEST)
	$(SA20_VENV)/bin/python -c 'import sqlalchemy, fastapi; print("SQLAlchemy", sqlalchemy.__version__, "FastAPI", fastapi.__version__)'
	$(SA20_VENV)/bin/mypy --strict --cache-dir $(SA20_VENV)/.mypy_cache src
	$(SA20_VENV)/bin/pytest -W 'ignore:The anyio.abc.BlockingPortal alias is deprecated:DeprecationWarning' $(SA20_PYTEST_ARGS)
