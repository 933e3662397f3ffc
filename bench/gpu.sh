#!/usr/bin/env bash
# The GPU run in one script (about 8 minutes on an H100/H200): every figure the GPU targets need (bench/README.md).
#
#   bash bench/gpu.sh                         # on the GPU machine; results in bench/results/gpu-<time>/
#   bash bench/gpu.sh --device cpu --out DIR  # the dry run (tiny model, short cells), run by the test suite
#   STEPS="env server" bash bench/gpu.sh      # some steps: env nvjpeg tests pipeline server summary (options)
#
# Steps, in order, each with a time limit, its output in one unfiltered log (DIR/gpu.log) and its JSON in DIR:
#   0. wheels carried with the tree (.whl/, built on a CPU machine by `bash scripts/gpu_wheels.sh`) installed into
#      /tmp/sdxs-site, for a GPU machine that has torch + CUDA but not the app's other packages;
#   1. env: versions, then every import the run needs (bench/gpu_checks.py): a failure stops the run, exit 1;
#   2. nvjpeg: the nvJPEG self-test at batch 16 (0 corrupted, max difference vs libjpeg-turbo);
#   3. tests: the suite's CUDA tests (graph parity on the tiny model for text/image/sketch/edges at batch 1, 3, 16;
#      nvJPEG's stream protocol; the CUDA worker and pipeline); collected only in the dry run;
#   4. pipeline: bench/pipeline.py compiled with CUDA graphs, SDXS-512 shapes, fp16: per-mode ms at batch 1 and 16,
#      the share of time outside module forwards;
#   5. server: bench/server.py through the real app, SDXS-512 shapes, fp16, distinct frames: 1 image stream, 16
#      image and 16 sketch streams (generated frames/s, p50/p95, reused 0, mean batch, GPU busy share and memory,
#      CUDA-event ms per stage), with the device's warm-up passes and self-test from /readyz; stops at once when
#      /readyz says failed;
#   6. summary: the figures against the targets.
# The exit status is 1 when any step failed (the others still ran and kept their results), 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
out=""
steps=${STEPS:-env nvjpeg tests pipeline server summary}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: bash bench/gpu.sh [--device cuda|cpu] [--out DIR]" >&2; exit 2 ;;
  esac
done
out=${out:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
exec > >(tee -a "$out/gpu.log") 2>&1  # everything, unfiltered (torch's warnings such as "skipping cudagraphs" too)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
failed=()
has() { [[ " $steps " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: run it with a time limit; remember a failure and go on
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
  timeout "$limit" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "=== $name FAILED (exit $rc)"
    failed+=("$name")
  fi
  return "$rc"
}

if [ "$device" = cpu ]; then  # the dry run: the same steps on the tiny model, seconds each
  export OMP_NUM_THREADS=1  # a CPU shared with other work stalls threads that wait for each other at every op
  model=tiny; dtype=float32; size=64; clients=1; duration=1; fps=30; batches="1 2"; iters=1; max_batch=2
  pipeline_modes="image"; server_modes="image"  # one mode each: the steps' code paths, in seconds
  pipeline_args=(--model tiny --sizes 64 --dtypes float32)
else
  model=random; dtype=float16; size=512; clients=1,16; duration=8; fps=120; batches="1 16"; iters=10; max_batch=16
  pipeline_modes="text image sketch"; server_modes="image,sketch"
  pipeline_args=(--sizes 512 --dtypes float16 --compile reduce-overhead)
fi

# 0. wheels carried with the tree (for the GPU machine's Python; the dry run uses the environment it is given)
if [ "$device" != cpu ] && compgen -G ".whl/*.whl" >/dev/null; then
  echo "=== wheels: $(ls .whl | wc -l) from .whl/"
  if ! $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sdxs-site \
      .whl/*.whl; then
    echo "=== wheels FAILED"
    exit 1
  fi
  export PYTHONPATH=/tmp/sdxs-site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. versions and every import
if has env; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(no nvidia-smi)"
  step env 120 $py bench/gpu_checks.py env --out "$out" || { echo "=== stopping: imports failed"; exit 1; }
fi

# 2. the nvJPEG self-test
has nvjpeg && step nvjpeg 120 $py bench/gpu_checks.py nvjpeg --out "$out" --batch 16

# 3. the suite's CUDA tests
if has tests; then
  if [ "$device" = cpu ]; then  # no CUDA here: check that the invocation collects the CUDA tests of one file
    step tests 120 $py -m pytest -q -m cuda -p no:cacheprovider -o addopts="" --collect-only \
      tests/server/test_gpu_path.py
  else
    step tests 240 $py -m pytest -q -m cuda -p no:cacheprovider -o addopts="" tests/sdxs tests/server
  fi
fi

# 4. the pipeline, compiled
if has pipeline; then
  # shellcheck disable=SC2086
  step pipeline 240 $py bench/pipeline.py "${pipeline_args[@]}" --modes $pipeline_modes --batches $batches \
    --iters "$iters" --no-stock --out "$out"
fi

# 4b. opt-in (STEPS="... options"): the tiny autoencoder's convolutions channels-last with cuDNN's benchmark, rows to
#     set against step 4's
if has options; then
  # shellcheck disable=SC2086
  step options 240 $py bench/pipeline.py "${pipeline_args[@]}" --modes image --batches $batches --iters "$iters" \
    --no-stock --channels-last on --cudnn-benchmark --name options --out "$out"
fi

# 5. the server
if has server; then
  step server 420 $py bench/server.py --model "$model" --device "$device" --dtype "$dtype" --resolution "$size" \
    --clients "$clients" --modes "$server_modes" --duration "$duration" --fps "$fps" --max-batch "$max_batch" \
    --breakdown-iters "$iters" --ready-timeout 300 --out "$out" -- ${SERVER_ARGS:-}
fi

# 6. the figures against the targets
has summary && step summary 60 $py bench/gpu_checks.py summary --out "$out"

echo "=== results in $out: $(ls "$out" | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
  echo "=== FAILED steps: ${failed[*]}"
  exit 1
fi
echo "=== every step passed"
