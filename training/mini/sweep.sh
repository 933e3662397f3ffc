#!/usr/bin/env bash
# Run many ablations of a finished miniature run side by side, one process each (they share a GPU well: each is
# launch-bound).  Lines of CONFIGS: STAGE|NAME|JSON overrides, as training.mini.ablate takes them; each starts from the
# run's training seed --run-seed (default 0) and is scored on the validation split (never the test split, which only
# the run's claims table reads).  Results are appended to OUT/results.jsonl, logs go to OUT/NAME.log.
#   bash training/mini/sweep.sh training/mini/sweeps/stage4_stage5.txt [--work /tmp/sdxs-mini] [--out /tmp/sdxs-sweep]
#     [--run-seed 0] [--jobs N]   (N at once; default: all; on a CPU, one per core)
set -euo pipefail
configs=$1; shift
work=/tmp/sdxs-mini out=/tmp/sdxs-sweep run_seed=0 jobs=1000
while [ $# -gt 0 ]; do
  case $1 in
    --work) work=$2; shift 2;;
    --out) out=$2; shift 2;;
    --run-seed) run_seed=$2; shift 2;;
    --jobs) jobs=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
while IFS='|' read -r stage name json; do
  case $stage in ''|\#*) continue;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done  # a failed ablation: see its log
  python -m training.mini.ablate "$name" "$json" --stage "$stage" --threads 1 --work "$work" --out "$out" \
    --run-seed "$run_seed" --split validation > "$out/$name.log" 2>&1 &
done < <(cat "$configs")
wait
cat "$out/results.jsonl"
