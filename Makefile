# Two entry points (see README): `make demo` runs the main job, `make test` runs every check.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= runs/compare

.PHONY: install demo test lint types unit clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

# Idle OpenMP threads sleep instead of spinning: on 2 cores shared with other work this made the training step
# ~3x faster (measured, see README); the numbers are unchanged.
demo: install
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/posenc compare --out $(OUT)

LINTED := $(wildcard src tests benchmarks)

lint:
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

types:
	$(BIN)/mypy

unit:
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

test: install lint types unit

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .hypothesis
