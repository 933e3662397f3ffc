#!/usr/bin/env bash
# The miniature's claims over teachers and splits (issue 26) and the product check on every training seed of the
# shipped teacher (issue 25), in one command:
#
#   bash training/mini/grid.sh [--scale S] [--eval-per-class N] [--device cpu|cuda] [--work DIR] [--out DIR] [--checks]
#
# Runs `python -m training.mini.run` on the test split for 4 teachers (givens seeds 0 and 5 x split seeds 0 and 3)
# with training seeds 0 and 1 each (the shipped teacher, givens 0 / split 0, also seed 2), all side by side (on
# CUDA one process per teacher; on a CPU one per core at a time), then `python -m training.mini.grid` writes
# OUT/grid.json and OUT/grid.md with the per-teacher and pooled verdicts.  With --checks the shipped teacher's three
# seeds each go through the browser's sketch check (training/mini/product_checks.sh) into OUT/product_checks/.
# Settings are the recipe's (chosen on validation over givens 0 and 5); nothing here is tuned on the test split.
#
# Cost: about 45 CPU-minutes per training seed (one torch thread; three seeds took 66.6 min on 2 cores) and about 9
# minutes per teacher's givens, so the 9 seeds take about 4 hours on 2 cores; on one GPU the runs share it in minutes.  `--scale 0.01 --eval-per-class 2` is the dry run
# (minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python}
scale=1 per_class=100 device="" work=/tmp/sdxs-grid out=training/results/grid checks=0
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --eval-per-class) per_class=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --checks) checks=1; shift ;;
    *) echo "grid.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$device" ] || device=$($python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
cores=$(nproc)
teachers=("0 0 0,1,2" "0 3 0,1" "5 0 0,1" "5 3 0,1")  # givens seed, split seed, training seeds
mkdir -p "$work" "$out"

run_teacher() {  # givens split seeds
  local name=g$1s$2 jobs=1
  [ "$device" = cuda ] && jobs=$(( $(tr -cd , <<<"$3" | wc -c) + 1 ))
  $python -m training.mini.run --givens-seed "$1" --split-seed "$2" --seeds "$3" --scale "$scale" \
    --eval-per-class "$per_class" --device "$device" --jobs "$jobs" --work "$work/$name" \
    --out "$work/$name-results" >"$work/$name.log" 2>&1
}

started=$(date +%s)
pids=()
for teacher in "${teachers[@]}"; do
  # shellcheck disable=SC2086
  run_teacher $teacher &
  pids+=($!)
  if [ "$device" != cuda ] && [ ${#pids[@]} -ge "$cores" ]; then wait "${pids[0]}" || true; pids=("${pids[@]:1}"); fi
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for teacher in "${teachers[@]}"; do
  read -r g s _ <<<"$teacher"
  if [ ! -f "$work/g${g}s${s}-results/results.json" ]; then
    echo "grid.sh: teacher givens $g split $s wrote no results; its log: $work/g${g}s${s}.log" >&2
    tail -20 "$work/g${g}s${s}.log" >&2 || true
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
results=()
for teacher in "${teachers[@]}"; do read -r g s _ <<<"$teacher"; results+=("$work/g${g}s${s}-results"); done
$python -m training.mini.grid "${results[@]}" --out "$out"
echo "grid.sh: $(( ($(date +%s) - started) / 60 )) min on $device, scale $scale" | tee "$out/run.txt"
if [ "$checks" = 1 ]; then
  bash training/mini/product_checks.sh "$work/g0s0" "$work/g0s0-results" "$out/product_checks"
fi
