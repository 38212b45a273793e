#!/usr/bin/env bash
# One prepared run of the GPU checks on a lent accelerator (see WORKSPACE.md).
# Usage (repo root): bash benchmarks/device_check.sh OUT_DIR [STAGE ...]
# Stages, in order of priority, each under its own time limit (measured on
# an H200, WORKSPACE.md); the device tool's 10-minute call holds two or three:
# default 'throughput gemm', then a second call 'studies tuning'.
#   throughput  grid_throughput small and compute regimes, G = 1 ... 4096,
#               float32, profiled (issue 16)                     <= 240 s
#   gemm        XLA's GEMM back ends, Triton (its default) against cuBLAS
#               (--xla_gpu_enable_triton_gemm=false): compile and run of
#               the compute regime at G=4096 and of the default ablation
#               (issue 16: Triton compiled 3.3x longer)          <= 170 s
#   studies     the default ablation (relaxed, then in switched
#               groups) and the MNIST-1D CNN (its convolutions as a
#               matmul of patches, cnn.Conv; 1000 of the baseline's
#               6000 steps)                                      <= 120 s
#   tuning      chunk_tuning of the throughput workloads at G=4096,
#               widths 512 ... 4096 (issue 16; the ablation grid's
#               ~10-s compile per width on a GPU would use the stage up)
#                                                                <= 180 s
#   kernels     mlp128 at G=4096 profiled per kernel (CUDA graphs off, so
#               that XLA's command buffers do not hide them)     <= 60 s
#   deep_linear the deep linear launcher (default, float64)      <= 90 s
#   tf32        the compute regime at tensorfloat32 (stated)     <= 45 s
#   epilogues   the compute regime at G=4096, profiled, with the GEMM
#               back ends that can fuse an elementwise epilogue (the
#               ReLU backward's select, 12% of the H200's device time
#               in the twenty-eighth session) into the product: Triton
#               for every GEMM (--xla_gpu_triton_gemm_any), cuBLASLt
#               (--xla_gpu_enable_cublaslt, Triton off); CUDA graphs
#               off, as in 'kernels', whose run is the reference <= 100 s
#   falkon      FALKON at n = 1e7, M = 1e4 (issue 14)            <= 90 s
# A stage cut off by its limit prints "stage STAGE: timed out".
# Expects wheels of the packages the GPU image lacks in .device_wheels/ (git-
# ignored; carry it): benchmarks/device_wheels.py says how to fill it, and
# installs those whose module does not import.
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [STAGE ...]}
shift
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(throughput gemm)
mkdir -p "$out"
export PYTHONPATH=$PWD
if ls .device_wheels/*.whl >/dev/null 2>&1; then
  python3 -m benchmarks.device_wheels .device_wheels 2>&1 | tail -2
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
      limited 140 throughput python3 -m benchmarks.grid_throughput --regime=small --repeats=1 \
          --grid_sizes=1,64,1024,4096 --methods=a,b,c --loop_members_cap=4 \
          --profile --json_out="$out/bench_small.json"
      echo "== grid_throughput compute (float32) =="
      limited 100 throughput python3 -m benchmarks.grid_throughput --regime=compute --repeats=1 \
          --grid_sizes=1,128,1024,4096 --methods=a,b,c --loop_members_cap=4 \
          --profile --json_out="$out/bench_compute.json"
      ;;
    gemm)
      local name xf
      for name in triton cublas; do
        xf=
        [ "$name" = cublas ] && xf=--xla_gpu_enable_triton_gemm=false
        echo "== GEMM back end: $name (XLA_FLAGS='$xf') =="
        XLA_FLAGS=$xf limited 55 gemm python3 -m benchmarks.grid_throughput --repeats=1 \
            --regime=compute --grid_sizes=4096 --methods=a \
            --json_out="$out/gemm_$name.json"
        XLA_FLAGS=$xf limited 30 gemm /usr/bin/time -f 'wall %es' python3 -m \
            experiments.ablate --out="$out/ablate_$name"
      done ;;
    tf32)
      echo "== grid_throughput compute (tensorfloat32, stated) =="
      limited 45 tf32 python3 -m benchmarks.grid_throughput --regime=compute --repeats=1 \
          --grid_sizes=128,4096 --methods=a --matmul_precision=tensorfloat32 \
          --profile --json_out="$out/bench_compute_tf32.json" ;;
    epilogues)
      local name xf
      for name in triton_any cublaslt; do
        xf='--xla_gpu_enable_command_buffer= --xla_gpu_triton_gemm_any=true'
        [ "$name" = cublaslt ] && xf='--xla_gpu_enable_command_buffer= --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_cublaslt=true'
        echo "== compute regime G=4096, $name (XLA_FLAGS='$xf') =="
        XLA_FLAGS=$xf limited 50 epilogues python3 -m benchmarks.grid_throughput \
            --regime=compute --grid_sizes=4096 --repeats=1 --methods=a --profile \
            --json_out="$out/epilogues_$name.json"
      done ;;
    tuning)
      echo "== chunk tuning (issue 16) =="
      limited 180 tuning python3 -m benchmarks.chunk_tuning --repeats=2 \
          --workloads=mlp128,deep_linear,mlp32 --grid_size=4096 \
          --min_width=512 --max_width=4096 ;;
    studies)
      echo "== ablate (default grid) =="
      limited 45 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --out="$out/ablate"
      echo "== ablate, switched groups (--switch=optimizer,norm: 9 groups, one program; 'auto' is relaxed off the CPU) =="
      limited 45 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --switch=optimizer,norm --out="$out/ablate_switched"
      echo "== MNIST-1D CNN baseline, 1000 steps (patch convolutions) =="
      limited 30 studies /usr/bin/time -f 'wall %es' python3 -m experiments.ablate \
          --dataset=mnist1d --model=cnn --hidden=25,25,25 --optimizers=adam \
          --norms=none --inits=lecun_normal --activations=relu \
          --learning_rate=0.01 --seeds=5 --steps=1000 --batch_size=100 \
          --log_every=500 --out="$out/cnn" ;;
    kernels)
      echo "== mlp128 G=4096 per kernel (XLA_FLAGS=--xla_gpu_enable_command_buffer=) =="
      XLA_FLAGS=--xla_gpu_enable_command_buffer= limited 60 kernels python3 -m \
          benchmarks.grid_throughput --regime=compute --grid_sizes=4096 --repeats=1 \
          --methods=a --profile --json_out="$out/kernels.json" ;;
    deep_linear)
      echo "== deep_linear (default, float64) =="
      limited 90 deep_linear /usr/bin/time -f 'wall %es' python3 -m \
          experiments.deep_linear --out="$out/deep_linear" ;;
    falkon)
      echo "== FALKON at n=1e7, M=1e4 (issue 14) =="
      limited 90 falkon /usr/bin/time -f 'wall %es maxrss %MkB' python3 -m \
          benchmarks.kernel_solvers --parts=scale --scale_n=10000000 ;;
    *) echo "unknown stage $1; accepted: throughput gemm studies tuning kernels deep_linear tf32 epilogues falkon"
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
