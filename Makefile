# The project's front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLFLOW_RUN := $(BIN)/mlflow run . --env-manager local
UI_PORT ?= 5000
DOCS_PORT ?= 8001
# Runs of `make demo` (and of `mlflow run` from this shell) land in this experiment.
export MLFLOW_EXPERIMENT_NAME ?= marketplace-search
# `mlflow run --env-manager local` runs `python -m steps...` with the first python on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
PYTEST_ARGS ?=

# The demo: the whole pipeline on a 2,000-product synthetic export in about 5 minutes on a
# 2-core CPU. Offline there are no ImageNet weights, so the image model learns from scratch:
# the seed's simple CNN, which does that better and 5x faster than a random ResNet
# (docs/training.md: The demo's image model).
DEMO_PARAMS ?= -P products=2000 -P arch=simplecnn -P image_size=48 -P epochs=20 \
	-P batch_size=64 -P lr=0.004

.DEFAULT_GOAL := help
.PHONY: help install demo serve test test-fast lint format ui docs docs-build stack stack-down stack-status results bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

demo: $(STAMP) ## run the whole pipeline on the demo export, then ask the service about one photo
	$(MLFLOW_RUN) -e main $(DEMO_PARAMS)
	$(BIN)/python -m steps.models_report
	$(BIN)/python -m serve.try_it
	@# the time by step, from the pipeline run's MLflow runs (steps/step_times.py)
	$(BIN)/python -m steps.step_times

serve: $(STAMP) ## serve the production model on http://127.0.0.1:8000 (SERVE_* settings: docs/serving.md)
	$(BIN)/python -m serve

test: $(STAMP) ## run every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check, format check and the import-linter layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP) ## ruff fix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: $(STAMP) ## open the MLflow UI on the local store (http://127.0.0.1:$(UI_PORT))
	@echo "The runs, in the UI's model-training view (docs/getting-started.md: Browse the runs)."
	@# stack/ui.py: mlflow ui, warmed up against MLflow 3.17's first-request race (its docstring)
	$(BIN)/python -m stack.ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT)

docs: $(STAMP) ## serve the documentation site on http://127.0.0.1:8001 (DOCS_PORT), rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

docs-build: $(STAMP) ## build the documentation site into site/ (strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

stack: $(STAMP) ## start mlflow server on 127.0.0.1:5000 (artifacts to .stack/artifacts or $$ARTIFACTS_DESTINATION)
	$(BIN)/python -m stack start

stack-down: ## stop the server that `make stack` started
	$(BIN)/python -m stack stop

stack-status: ## say whether the server runs, where, and where its artifacts go
	$(BIN)/python -m stack status

results: $(STAMP) ## print the baselines, the learning path (baselines, simple CNN, ResNet), the classifiers' and the ranker's test figures (markdown)
	$(BIN)/python -m steps.baselines_report
	@echo
	$(BIN)/python -m steps.learning_path
	@echo
	$(BIN)/python -m steps.models_report

bench: $(STAMP) ## run the benchmarks in bench/ (figures to bench/results/)
	$(BIN)/python bench/clean_images.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/install_size.py

clean: ## remove the demo data, the local store, the built docs and the venv
	rm -rf data mlruns mlartifacts mlflow.db .stack site $(VENV)
