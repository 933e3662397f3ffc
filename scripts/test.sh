#!/usr/bin/env bash
# Run the checks, on a fresh machine or an old one: set up what is missing (scripts/install.sh --test: the test tools
# and Chromium too), lint with ruff, type-check with mypy, then `python -m pytest -q` on 2 workers (pytest-xdist, one
# test file per worker at a time; SDXS_TEST_WORKERS=0 runs them in this process).  Arguments go to pytest:
# `bash scripts/test.sh tests/server -x`; `bash scripts/test.sh -m slow` runs the slow quality runs (the miniature).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check .
.venv/bin/mypy  # the server, its seam with the pipeline, the parameters ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest -q -n "${SDXS_TEST_WORKERS:-2}" --dist loadfile "$@"
