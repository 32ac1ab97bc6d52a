# Developer entry points. `make demo` and `make test` are the README's quick start: each creates
# .venv on first use (Python 3.11+ is the only prerequisite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench crash certify clean

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
	$(BIN)/python bench/uplink.py
	$(BIN)/python bench/sas_poll.py
	$(BIN)/python bench/feed.py

crash: $(STAMP)
	$(BIN)/python bench/crash_loop.py --kills 200

# Certification run (docs/certification.md): every chaos/soak scenario with the real processes,
# 30+ minutes; report in bench/results/certify-<timestamp>/. The short version runs in make test.
certify: $(STAMP)
	$(BIN)/python bench/certify.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache test-output
