# Everything a developer or CI runs. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
WORK ?= work

.DEFAULT_GOAL := help
.PHONY: help setup lock test lint demo bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) --require-hashes requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## Create .venv from requirements.lock

lock: ## Re-pin requirements.lock from requirements.in (needs the package index)
	$(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.lock

test: setup ## Run the test suite
	$(PY) -m pytest -q

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup ## Run every stage locally on a generated ADE20K-layout dataset
	$(PY) -m image_segmentation demo --work-dir $(WORK)/demo

bench: setup ## Benchmarks; results go to benchmarks/results/
	$(PY) -m benchmarks.run

clean: ## Remove generated work files (keeps .venv)
	rm -rf $(WORK) .pytest_cache .ruff_cache
