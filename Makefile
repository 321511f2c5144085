# `make run` serves on http://127.0.0.1:8080 (runtime dependencies only, from requirements.lock);
# `make demo` (second terminal) shows a card; `make test` installs the dev extra and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
NODE_DIR := tests/fhir_server
SERVICE ?= http://127.0.0.1:8080
LOCK_VENV := $(VENV)/lock-tools

.PHONY: run demo test lint typecheck pytest install install-run node clean bench lock examples

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime dependencies only, pinned by requirements.lock; the package itself without deps.
$(RUN_STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The dev extra (tests, linters, browser, PostgreSQL driver), pinned by requirements-dev.lock.
$(STAMP): requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(RUN_STAMP) $@

install-run: $(RUN_STAMP)

install: $(STAMP)

# Regenerate both lock files from pyproject.toml (pip-tools in its own venv).
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet pip-tools; }
	$(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements.lock pyproject.toml
	$(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --extra dev --extra postgres -o requirements-dev.lock pyproject.toml

node: $(NODE_DIR)/node_modules/.package-lock.json

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

run: $(RUN_STAMP)
	CDS_ALLOW_UNSIGNED=$${CDS_ALLOW_UNSIGNED:-1} $(BIN)/mkopper-cds serve

# One card from the service `make run` serves: a synthetic suspected-mpox patient, all data
# inline as prefetch (docs/examples/patient-view.request.json), no FHIR server needed.
demo: $(RUN_STAMP)
	$(BIN)/mkopper-cds demo --service $(SERVICE)

# Regenerate docs/examples/ from the golden cases (tests/test_examples.py checks them).
examples: $(STAMP)
	$(BIN)/python tools/make_examples.py

lint: $(STAMP)
	$(BIN)/ruff check plugin cds_hooks tests bench
	$(BIN)/ruff format --check plugin cds_hooks tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) node
	$(BIN)/python -m pytest --cov --cov-report=term

test: lint typecheck pytest

# The benchmark (docs/operations.md); CI runs `make bench BENCH_ARGS=--short`.
bench: $(STAMP) node
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(NODE_DIR)/node_modules var .pytest_cache .mypy_cache .ruff_cache
