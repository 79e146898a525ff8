# imagegen: one entry point for newcomers, CI and operators. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
UV_VERSION := 0.9.30
# promtool (alert rule tests) unpacked by deploy/test-tools.sh when the system has none
PYTEST := PATH="$$PATH:$(CURDIR)/deploy/.cache/prometheus/usr/bin" $(PY) -m pytest

.PHONY: help venv setup up down logs status schemas test test-unit test-integration test-e2e \
        test-slow test-all demo train-demo-model eval-demo-model models lint typecheck imports \
        check chaos bench clean asyncapi test-tools

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: .venv/.synced ## Python 3.11 workspace (uv, locked versions)
.venv/.synced: pyproject.toml uv.lock schemas/pyproject.toml libs/runtime/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install -q "uv==$(UV_VERSION)"
	uv sync --all-packages --frozen
	@touch $@

setup: venv ## everything the stack needs: Kafka jars, PostgreSQL, data folders
	$(PY) deploy/stack.py setup

up: venv models ## start Kafka, PostgreSQL and the six services (the test models built first); waits until each is ready
	$(PY) deploy/stack.py up

down: ## stop everything started by `make up`; leaves no process behind
	@if [ -x $(PY) ]; then $(PY) deploy/stack.py down; fi

logs: ## tail every log of the local stack
	$(PY) deploy/stack.py logs

status: ## what runs
	$(PY) deploy/stack.py status

schemas: venv ## regenerate the committed JSON Schemas from the event models
	$(PY) -m imagegen_schemas.export

asyncapi: venv ## regenerate docs/asyncapi.json (AsyncAPI 3, from the FastStream app and the topic catalog)
	$(PY) -m imagegen_runtime.asyncapi docs/asyncapi.json

infra-up: venv
	$(PY) deploy/stack.py infra-up

test-tools: ## what the tests need beyond Python: Chromium, Node.js + npm ci of examples/node-consumer, promtool
	deploy/test-tools.sh

test: venv infra-up test-tools ## the test suite (unit, contract, integration, e2e), not the slow marker
	$(PYTEST) -m "not slow" --durations=25

test-unit: venv ## pure tests only, no broker or database
	$(PYTEST) -m unit

test-integration: venv infra-up test-tools ## against the real local Kafka and PostgreSQL
	$(PYTEST) -m integration

test-e2e: venv test-tools ## the whole stack as processes
	$(PYTEST) -m e2e

test-slow: venv infra-up ## slow suites (long simulations, model quality)
	$(PYTEST) -m slow

test-all: venv infra-up test-tools ## everything
	$(PYTEST)

CHAOS_VAR ?= var/chaos
CHAOS_ARGS ?=
chaos: venv ## soak a separate stack (var/chaos, ports +100) under faults: 2,000 jobs, then check
	IMAGEGEN_CHAOS_VAR=$(CHAOS_VAR) $(PY) -m imagegen_chaos run $(CHAOS_ARGS)

demo: venv ## set up everything and run the main job: a prompt in, out/demo.png out
	$(PY) deploy/demo.py

train-demo-model: venv ## retrain models/shapes-demo from seed 0 (CPU; 26 min measured on 2 cores, resumable)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m imagegen_demo_model.train --out models/shapes-demo --seed 0

models: venv ## build the tiny random-weight test models of every family into models/ (seeded, reproducible)
	$(PY) -m imagegen_model_zoo --out models

eval-demo-model: venv ## score the demo model on 40 held-out captions (guidance 5 and 1)
	$(PY) -m imagegen_demo_model.evaluate --grid out/demo-model/grid.png

lint: venv ## ruff check and ruff format --check over the whole tree
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# mypy --strict ([tool.mypy] in pyproject.toml): the contracts, the shared runtime, and every
# service's pure core, and each service's composition root (bootstrap) and main. Adapters and
# HTTP entrypoints are checked through what these import.
TYPECHECKED := schemas/src libs/runtime/src tools/fleet-sim/src \
	services/api/src/imagegen_api/domain services/api/src/imagegen_api/service_layer \
	services/scheduler/src/imagegen_scheduler/domain \
	services/scheduler/src/imagegen_scheduler/service_layer \
	services/gpu-worker/src/imagegen_gpu_worker/domain \
	services/gpu-worker/src/imagegen_gpu_worker/service_layer \
	services/safety/src/imagegen_safety/domain services/safety/src/imagegen_safety/service_layer \
	services/delivery/src/imagegen_delivery/domain \
	services/delivery/src/imagegen_delivery/service_layer \
	services/pool-manager/src/imagegen_pool_manager/domain \
	services/pool-manager/src/imagegen_pool_manager/service_layer \
	$(wildcard services/*/src/*/bootstrap.py) $(wildcard services/*/src/*/entrypoints/main.py)

typecheck: venv ## mypy --strict on schemas, the runtime, every service's domain, service layer and bootstrap
	.venv/bin/mypy $(TYPECHECKED)

imports: venv ## import contracts (import-linter, [tool.importlinter] in pyproject.toml)
	.venv/bin/lint-imports

check: lint typecheck imports ## the three gates (`make -k check` runs all of them)

bench: venv infra-up ## benchmarks under bench/
	$(PY) -m bench

clean: down ## remove local state (data, logs); keeps caches
	rm -rf var out
