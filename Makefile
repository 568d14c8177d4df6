# hero-procd — everything a newcomer needs: `make run`, `make test`.
PYTHON ?= python3
# One venv per interpreter: `make test PYTHON=python3.12` builds and uses .venv-3.12.x
# (its exact version), so trying another Python never reuses a venv built by a
# different one. `VENV=...` still picks a folder outright.
ifeq ($(origin VENV),undefined)
ifeq ($(PYTHON),python3)
VENV := .venv
else
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
ifeq ($(PY_VERSION),)
$(error cannot run PYTHON=$(PYTHON); give its full path (or, under pyenv, set PYENV_VERSION))
endif
VENV := .venv-$(PY_VERSION)
endif
endif
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install run test lint bench schema clean

all: lint test

$(STAMP): pyproject.toml setup.py hero_procd/engine/_spawn.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

## Start the daemon in the foreground on the default socket and database.
run: $(STAMP)
	$(BIN)/hero-procd

## Run the whole suite: unit tests and the real daemon driven over its socket, one test file
## per worker at a time (`make test TEST_WORKERS=0` runs it in this process alone).
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests integration

lint: $(STAMP)
	$(BIN)/ruff check hero_procd tests integration
	$(BIN)/ruff format --check hero_procd tests integration
	$(BIN)/mypy

## Benchmarks: print a table and write integration/bench/results/latest.json.
bench: $(STAMP)
	$(BIN)/python -m integration.bench.run

## Regenerate README's method table from rpc_schema/openrpc.json.
schema: $(STAMP)
	$(BIN)/python -m hero_procd.rpc.schema_doc README.md rpc_schema/README.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
