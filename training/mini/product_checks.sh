#!/usr/bin/env bash
# The product check on every training seed of a miniature run, not on a picked one: each seed's export is packaged
# and the browser test draws 10 digits on the page at its default pen (tests/browser/test_mini_page.py).  Writes
# OUT/seed-<k>.png (the montage: strokes as drawn, output as shown), OUT/seed-<k>.json and OUT/checks.json, which
# `python -m training.mini.package --checks OUT/checks.json` puts in the model card.
#
#   bash training/mini/product_checks.sh WORK RESULTS OUT [SEEDS...]     (default seeds: the run's)
set -euo pipefail
work=$1 results=$2 out=$3
shift 3
python=${PYTHON:-python}
seeds=("$@")
if [ ${#seeds[@]} -eq 0 ]; then
  mapfile -t seeds < <($python -c "import json,sys; print(*json.load(open(sys.argv[1]))['seeds'], sep='\n')" \
    "$results/results.json")
fi
mkdir -p "$out"
for seed in "${seeds[@]}"; do
  model=$(mktemp -d)/sdxs-mini-seed-$seed
  $python -m training.mini.package --work "$work" --results "$results" --seed "$seed" --out "$model" >/dev/null
  artifacts=$(mktemp -d)
  SDXS_MINI_MODEL=$model SDXS_ARTIFACTS=$artifacts $python -m pytest -q -p no:cacheprovider \
    tests/browser/test_mini_page.py -k sketched_digits || true  # a failing seed is recorded, not hidden
  cp "$artifacts/mini_sketch_montage.png" "$out/seed-$seed.png"
  cp "$artifacts/mini_sketch_montage.json" "$out/seed-$seed.json"
done
$python - "$out" "${seeds[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, seeds = Path(sys.argv[1]), sys.argv[2:]
checks = {"what": "10 digits drawn in Chromium with the page's default pen and sketch prompt, read back by the "
                  "shipped classifier (tests/browser/test_mini_page.py)",
          "needed": 9, "of": 10,
          "seeds": {s: {"right": json.loads((out / f"seed-{s}.json").read_text())["right"],
                        "seen": json.loads((out / f"seed-{s}.json").read_text())["seen"]} for s in seeds}}
(out / "checks.json").write_text(json.dumps(checks, indent=1))
print(json.dumps(checks["seeds"]))
EOF
