# Two commands for a newcomer: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
RAW    := data/raw
PRESET ?= demo
# Wheels of every dependency, kept across clones. pip's own HTTP cache (~/.cache/pip) stays
# empty behind this network's proxy (its responses carry no Cache-Control headers, so pip
# stores nothing), and a fresh clone downloaded ~110 wheels again; from here pip installs
# offline. Filled on the first setup, refilled whenever constraints.txt or the extras change.
WHEELHOUSE ?= $(HOME)/.cache/cmi-wheelhouse
# --no-compile: no .pyc for all of torch's and dvc's files at install; Python writes them
# for the modules actually imported, on first import.
INSTALL := $(PY) -m pip install --quiet --no-compile
# An offline try that fails quietly (a wheel missing: first setup, or new pins) falls back.
OFFLINE := --no-index --find-links $(WHEELHOUSE)
QUIET_MISS := 2>/dev/null

.PHONY: setup wheelhouse repro test test-all lint format data bench submission clean-checkpoints

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(INSTALL) $(OFFLINE) --upgrade pip $(QUIET_MISS) || $(INSTALL) --upgrade pip
	# The CPU build of torch first, so nothing below pulls CUDA packages.
	$(INSTALL) $(OFFLINE) torch==2.13.0 $(QUIET_MISS) || $(INSTALL) torch==2.13.0
	# constraints.txt pins the versions the project is tested with; without it pip's resolver
	# backtracks through moto/pydantic for a long time and can end in a broken build.
	# If the wheelhouse cannot be filled (a wheel that will not build, a full disk), install
	# straight from the registry as before: a cache must never make setup fail.
	$(INSTALL) $(OFFLINE) -c constraints.txt -e '.[dev]' $(QUIET_MISS) || { \
	  echo "filling the wheelhouse $(WHEELHOUSE) (once; later setups install offline)"; \
	  $(MAKE) --no-print-directory wheelhouse && \
	  $(INSTALL) $(OFFLINE) -c constraints.txt -e '.[dev]'; } || \
	  $(INSTALL) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Every wheel setup needs (built once from an sdist where PyPI has no wheel), the build
# backend for the editable install, pip and the CPU torch included; not the project itself.
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	$(PY) -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) -c constraints.txt \
	  torch==2.13.0 '.[dev]' pip 'setuptools>=68' wheel
	rm -f $(WHEELHOUSE)/cmi-*.whl

# Demo data only when data/raw has no real competition files.
data: $(STAMP)
	@if [ -f $(RAW)/train.csv ]; then \
	  echo "data/raw/train.csv present: using it (synthetic data is made only when it is missing)"; \
	else \
	  $(BIN)/cmi synth --preset $(PRESET) --out $(RAW); \
	fi

repro: data
	$(BIN)/cmi validate $(RAW)
	# Track the raw data with DVC so experiments in queue worktrees find it too.
	$(BIN)/dvc add --quiet $(RAW)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro
	@$(PY) -m cmi.summary

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The default test run: everything except tests marked slow (those run in .ci/run).
test: lint
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m "not slow" -q

test-all: lint
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -q

bench: $(STAMP)
	$(PY) bench/synth.py
	$(PY) bench/extract.py
	$(PY) bench/lgbm.py
	$(PY) bench/torch_train.py
	$(PY) bench/predict.py
	$(PY) bench/repro.py

submission: $(STAMP)
	$(BIN)/cmi package --out submission

clean-checkpoints:
	rm -rf checkpoints
