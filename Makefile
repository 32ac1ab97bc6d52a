# Developer entry points. `make demo` and `make test` are the README's quick start: each creates
# .venv on first use (Python 3.11+ is the only prerequisite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint check bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/casino-gateway demo --machines 8

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers tests bench

bench: $(STAMP)
	$(BIN)/python bench/outbox.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache test-output
