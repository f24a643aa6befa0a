# hotdeal: `make demo` runs the event on this machine, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help deps deps-images venv test test-images images lint up demo bench bench-probes bench-redis bench-slow-clients bench-auth bench-sold-out bench-workers bench-holds bench-spike chaos test-shuffled test-explore clean

help:
	@echo "make demo         replay the workshop's event locally (legacy vs redis vs slots) and compare"
	@echo "make test         set up everything missing, then run the test suite"
	@echo "make test-images  build the images with podman (offline) and test them as containers"
	@echo "make test-shuffled  the suite in a shuffled order (SEED=12345)"
	@echo "make test-explore   the fuzzed contract tests searching widely (not derandomized)"
	@echo "make up           run the whole stack locally in the foreground (Ctrl-C stops it)"
	@echo "make bench        the demo with -n 30000 against 10000 stock, and the ceilings"
	@echo "make bench-probes probe/scrape latency under legacy's load, order port vs admin port"
	@echo "make bench-redis  the take script's capacity on one Redis core (for the scale plan)"
	@echo "make bench-slow-clients  a sale under 40 slow clients, with and without the front (nginx)"
	@echo "make bench-auth   order-redis with and without token checks (HS256, ES256, RS256)"
	@echo "make bench-sold-out  sold-out answers vs a bare Flask route; how long a returned unit waits"
	@echo "make bench-workers   order-redis with 2 or 4 sync workers per core (takes, sold out, slow clients)"
	@echo "make bench-spike     20,000 buyers over 10 s around the opening, waiting room on and off"
	@echo "make bench-holds     reservations: holds vs sales, confirms under a sale, an expiry storm"
	@echo "make chaos        fault-injection runs (several seeds) with a checker; results/chaos-*.json"
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

# Two workers, each test file on one of them (module fixtures stay whole); every test
# starts its own servers on free ports and writes only its own scratch files, and
# passes in any order (make test-shuffled).
test: deps venv
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not images" -n 2 --dist loadfile $(PYTEST_ARGS)

# The suite in a shuffled order (one fixed seed unless SEED is given): no test may pass
# only because of the tests before it.
SEED ?= 12345
test-shuffled: deps venv
	$(BIN)/pytest -m "not images" --random-order-bucket=global \
	  --random-order-seed=$(SEED) $(PYTEST_ARGS)

# Hypothesis without the gate's fixed examples, searching widely (pin each find as an
# @example in the test).
test-explore: deps venv
	HOTDEAL_HYPOTHESIS=explore $(BIN)/pytest tests/test_api_contract.py tests/test_contract_live.py $(PYTEST_ARGS)

images: deps-images venv
	scripts/build-images.sh

test-images: images
	$(BIN)/pytest -m images $(PYTEST_ARGS)

up: deps venv
	$(BIN)/hotdeal-local up

demo: deps venv
	$(BIN)/hotdeal-local demo $(DEMO_ARGS)

bench: deps venv
	$(BIN)/hotdeal-local demo --requests 30000 --stock 10000 --out results/bench.json \
	  --designs legacy,order-redis-inline,order-redis,order-redis-none,legacy-slots-8 \
	  --ceilings 5 $(DEMO_ARGS)

# /healthz, /readyz, /metrics latency on the order port and the admin port while legacy's
# hot row is under ab -c 150 (results/probes.json).
bench-probes: deps venv
	$(BIN)/hotdeal-local probes $(PROBE_ARGS)

# take_stock.lua through redis-benchmark: takes/s and Redis CPU per take (results/redis-capacity.json).
bench-redis: deps venv
	$(BIN)/hotdeal-local capacity $(CAPACITY_ARGS)

# order-redis straight and behind the front, each with and without 40 slow clients, in
# alternating rounds: the front's cost and what it saves (results/slow-clients.json).
bench-slow-clients: deps venv
	$(BIN)/hotdeal-local slow-clients $(SLOW_ARGS)

# order-redis with HOTDEAL_AUTH=off and with HS256, ES256 and RS256 tokens, in alternating
# rounds, and a token's first check in-process (results/auth.json).
bench-auth: deps venv
	$(BIN)/hotdeal-local bench-auth $(AUTH_ARGS)

# Sold-out answers against a bare Flask route, in alternating rounds, and how long a
# unit that comes back stays refused (results/sold-out.json).
bench-sold-out: deps venv
	$(BIN)/hotdeal-local bench-sold-out $(SOLD_OUT_ARGS)

# order-redis with 2 or 4 sync workers per core, in alternating rounds: durable takes,
# sold-out answers and a sale under slow clients (results/workers.json).
bench-workers: deps venv
	$(BIN)/hotdeal-local bench-workers $(WORKERS_ARGS)

# Reservations: holds vs sales, confirm latency under a sale, 10,000 holds expiring in
# the same second (results/holds.json).
bench-holds: deps venv
	$(BIN)/hotdeal-local bench-holds $(HOLDS_ARGS)

# The opening second: 20,000 buyers (a token each) over 10 s around the opening of 2,000
# units, with the waiting room on and off (results/spike.json).
bench-spike: deps venv
	$(BIN)/hotdeal-local bench-spike $(SPIKE_ARGS)

# Several seeds with the default durability (replica: the only mode that survives a
# failover), then `none` once, which must fail (the checker proves it can see a loss).
CHAOS_SEEDS ?= 1 2 3
CHAOS_ARGS ?= --rounds 32 --round-seconds 5
chaos: deps venv
	@set -e; for seed in $(CHAOS_SEEDS); do \
	  $(BIN)/hotdeal-local chaos --seed $$seed $(CHAOS_ARGS) --out results/chaos-$$seed.json; \
	done
	@if $(BIN)/hotdeal-local chaos --seed 1 --rounds 4 --round-seconds 5 --durability none \
	    --faults redis_failover,replica_lag \
	    --out results/chaos-none.json > results/chaos-none.log 2>&1; then \
	  echo "durability none passed the checker: it should have found lost orders" >&2; exit 1; \
	else \
	  tail -n 3 results/chaos-none.log; echo "durability none: the checker found the losses (expected)"; \
	fi

clean:
	rm -rf .local results wheelhouse/*.whl
