# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create .venv, install, run the main job on the embedded default (offline)
#   make test   - create .venv, install, run lint and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test lint bench

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0   # the CPU build first: an unpinned torch pulls CUDA packages
	$(PIP) -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sae-circuits demo

lint: setup
	$(VENV)/bin/ruff format --check sae_circuits tests benchmarks
	$(VENV)/bin/ruff check sae_circuits tests benchmarks

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_attribution.py
