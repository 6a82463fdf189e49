# One command each on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,spark,dedup,overlap

export WANDB_MODE := disabled
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test lint format bench clean

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

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) -m bench.download

clean:
	rm -rf $(VENV) data .pytest_cache
