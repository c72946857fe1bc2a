#!/usr/bin/env bash
# The GPU tier and the GPU benchmark, on a machine with CUDA, with that machine's own torch (no venv, no package
# registry; see ../shared/gpu/README.md). `make gpu-check` runs this; so can `bash benchmarks/gpu-check.sh DIR`
# where there is no make. Results go to DIR, else to $OUT when the environment sets it (a device call brings back
# only what is under $OUT, at most 8 files), else to runs/gpu:
#   gpu-check.log                        every step's output, one after another, each with its exit status;
#   bench-<suite>/bench.{json,md}        the attention, rope and decode suites (6 files; 7 in all).
# Sized for one device call (10 minutes at most): every step has its own timeout (545 s in all), the most wanted
# figures run first, and each bench writes its report as rows arrive, so a step cut short keeps what it finished.
# The tier names each test as it ends (-v) and prints each failure as it happens (its conftest.py), leaves
# `posenc bench --quick` to the bench steps (all four suites would take its whole 140 s), and caps inductor's
# compile workers at 2 per pytest worker (8 workers x 16 by default on 16 cores). Peer wheels brought in .whl/
# (`make gpu-wheels`, carried along) are pure Python, unpacked with the standard library's zipfile (no pip).
# Exit status: 0 when every step succeeded, else 1 (every step still runs).
set -u -o pipefail
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
log=$out/gpu-check.log
: >"$log"
site=$(mktemp -d)
for w in .whl/*.whl; do
  if [ -f "$w" ]; then python3 -m zipfile -e "$w" "$site"; fi
done
export PYTHONPATH=$PWD/src:$site PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: COMMAND under its own timeout, its output appended to the log
  local name=$1 seconds=$2
  shift 2
  echo "== $name (timeout ${seconds} s, $(date -u +%H:%M:%S) UTC)" | tee -a "$log"
  timeout "$seconds" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')" | tee -a "$log"
  if [ "$rc" != 0 ]; then failed+=("$name"); fi
}

step device 20 python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
step tests 140 env TORCHINDUCTOR_COMPILE_THREADS=2 python3 -m pytest -v -m gpu -n 8 -p no:cacheprovider \
  -k "not bench_quick" tests/gpu
step bench-attention 210 python3 -m posenc bench --device cuda --suite attention --out "$out/bench-attention"
step bench-rope 115 python3 -m posenc bench --device cuda --suite rope --out "$out/bench-rope"
step bench-decode 60 python3 -m posenc bench --device cuda --suite decode --quick --out "$out/bench-decode"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: failed or timed out: ${failed[*]}" | tee -a "$log"
  exit 1
fi
echo "gpu-check: every step succeeded" | tee -a "$log"
