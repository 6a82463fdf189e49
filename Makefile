# One command each on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,spark,dedup,overlap,bench,train,airflow
BENCHES := download extract curate overlap build train

export WANDB_MODE := disabled
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test lint format bench gpu-check gpu-test clean $(addprefix bench-,$(BENCHES))

# Debian packages the tests read offline: WordNet 3.0 (query lists).
SYSTEM_PACKAGES := wordnet-base
# ...and those bench-overlap reads: real images for the detector's quality.
BENCH_SYSTEM_PACKAGES := dataset-fashion-mnist openclipart-svg

# apt-get install what is missing (as root), else say what to install.
define apt_install
@dpkg -s $(1) >/dev/null 2>&1 || { \
  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(1); \
  else echo "warning: please install Debian packages: $(1)"; fi; }
endef

# Re-installs when pyproject.toml or this file (EXTRAS) changes, or the venv is missing.
$(STAMP): pyproject.toml Makefile
	$(call apt_install,$(SYSTEM_PACKAGES))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	SPARK_LOCAL_IP=127.0.0.1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/spark-submit --master "local[2]" \
		--conf spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=file:$(CURDIR)/pipeline/spark/log4j2.properties \
		jobs/build_wit.py --output data/demo

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

# bench-train's anchor, open_clip's own trainer, breaks on webdataset >= 0.2.90: 0.2.86
# alone (its other needs are in the venv) goes into a side folder that bench.train puts
# first on PYTHONPATH for open_clip's process only.
OPENCLIP_DEPS := bench/.openclip-deps
$(OPENCLIP_DEPS)/.installed: $(STAMP)
	$(PY) -m pip install --quiet --upgrade --no-deps --target $(OPENCLIP_DEPS) 'webdataset==0.2.86'
	touch $@

bench-train: $(OPENCLIP_DEPS)/.installed

.PHONY: bench-system-packages
bench-system-packages:
	$(call apt_install,$(BENCH_SYSTEM_PACKAGES))

bench-overlap: bench-system-packages

# On a machine with a GPU: ViT-B-32 for a few hundred steps from synthetic shards.
gpu-check: $(STAMP)
	$(PY) -m training.gpu_check --out data/gpu-check

# Every check that needs CUDA: the CUDA-only tests, gpu-check, a resume, --accum-freq.
gpu-test: $(STAMP)
	PYTHON=$(PY) .ci/gpu data/gpu-ci

clean:
	rm -rf $(VENV) data runs .pytest_cache $(OPENCLIP_DEPS)
