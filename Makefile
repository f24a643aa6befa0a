# hotdeal: `make demo` runs the event on this machine, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help deps venv test lint up demo bench clean

help:
	@echo "make demo   replay the workshop's event locally (legacy vs slots vs redis) and compare"
	@echo "make test   set up everything missing, then run the test suite"
	@echo "make up     run the whole stack locally in the foreground (Ctrl-C stops it)"
	@echo "make bench  the demo with -n 30000 against 10000 stock"
	@echo "make lint   ruff"

deps:
	@scripts/ensure-system-deps.sh

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: deps venv
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

up: deps venv
	$(BIN)/hotdeal-local up

demo: deps venv
	$(BIN)/hotdeal-local demo $(DEMO_ARGS)

bench: deps venv
	$(BIN)/hotdeal-local demo --requests 30000 --stock 10000 --out results/bench.json $(DEMO_ARGS)

clean:
	rm -rf .local results
