# keyshift developer tasks. Java 17+ and Maven must be installed; redis-server is
# installed on demand (apt-get, when running as root).
#
#   make test                  lint, typecheck and the whole test suite against the sandbox
#   make test-unit             the unit tests only (no Java, Kafka or Redis needed)
#   make demo DEMO=path.py     run a demo script against the sandbox
#   make sandbox / make down   start / stop the local Kafka + Redis sandbox
#   make docs                  build the documentation site (mkdocs, strict) into build/site

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KEYSHIFT := $(BIN)/keyshift
STAMP := $(VENV)/.install-stamp
DEMO ?= examples/demo.py
SANDBOX_ARGS ?= --redis-instances 2
PYTEST_ARGS ?=
RUFF ?= $(BIN)/ruff
MYPY ?= $(BIN)/mypy
PYTEST ?= $(BIN)/pytest
# `keyshift dev env` prints the `export KEYSHIFT_...` lines of the running sandbox
# (the content of $KEYSHIFT_HOME/sandbox/env).
WITH_SANDBOX_ENV = eval "$$($(KEYSHIFT) dev env)" &&

.PHONY: help venv install check-redis check-java sandbox test test-unit demo lint typecheck down clean

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@

check-redis:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "redis-server missing: installing it with apt-get"; \
	    apt-get update && apt-get install -y redis-server; \
	  else \
	    echo "redis-server is missing: run  sudo apt-get update && sudo apt-get install -y redis-server" >&2; \
	    exit 1; \
	  fi; \
	fi

check-java:
	@command -v java >/dev/null 2>&1 || { echo "java is missing: install a JDK 17+ (e.g. apt-get install -y openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v mvn >/dev/null 2>&1 || { echo "mvn is missing: install Maven (e.g. apt-get install -y maven); it fetches the Kafka jars" >&2; exit 1; }

sandbox: install check-redis check-java
	$(KEYSHIFT) dev up $(SANDBOX_ARGS)

test: sandbox lint typecheck
	$(WITH_SANDBOX_ENV) $(PYTEST) $(PYTEST_ARGS)

test-unit: lint typecheck
	$(PYTEST) -m unit $(PYTEST_ARGS)

demo: sandbox
	$(WITH_SANDBOX_ENV) $(BIN)/python $(DEMO)

lint: install docs
	$(RUFF) check .
	$(RUFF) format --check .
	$(BIN)/lint-imports

.PHONY: docs
docs: install
	$(BIN)/mkdocs build --strict --site-dir build/site

typecheck: install
	$(MYPY)

down:
	@if [ -x $(KEYSHIFT) ]; then $(KEYSHIFT) dev down; else echo "no $(KEYSHIFT): nothing to stop"; fi

# Leaves .venv in place (other work may share it); `rm -rf .venv` by hand for a fresh one.
clean: down
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
