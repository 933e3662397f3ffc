#!/usr/bin/env bash
# Set up ./.venv for the app (--app) or for the app and its tests (--test, the default), on a fresh machine or an old
# one.  Idempotent: when pyproject.toml, requirements.txt and this script are unchanged since the last setup, nothing
# is installed again.  torch: the CUDA build from PyPI when an NVIDIA GPU is present; otherwise the CPU build from
# PyTorch's CPU index, or, when that index cannot be reached, whatever this machine's pip setup provides.
# Every download is listed with its size before it starts (scripts/download_plan.py).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:---test}
case "$target" in
  --app) extras="" ;;
  --test) extras="[test,train]" ;;
  *) echo "usage: bash scripts/install.sh [--app|--test]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python >= 3.11 is needed; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_CPU_VERSION=2.13.0
stamp=.venv/.sdxs-setup
fingerprint=$(cat pyproject.toml requirements.txt scripts/install.sh | sha256sum | cut -c1-16)

chromium_missing() { [ "$target" = --test ] && ! [ -x /usr/bin/chromium ]; }

install_chromium() {
  # the real-browser tests drive Debian's Chromium (Playwright cannot download browsers here)
  command -v apt-get >/dev/null 2>&1 || { echo "note: no apt-get: the browser tests will be skipped"; return 0; }
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing Chromium from Debian's packages (about 100 MB) for the browser tests"
  ($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: Chromium could not be installed; the browser tests will be skipped"
}

up_to_date() {
  [ -f "$stamp" ] && .venv/bin/python -c "import torch, sdxs" 2>/dev/null || return 1
  local have
  have=$(cat "$stamp")
  # a test setup contains the app's
  [ "$have" = "$fingerprint --test" ] || [ "$have" = "$fingerprint $target" ]
}

if up_to_date; then
  chromium_missing && install_chromium
  echo "setup: .venv is up to date"
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "torch: an NVIDIA GPU is present, so the CUDA build from PyPI (several GB with its NVIDIA libraries)"
    torch_args=("torch>=2.4")
  elif .venv/bin/python -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=10)" \
      2>/dev/null; then
    echo "torch: no NVIDIA GPU, so the CPU build $TORCH_CPU_VERSION from $TORCH_CPU_INDEX"
    torch_args=(--index-url "$TORCH_CPU_INDEX" "torch==$TORCH_CPU_VERSION")
  else
    echo "torch: no NVIDIA GPU and $TORCH_CPU_INDEX cannot be reached: torch==$TORCH_CPU_VERSION from this"
    echo "       machine's pip setup (on a plain PyPI setup that is a CUDA build of several GB)"
    torch_args=("torch==$TORCH_CPU_VERSION")
  fi
  .venv/bin/python scripts/download_plan.py "${torch_args[@]}"
  pip install --progress-bar on "${torch_args[@]}"
fi

.venv/bin/python scripts/download_plan.py -e ".$extras"
pip install -q -e ".$extras"
chromium_missing && install_chromium
echo "$fingerprint $target" > "$stamp"
echo "setup: done (.venv; activate with: . .venv/bin/activate)"
