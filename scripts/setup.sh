#!/usr/bin/env bash
# Create/refresh the project's virtualenv(s). Usage: scripts/setup.sh [--insync] [--ibapi]
#   --insync  .venv-insync: ib_insync 0.9.86 (the paper TWS client-level suite again)
#   --ibapi   .venv-ibapi (official IB client 10.x) and .venv-ibapi981 (official client 9.81)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
venv() {  # venv DIR REQUIREMENTS
  if [ ! -x "$1/bin/python" ]; then "$PY" -m venv "$1"; fi
  "$1/bin/python" -m pip install -q --disable-pip-version-check -r "$2"
}
for arg in "$@"; do
  case "$arg" in
    --insync) venv .venv-insync requirements-insync.txt ;;
    --ibapi) venv .venv-ibapi requirements-ibapi.txt; venv .venv-ibapi981 requirements-ibapi981.txt ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
