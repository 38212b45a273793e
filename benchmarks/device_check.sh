#!/usr/bin/env bash
# One prepared run of the GPU checks on a lent accelerator (see WORKSPACE.md).
# Usage (repo root): bash benchmarks/device_check.sh OUT_DIR [STAGE ...]
# Stages, in order of priority (default: all four, each under its own time
# limit so that one call fits the device tool's 10-minute limit):
#   throughput  grid_throughput small and compute regimes, G = 1 ... 4096,
#               float32, profiled; compute also at tensorfloat32
#               (issue 16)                                       <= 245 s
#   tuning      chunk_tuning of the throughput workloads at G=4096,
#               widths 512 ... 4096 (issue 16; the ablation grid's
#               ~10-s compile per width on a GPU would use the stage up)
#                                                                <= 120 s
#   studies     the default ablation (relaxed, then in switched
#               groups) and deep linear launchers, and the MNIST-1D
#               CNN (its convolutions as a matmul of patches,
#               cnn.Conv; 1000 of the baseline's 6000 steps)    <= 165 s
#   falkon      FALKON at n = 1e7, M = 1e4 (issue 14)            <= 90 s
# A stage cut off by its limit prints "stage STAGE: timed out".
# Expects wheels of the packages the GPU image lacks in .device_wheels/
# (matfree, ml_collections: pip download --no-deps --only-binary=:all:
# --python-version 3.12 -d .device_wheels NAME).
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [throughput|tuning|studies|falkon ...]}
shift
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(throughput tuning studies falkon)
mkdir -p "$out"
export PYTHONPATH=$PWD
if ls .device_wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index .device_wheels/*.whl 2>&1 | tail -1
fi

limited() {  # limited SECONDS STAGE COMMAND...
  local limit=$1 stage=$2
  shift 2
  timeout "$limit" "$@" 2>&1 | grep -v '^I1'
  [ "${PIPESTATUS[0]}" -eq 124 ] && echo "stage $stage: timed out after ${limit}s"
}

run_stage() {
  case $1 in
    throughput)
      echo "== grid_throughput small (float32) =="
      limited 100 throughput python3 -m benchmarks.grid_throughput --regime=small \
          --grid_sizes=1,64,1024,4096 --methods=a,b,c --loop_members_cap=4 \
          --profile --json_out="$out/bench_small.json"
      echo "== grid_throughput compute (float32) =="
      limited 100 throughput python3 -m benchmarks.grid_throughput --regime=compute \
          --grid_sizes=1,128,1024,4096 --methods=a,b,c --loop_members_cap=4 \
          --profile --json_out="$out/bench_compute.json"
      echo "== grid_throughput compute (tensorfloat32, stated) =="
      limited 45 throughput python3 -m benchmarks.grid_throughput --regime=compute \
          --grid_sizes=128,4096 --methods=a --matmul_precision=tensorfloat32 \
          --profile --json_out="$out/bench_compute_tf32.json" ;;
    tuning)
      echo "== chunk tuning (issue 16) =="
      limited 120 tuning python3 -m benchmarks.chunk_tuning --repeats=2 \
          --workloads=mlp128,deep_linear,mlp32 --grid_size=4096 \
          --min_width=512 --max_width=4096 ;;
    studies)
      echo "== ablate (default grid) =="
      limited 45 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --out="$out/ablate"
      echo "== ablate, switched groups (--switch=optimizer,norm: 9 groups, one program; 'auto' is relaxed off the CPU) =="
      limited 45 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --switch=optimizer,norm --out="$out/ablate_switched"
      echo "== deep_linear (default, float64) =="
      limited 45 studies /usr/bin/time -f 'wall %es' python3 -m experiments.deep_linear \
          --out="$out/deep_linear"
      echo "== MNIST-1D CNN baseline, 1000 steps (patch convolutions) =="
      limited 30 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --dataset=mnist1d --model=cnn --hidden=25,25,25 --optimizers=adam \
          --norms=none --inits=lecun_normal --activations=relu \
          --learning_rate=0.01 --seeds=5 --steps=1000 --batch_size=100 \
          --log_every=500 --out="$out/cnn" ;;
    falkon)
      echo "== FALKON at n=1e7, M=1e4 (issue 14) =="
      limited 90 falkon /usr/bin/time -f 'wall %es maxrss %MkB' python3 -m \
          benchmarks.kernel_solvers --parts=scale --scale_n=10000000 ;;
    *) echo "unknown stage $1; accepted: throughput tuning studies falkon"
       return 2 ;;
  esac
}

{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
  for stage in "${stages[@]}"; do
    run_stage "$stage"
  done
} 2>&1 | tee "$out/device_check.log"
