# One command each on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,spark,dedup,overlap,bench,train
BENCHES := download extract curate overlap build

export WANDB_MODE := disabled
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test lint format bench gpu-check clean $(addprefix bench-,$(BENCHES))

# Debian packages the tests read offline: WordNet 3.0 (query lists).
SYSTEM_PACKAGES := wordnet-base

# Re-installs when pyproject.toml changes (the stamp is older) or the venv is missing.
$(STAMP): pyproject.toml
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else echo "warning: please install Debian packages: $(SYSTEM_PACKAGES)"; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	SPARK_LOCAL_IP=127.0.0.1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/spark-submit --master "local[2]" jobs/build_wit.py --output data/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

# Benchmarks: each prints a table and writes bench/results/NAME.json (see docs/BENCHMARKS.md).
bench: $(addprefix bench-,$(BENCHES))

$(addprefix bench-,$(BENCHES)): bench-%: $(STAMP)
	$(PY) -m bench.$*

# On a machine with a GPU: ViT-B-32 for a few hundred steps from synthetic shards.
gpu-check: $(STAMP)
	$(PY) -m training.gpu_check --out data/gpu-check

clean:
	rm -rf $(VENV) data .pytest_cache
