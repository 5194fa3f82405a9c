# The README's commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Worker processes (each with its own pool); WEB_CONCURRENCY is the usual way to say it.
WORKERS ?= $(or $(WEB_CONCURRENCY),1)
# Seconds requests in flight get after SIGTERM before the app answers them 503; uvicorn
# cancels what still runs SHUTDOWN_GRACE_S + 5 s after SIGTERM (see docs/reliability.md).
SHUTDOWN_GRACE_S ?= 5

.PHONY: run test lint typecheck pytest chaos bench reliability fuzz clean

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
	WEB_CONCURRENCY=$(WORKERS) SHUTDOWN_GRACE_S=$(SHUTDOWN_GRACE_S) $(BIN)/uvicorn users_api.main:app \
		--host $(HOST) --port $(PORT) --workers $(WORKERS) \
		--timeout-graceful-shutdown $(shell echo $$(( $(SHUTDOWN_GRACE_S) + 5 )))

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest  ## ruff, mypy --strict, and every test on SQLite and PostgreSQL

# Item processing under kill -9: 200 items and 20 kills of two processes on PostgreSQL,
# 10 kills on SQLite; prints the figures (a few minutes). make test runs a short variant.
chaos: $(STAMP)  ## the long chaos runs of item processing (tests/reliability/test_item_chaos.py)
	$(BIN)/pytest -m chaos tests/reliability/test_item_chaos.py -s $(PYTEST_ARGS)

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

# The fault scenarios in full (restart, crash, killed backends, network, churn, workers,
# shutdown, PgBouncer), each printing its figures; `make test` runs a short variant of each.
reliability: $(STAMP)  ## fault scenarios, full length (~15 min); see docs/reliability.md
	RELIABILITY_FULL=1 $(BIN)/pytest tests/reliability -s $(PYTEST_ARGS)

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
