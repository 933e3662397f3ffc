#!/usr/bin/env bash
# Run the app, on a fresh machine or an old one: set up what is missing (scripts/install.sh --app), then `python
# app.py` on http://localhost:7860.  Arguments go to app.py: `bash scripts/run.sh --model mini --port 8000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --app
exec .venv/bin/python app.py "$@"
