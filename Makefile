# gpubio: `make demo` runs the demo end to end; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
CORES ?= all
# the demo's settings and sheets, laid over config/config.yaml (the real-data defaults)
DEMO_CONFIG := config/demo/config.yaml

.PHONY: venv demo demo-data test lint format bench plan profiles clean

venv: $(VENV)/.installed

# torch first, from the local CPU wheel, so nothing later pulls the CUDA build
$(VENV)/.installed: requirements.txt requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo-data: resources/demo/.complete

# regenerated only when the generator changes, so a second `make demo` reruns nothing
resources/demo/.complete: $(VENV)/.installed $(wildcard workflow/gpubio/demo/*.py)
	rm -rf resources/demo
	$(BIN)/python -m gpubio demo-data --out resources/demo
	touch $@

demo: demo-data
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile $(DEMO_CONFIG)
	$(BIN)/snakemake --report results/report.html --configfile $(DEMO_CONFIG)
	@echo
	@echo "Results: $(CURDIR)/results/ (one folder per module and sample)"
	@echo "Report:  $(CURDIR)/results/report.html"

test: venv
	$(BIN)/python -m pytest

# snakefmt for the Snakefile and rules, ruff for Python (settings in pyproject.toml)
lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/snakefmt Snakefile workflow/rules
	$(BIN)/ruff format .

bench: venv
	$(BIN)/python bench/dag_overhead.py

# where every job goes: GPU model, partition, GPU-hours, cost (also results/gpu_plan.tsv)
plan: venv
	$(BIN)/python -m gpubio plan --out results/gpu_plan.tsv

# make `snakemake --profile slurm-gpu` (and `--profile local`) work as typed: Snakemake
# looks profile names up in the working directory and in the user's config directory
PROFILE_HOME ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
profiles:
	$(PYTHON) scripts/link-profiles --config-dir "$(PROFILE_HOME)"

clean:
	rm -rf results logs benchmarks .snakemake resources/demo
