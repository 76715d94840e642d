# Quick start: `make run` serves calltags, `make test` runs the tests. Both create
# .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-faults lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/calltags run

# The tests that exercise Redis, run a second time on a local 3-master Redis Cluster
# that the fixtures start and stop (tests/cluster.py).
CLUSTER_TESTS := $(addprefix tests/test_,postbacks.py calls.py concurrency.py \
	key_security.py admin.py log.py log_listings.py worker.py scaleout_store.py scaleout.py \
	front.py store.py procfile.py log_attribution.py write_ack.py tag_schemas.py \
	callers.py webhooks.py idempotency.py bulk.py)

test: $(STAMP)  # on a single Redis node, then on Redis Cluster
	$(BIN)/pytest tests
	CALLTAGS_TEST_REDIS=cluster $(BIN)/pytest $(CLUSTER_TESTS)

test-faults: $(STAMP)  # the real processes under load through faults; see tests/faults/
	$(BIN)/pytest tests/faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

.PHONY: bench bench-locust bench-flush bench-flood bench-ack bench-schema bench-webhooks \
	bench-bulk
bench: $(STAMP)  # side-by-side peak measurement with wrk; see bench/README.md
	$(BIN)/python -m bench.run

bench-flush: $(STAMP)  # one worker's flush throughput (rows/s) and lag; see bench/README.md
	$(BIN)/python -m bench.flush_bench

bench-flood: $(STAMP)  # routing's connects while postbacks flood the web process; see bench/README.md
	$(BIN)/python -m bench.flood

bench-ack: $(STAMP)  # postbacks and connects with CALLTAGS_WRITE_ACK=replica beside primary; see bench/README.md
	$(BIN)/python -m bench.ack

bench-bulk: $(STAMP)  # postbacks/s one a request beside bulk posts' items/s; see bench/README.md
	$(BIN)/python -m bench.bulk

bench-schema: $(STAMP)  # the postback's tag schema step, µs a call; see bench/README.md
	$(BIN)/python -m bench.schema_step

bench-webhooks: $(STAMP)  # one worker's webhook deliveries/s and latency at 500 events/s; see bench/README.md
	$(BIN)/python -m bench.webhook_bench

bench-locust: $(BENCH_STAMP)  # realistic mixed load for a fixed time, reports in bench/results/
	$(BIN)/python -m bench.locust_run
