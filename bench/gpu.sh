#!/usr/bin/env bash
# The GPU benchmarks as one prepared run (about 5 minutes on an H100/H200), for a machine with PyTorch + CUDA:
#   bash bench/gpu.sh [results-dir]
# 1. bench/variants.py: student vs teacher UNet and tiny vs VAE decoder at 512 (SDXS-512) and 1024 (SDXS-1024),
#    eager fp16 channels-last, batch 1 and 8; 2. the same students compiled (CUDA graphs), batch 1;
# 3. bench/pipeline.py: our batched pipeline vs diffusers' stock pipelines at 512, fp16, batch 1/4/16.
# Each step has its own time limit, so one that fails or hangs leaves the others' results.
set -uo pipefail
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.txt"
$py -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
timeout 200 $py bench/variants.py --batches 1 8 --iters 20 2>&1 | tee "$out/variants.log"
timeout 150 $py bench/pipeline.py --sizes 512 --modes text image sketch --batches 1 4 16 --iters 10 2>&1 \
    | tee "$out/pipeline.log"
timeout 200 $py bench/variants.py --no-teacher --compile --compile-mode reduce-overhead --iters 50 \
    --name compiled 2>&1 | tee "$out/variants-compiled.log"
cp bench/results/*-cuda-*.json "$out/" 2>/dev/null
ls "$out"
