# hotdeal: `make demo` runs the event on this machine, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help deps deps-images venv test test-images images lint up demo bench clean

help:
	@echo "make demo         replay the workshop's event locally (legacy vs redis vs slots) and compare"
	@echo "make test         set up everything missing, then run the test suite"
	@echo "make test-images  build the images with podman (offline) and test them as containers"
	@echo "make up           run the whole stack locally in the foreground (Ctrl-C stops it)"
	@echo "make bench        the demo with -n 30000 against 10000 stock"
	@echo "make images       build both images (podman, local debootstrap base, wheelhouse)"
	@echo "make lint         ruff, hadolint, shellcheck, helm lint"

deps:
	@scripts/ensure-system-deps.sh

deps-images:
	@scripts/ensure-system-deps.sh --images

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/ensure_tools.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/python scripts/ensure_tools.py
	@touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint images/legacy/Dockerfile images/order-redis/Dockerfile
	$(BIN)/shellcheck scripts/*.sh .ci/run
	$(VENV)/tools/helm4 lint --strict charts/hotdeal

test: deps venv
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not images" $(PYTEST_ARGS)

images: deps-images venv
	scripts/build-images.sh

test-images: images
	$(BIN)/pytest -m images $(PYTEST_ARGS)

up: deps venv
	$(BIN)/hotdeal-local up

demo: deps venv
	$(BIN)/hotdeal-local demo $(DEMO_ARGS)

bench: deps venv
	$(BIN)/hotdeal-local demo --requests 30000 --stock 10000 --out results/bench.json $(DEMO_ARGS)

clean:
	rm -rf .local results wheelhouse/*.whl
