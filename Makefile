# Every target bootstraps first (scripts/bootstrap.sh: Debian packages + .venv), so a fresh
# machine needs nothing but `make <target>`.

SHELL := /bin/bash
BIN := .venv/bin
PY_SOURCES := python tests/python tools

.PHONY: bootstrap demo test test-sql test-python lint bench bench-full soak-bench soak up down clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/costwarden demo

test: bootstrap
	scripts/test.sh all

test-sql: bootstrap
	scripts/test.sh sql

test-python: bootstrap
	scripts/test.sh python

lint: bootstrap
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	$(BIN)/sqlfluff lint sql/ --dialect postgres
	scripts/plpgsql_check.sh

# Every figure of docs/performance.md; the ledger-size figures (the saga's and
# fn_spend_summary's) with 1 M entries (bench-full: 10 M, about 6 more minutes each).
# soak-bench: backend memory over a 10-minute saga run.
bench: bootstrap
	$(BIN)/costwarden bench --ledger-rows 1000000
	$(BIN)/costwarden bench spend --large 1000000
	$(BIN)/costwarden bench proxy
	$(BIN)/costwarden bench adapters

bench-full: bootstrap
	$(BIN)/costwarden bench --ledger-rows 10000000
	$(BIN)/costwarden bench spend

soak-bench: bootstrap
	$(BIN)/costwarden bench soak --minutes 10 --clients 8

# Money correctness under faults, long: the outage test with a 30 s outage, then the
# saga against its model for SOAK_OPS operations on SOAK_WORKERS connections with the
# server killed (SIGKILL) every SOAK_KILL_EVERY seconds on average
# (tests/python/soak.py; the full checks every SOAK_CHECK_EVERY operations, the checks of
# every step always; e.g. `make soak SOAK_OPS=50000`).
SOAK_OPS ?= 1000000
SOAK_WORKERS ?= 4
SOAK_KILL_EVERY ?= 20
SOAK_CHECK_EVERY ?= 50
soak: bootstrap
	COSTWARDEN_OUTAGE_SECONDS=30 $(BIN)/pytest tests/python/test_outage.py -q -p no:logging
	$(BIN)/python tests/python/soak.py --ops $(SOAK_OPS) --workers $(SOAK_WORKERS) \
		--kill-every $(SOAK_KILL_EVERY) --check-every $(SOAK_CHECK_EVERY)

up: bootstrap
	$(BIN)/costwarden up

down: bootstrap
	$(BIN)/costwarden down

# Stops the local clusters, then removes them (the data in .costwarden goes too) and caches.
clean:
	-@[ -x $(BIN)/python ] && $(BIN)/python -m costwarden.embedded down --data-dir .costwarden/test-pg/pgdata 2>/dev/null
	-@[ -x $(BIN)/python ] && $(BIN)/python -m costwarden.embedded down 2>/dev/null
	rm -rf .costwarden build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 rm -rf
