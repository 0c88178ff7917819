# Two commands for a newcomer: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
RAW    := data/raw
PRESET ?= demo

.PHONY: setup repro test test-all lint format data bench submission clean-checkpoints

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so nothing below pulls CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	# constraints.txt pins the versions the project is tested with; without it pip's resolver
	# backtracks through moto/pydantic for a long time and can end in a broken build.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

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

submission: $(STAMP)
	$(BIN)/cmi package --out submission

clean-checkpoints:
	rm -rf checkpoints
