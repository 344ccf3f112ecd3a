# Two commands for a fresh machine with Python 3.11 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/keyless: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/keyless
	$(BIN)/keyless demo

lint: $(BIN)/keyless
	$(BIN)/ruff check src tests benchmarks

typecheck: $(BIN)/keyless
	$(BIN)/mypy src

unit: $(BIN)/keyless
	$(BIN)/pytest

test: lint typecheck unit

bench: $(BIN)/keyless
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
