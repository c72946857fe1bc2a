# Two entry points (see README): `make demo` runs the main job, `make test` runs every check.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= runs/compare

.PHONY: install demo test test-oldest lint types unit clean gpu-check gpu-wheels

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

# Idle OpenMP threads sleep instead of spinning: on 2 cores shared with other work this made the training step
# ~3x faster (measured, see README); the numbers are unchanged. Every registered encoding, and ALiBi with
# steeper slopes beside the paper's (the report says why: with 4 heads the paper's steepest slope is 1/4).
demo: install
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/posenc compare --encodings all,alibi:max_bias=4 --out $(OUT)

LINTED := $(wildcard src tests benchmarks)

lint:
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

types:
	$(BIN)/mypy

unit:
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

test: install lint types unit

# The oldest torch posenc supports (pyproject's torch>=; the GPU machine's): the unit tests on it, in a venv
# of its own (its PyPI wheel brings CUDA libraries, ~4.6 GB; the tests run on the CPU). Run by CI after `test`.
OLDEST_TORCH ?= torch==2.11.0
test-oldest:
	$(MAKE) install unit VENV=.venv-oldest TORCH=$(OLDEST_TORCH)

# Here, before a device call: the peers' wheels for the GPU machine's Python 3.12 (carry: [".whl"]).
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 --platform any -d .whl liger-kernel rotary-embedding-torch

# The GPU tier and the GPU benchmark, on a machine with CUDA, with that machine's own torch: see
# benchmarks/gpu-check.sh (what it runs, its time budget, the files it writes). On the device machine `run` brings
# back only what is written under $OUT: the results go there when OUT is given (environment or command line), else
# to runs/gpu. Where the machine has no make: `bash benchmarks/gpu-check.sh "$OUT"`.
GPU_OUT ?= $(if $(filter-out file default undefined,$(origin OUT)),$(OUT),runs/gpu)
gpu-check:
	bash benchmarks/gpu-check.sh $(GPU_OUT)

clean:
	rm -rf $(VENV) .venv-oldest runs .pytest_cache .mypy_cache .hypothesis
