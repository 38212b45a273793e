#!/usr/bin/env bash
# One prepared run of the GPU checks on a lent accelerator (see WORKSPACE.md).
# Usage (repo root): bash benchmarks/device_check.sh OUT_DIR
# Expects wheels of missing packages (e.g. matfree) in .device_wheels/.
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD
if ls .device_wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index .device_wheels/*.whl 2>&1 | tail -1
fi
{
  nvidia-smi -L
  python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
  echo "== ablate (default grid) =="
  /usr/bin/time -f 'wall %es' python3 -m experiments.ablate --out="$out/ablate" 2>&1 | grep -v '^I1'
  echo "== deep_linear (default, float64) =="
  /usr/bin/time -f 'wall %es' python3 -m experiments.deep_linear --out="$out/deep_linear" 2>&1 | grep -v '^I1'
  echo "== grid_throughput small =="
  python3 -m benchmarks.grid_throughput --regime=small --grid_sizes=1,64,1024,4096 \
      --methods=a,b,c --loop_members_cap=4 --json_out="$out/bench_small.json" 2>&1 | grep -v '^I1'
  echo "== grid_throughput compute =="
  python3 -m benchmarks.grid_throughput --regime=compute --grid_sizes=1,128,1024,4096 \
      --methods=a,b,c --loop_members_cap=4 --profile --json_out="$out/bench_compute.json" 2>&1 | grep -v '^I1'
  echo "== chunk tuning (issue 16) =="
  python3 -m benchmarks.chunk_tuning --repeats=2 --max_width=4096 2>&1 | grep -v '^I1'
  echo "== FALKON at n=1e7, M=1e4 (issue 14) =="
  /usr/bin/time -f 'wall %es maxrss %MkB' python3 -m benchmarks.kernel_solvers \
      --parts=scale --scale_n=10000000 2>&1 | grep -v '^I1'
} 2>&1 | tee "$out/device_check.log"
