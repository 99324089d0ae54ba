#!/usr/bin/env bash
# Create/refresh the project's virtualenv(s). Usage: scripts/setup.sh [--insync]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
if [ "${1:-}" = "--insync" ]; then
  if [ ! -x .venv-insync/bin/python ]; then "$PY" -m venv .venv-insync; fi
  .venv-insync/bin/python -m pip install -q --disable-pip-version-check -r requirements-insync.txt
fi
