# Quick start: `make run` serves calltags, `make test` runs the tests. Both create
# .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/calltags run

test: $(STAMP)
	$(BIN)/pytest tests

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

.PHONY: bench bench-locust
bench: $(STAMP)  # side-by-side peak measurement with wrk; see bench/README.md
	$(BIN)/python -m bench.run

bench-locust: $(BENCH_STAMP)  # realistic mixed load for a fixed time, reports in bench/results/
	$(BIN)/python -m bench.locust_run
