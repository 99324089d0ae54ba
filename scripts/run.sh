#!/usr/bin/env bash
# Fresh machine -> running daemon on the embedded default (paper TWS + embedded MQTT broker).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python run.py "$@"
