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

# The GPU tier and the GPU benchmark, on a machine with CUDA, using that machine's own torch (no venv, no
# registry): peer wheels brought in .whl/ (see ../shared/gpu/README.md; pure-Python wheels, unpacked with the
# standard library's zipfile, so no pip is needed there). Results under $(GPU_OUT).
# Sized for one device call (10 minutes at most): every step has its own timeout (525 s in all), the most
# wanted figures run first, and each bench writes its report as rows arrive, so a step cut short keeps what it
# finished. The tier names each test as it ends (-v) and prints each failure as it happens (its conftest.py),
# leaves `posenc bench --quick` to the bench steps after it (all four suites would take its whole 140 s), and
# caps inductor's compile workers at 2 per pytest worker (8 workers x 16 by default on 16 cores).
# On the device machine `run` brings back only what is written under $OUT: the results go there when OUT is
# given (environment or command line), else to runs/gpu.
GPU_OUT ?= $(if $(filter-out file default undefined,$(origin OUT)),$(OUT),runs/gpu)
gpu-check:
	mkdir -p $(GPU_OUT)
	site=$$(mktemp -d); \
	for w in .whl/*.whl; do if [ -f "$$w" ]; then python3 -m zipfile -e "$$w" "$$site"; fi; done; \
	export PYTHONPATH=$$PWD/src:$$site PYTHONUNBUFFERED=1; \
	python3 -c "import torch, sys; print(torch.__version__, torch.cuda.get_device_name(0))" | tee $(GPU_OUT)/device.txt; \
	TORCHINDUCTOR_COMPILE_THREADS=2 timeout 140 python3 -m pytest -v -m gpu -n 8 -p no:cacheprovider \
	  -k "not bench_quick" tests/gpu 2>&1 | tee $(GPU_OUT)/gpu-tests.txt; \
	for step in "attention 210" "rope 115" "decode 60 --quick"; do set -- $$step; \
	  timeout $$2 python3 -m posenc bench --device cuda --suite $$1 $$3 --out $(GPU_OUT)/bench-$$1 2>&1 \
	    | tee $(GPU_OUT)/bench-$$1.txt; \
	done

clean:
	rm -rf $(VENV) .venv-oldest runs .pytest_cache .mypy_cache .hypothesis
