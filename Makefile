# Two commands on a fresh machine: `make run` serves on http://127.0.0.1:8080, `make test` tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/fhir_server

.PHONY: run test lint typecheck pytest install node clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

node: $(NODE_DIR)/node_modules/.package-lock.json

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

run: $(STAMP)
	CDS_ALLOW_UNSIGNED=$${CDS_ALLOW_UNSIGNED:-1} $(BIN)/mkopper-cds serve

lint: $(STAMP)
	$(BIN)/ruff check plugin cds_hooks tests bench
	$(BIN)/ruff format --check plugin cds_hooks tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) node
	$(BIN)/python -m pytest

test: lint typecheck pytest

# The benchmark (docs/operations.md); CI runs `make bench BENCH_ARGS=--short`.
bench: $(STAMP) node
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules var .pytest_cache .mypy_cache .ruff_cache
