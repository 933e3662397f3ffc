#!/usr/bin/env bash
# The GPU benchmarks as one prepared run (about 8 minutes on an H100/H200), for a machine with PyTorch + CUDA:
#   bash bench/gpu.sh [results-dir]                 # every step
#   STEPS="server" bash bench/gpu.sh [results-dir]  # some steps: variants pipeline compiled server
# 1. bench/variants.py: student vs teacher UNet and tiny vs VAE decoder at 512 (SDXS-512) and 1024 (SDXS-1024),
#    eager fp16 channels-last, batch 1 and 8; 2. the same students compiled (CUDA graphs), batch 1;
# 3. bench/pipeline.py: our batched pipeline vs diffusers' stock pipelines at 512, fp16, batch 1/4/16;
# 4. bench/server.py: browser-to-browser through the real app, SDXS-512 shapes, fp16: the former frame path (eager)
#    and the batched one (CUDA graphs, captured during warm-up), 1 and 16 webcam streams, image and sketch mode.
# Each step has its own time limit, so one that fails or hangs leaves the others' results.
set -uo pipefail
out=${1:-bench/results}
steps=${STEPS:-variants pipeline compiled server}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
has() { [[ " $steps " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.txt"
$py -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
$py -c "import torchvision; print('torchvision', torchvision.__version__, '(nvJPEG decode)')" 2>&1 | tail -1
has variants && timeout 200 $py bench/variants.py --batches 1 8 --iters 20 2>&1 | tee "$out/variants.log"
has pipeline && timeout 150 $py bench/pipeline.py --sizes 512 --modes text image sketch --batches 1 4 16 --iters 10 \
    2>&1 | tee "$out/pipeline.log"
has compiled && timeout 200 $py bench/variants.py --no-teacher --compile --compile-mode reduce-overhead --iters 50 \
    --name compiled 2>&1 | tee "$out/variants-compiled.log"
# the batched server compiles the UNet, ControlNet and tiny VAE and captures 5 batch-size buckets before /readyz
has server && timeout 420 $py bench/server.py --model random --device cuda --dtype float16 --resolution 512 \
    --clients 1,16 --modes image,sketch --duration 6 --fps 120 --max-batch 16 --breakdown-iters 10 \
    --ready-timeout 300 --name sdxs512 2>&1 | grep -v "^W1" | tee "$out/server.log"
cp bench/results/*-cuda-*.json "$out/" 2>/dev/null
ls "$out"
