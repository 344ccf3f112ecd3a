# Two commands for a fresh machine with Python 3.11 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Playwright drives Debian's /usr/bin/chromium; it must never download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: demo test lint typecheck services unit bench clean

$(BIN)/keyless: pyproject.toml tools/fetch_htmx.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python tools/fetch_htmx.py
	@touch $@

demo: $(BIN)/keyless
	$(BIN)/keyless demo

lint: $(BIN)/keyless
	$(BIN)/ruff check src tests benchmarks tools

typecheck: $(BIN)/keyless
	$(BIN)/mypy src tools benchmarks

# PostgreSQL and Chromium for the control-plane tests: installed (as root) and started.
services: $(BIN)/keyless
	KEYLESS_PYTHON=$(BIN)/python scripts/test-services.sh

# Where the tests find those services; a test fails, not skips, when its variable is set but the service is unreachable.
unit: export KEYLESS_TEST_POSTGRES_URL := postgresql+psycopg://keyless:keyless@127.0.0.1:5432/keyless_test
unit: export KEYLESS_TEST_CHROMIUM := /usr/bin/chromium
unit: services $(BIN)/keyless
	$(BIN)/pytest

test: lint typecheck unit

bench: $(BIN)/keyless
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
