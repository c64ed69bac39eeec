# Every target bootstraps first (scripts/bootstrap.sh: Debian packages + .venv), so a fresh
# machine needs nothing but `make <target>`.

SHELL := /bin/bash
BIN := .venv/bin
PY_SOURCES := python tests/python tools

.PHONY: bootstrap demo test test-sql test-python lint bench up down clean

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

bench: bootstrap
	$(BIN)/costwarden bench
	$(BIN)/costwarden bench proxy
	$(BIN)/costwarden bench adapters

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
