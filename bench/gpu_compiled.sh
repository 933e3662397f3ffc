#!/usr/bin/env bash
# Our pipeline eager vs compiled with CUDA graphs (torch.compile mode reduce-overhead), SDXS-512 shapes, 512, fp16:
#   bash bench/gpu_compiled.sh [results-dir]
set -uo pipefail
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
timeout 120 $py bench/pipeline.py --sizes 512 --modes text image sketch --batches 1 4 --iters 20 --no-stock \
    --name eager 2>&1 | grep -v "^W1" | tee "$out/pipeline-eager.log"
timeout 300 $py bench/pipeline.py --sizes 512 --modes text image sketch --batches 1 4 --iters 20 --no-stock \
    --compile reduce-overhead --name compiled 2>&1 | grep -v "^W1" | tee "$out/pipeline-compiled.log"
cp bench/results/pipeline-eager-cuda-*.json bench/results/pipeline-compiled-cuda-*.json "$out/" 2>/dev/null
ls "$out"
