#!/usr/bin/env bash
# Install everything into ./.venv on a fresh machine: torch, the project with its test extras, and Chromium for the
# browser tests.  With a CUDA GPU, the CUDA build of torch comes from PyPI; without one, the CPU build 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q "torch>=2.4"
else
  python -m pip install -q torch==2.13.0   # the CPU build (a bare `torch` pulls a multi-GB CUDA build)
fi
python -m pip install -q -e ".[test,train]"

# Chromium for the real-browser tests: Debian's package (Playwright cannot download browsers here)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the browser tests will be skipped"
fi
echo "installed into .venv (activate with: . .venv/bin/activate)"
