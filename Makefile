# Developer entry points. `make demo` and `make test` are the README's quick start: each creates
# .venv on first use (Python 3.11+ is the only prerequisite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench crash hostile certify clean constraints deb

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev]'
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
	$(BIN)/pip install --quiet -c constraints.txt -e '.[platform]'  # nats-py, nats-server
	$(BIN)/python bench/jetstream.py

crash: $(STAMP)
	$(BIN)/python bench/crash_loop.py --kills 200

# The hostile neighbour, long (issue 15): every attack in rounds against one daemon while
# machines and a card reader play; tests/test_hostile_rounds.py runs one round.
hostile: $(STAMP)
	$(BIN)/python bench/hostile.py --minutes 10

# Certification run (docs/certification.md): every chaos/soak scenario with the real processes,
# 30+ minutes; report in bench/results/certify-<timestamp>/. The short version runs in make test.
certify: $(STAMP)
	$(BIN)/python bench/certify.py

# constraints.txt pins the dependency set the tests ran with; `make test` and `make deb` install
# exactly it. To move to newer dependencies: make constraints, then make test, then commit both.
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install --quiet '.[test,dev,platform]'
	{ echo '# The tested dependency set (make constraints; see the Makefile). Do not edit by hand.'; \
	  build/constraints-venv/bin/pip freeze --exclude casino-edge-gateway; } > constraints.txt
	rm -rf build/constraints-venv

# Debian package for venue installs (docs/operations.md section 1). Rebuilt only when a file
# that goes into it changed; the version is gateway/__init__.py's.
VERSION  := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' gateway/__init__.py)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB      := build/casino-gateway_$(VERSION)_$(DEB_ARCH).deb
DEB_SRC  := $(shell find gateway drivers docs config systemd packaging -type f \
                -not -path '*/__pycache__/*' 2>/dev/null)

deb: $(DEB)

$(DEB): setup.cfg pyproject.toml constraints.txt README.md $(DEB_SRC)
	packaging/build-deb build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache test-output
