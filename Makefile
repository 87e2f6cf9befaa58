# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test bench ablate lint install clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
		| { grep -v '^WARNING: Location' || true; }
	$(PYTHON) -c "import voxelflow, tensorflow, prefect, dvc, pytest"
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the embedded default dataset: a Prefect flow over the DVC stages.
demo: $(STAMP)
	$(VENV)/bin/voxelflow run
	$(PYTHON) benchmarks/global_stats_baseline.py data/preprocessed

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=10

# Every CPU benchmark of benchmarks/, figures written into benchmarks/RESULTS.md (run it on
# an otherwise idle machine; TorchIO/MONAI are timed too when the `bench` extras are there).
bench: $(STAMP)
	$(PYTHON) benchmarks/run_all.py

# The ablation of benchmarks/ablation.yaml as DVC experiments -> benchmarks/ablation.md (hours).
ablate: $(STAMP)
	$(VENV)/bin/voxelflow ablate

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf data models metrics plots reports
