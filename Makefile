# The two commands of README.md:
#   make run    create .venv if missing, install, migrate and start everything (scrm up)
#   make test   install test tools, then lint (ruff), types (mypy --strict) and tests (pytest)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint types pytest bench-bus bench-points bench-referrals clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "scrm needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e ".[test]"
	@touch $@

# `scrm up` migrates the schema first, then serves every service's API and runs
# their workers, the outbox relay and the scheduler; Ctrl-C stops it all.
run: $(VENV)/.installed
	exec $(BIN)/scrm up

test: $(VENV)/.installed-test lint types pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.installed-test
	$(BIN)/mypy

# In parallel, one process per core (addopts in pyproject.toml); `pytest -n 0` for one process.
pytest: $(VENV)/.installed-test
	$(BIN)/pytest

bench-bus: $(VENV)/.installed-test
	$(BIN)/python bench/bus.py

bench-points: $(VENV)/.installed-test
	$(BIN)/python bench/points.py

bench-referrals: $(VENV)/.installed-test
	$(BIN)/python bench/referrals.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
