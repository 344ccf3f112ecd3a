# Two commands for a fresh machine with Python 3.11 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Playwright drives Debian's /usr/bin/chromium; it must never download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: demo test lint typecheck services unit bench clean

# What the demo and `keyless serve` need: keyless and its sandbox (the dashboard's htmx too), no dev toolchain.
$(VENV)/.installed: pyproject.toml tools/fetch_htmx.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[sandbox]'
	$(BIN)/python tools/fetch_htmx.py
	@touch $@

# The tests and the linters on top.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/keyless demo
	@echo "keyless is in $(VENV)/bin: run \`source $(VENV)/bin/activate\` to use the commands the README shows next."

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks tools

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy src tools benchmarks

# PostgreSQL and Chromium for the control-plane tests: installed (as root) and started.
services: $(VENV)/.installed-dev
	KEYLESS_PYTHON=$(BIN)/python scripts/test-services.sh

# Where the tests find those services; a test fails, not skips, when its variable is set but the service is unreachable.
unit: export KEYLESS_TEST_POSTGRES_URL := postgresql+psycopg://keyless:keyless@127.0.0.1:5432/keyless_test
unit: export KEYLESS_TEST_CHROMIUM := /usr/bin/chromium
unit: services $(VENV)/.installed-dev
	$(BIN)/pytest

test: lint typecheck unit

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
