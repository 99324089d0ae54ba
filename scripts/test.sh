#!/usr/bin/env bash
# Fresh machine -> the whole test suite: installs mosquitto (Debian) and both virtualenvs, runs
# every test under ib_async, then the paper TWS client-level suite and the IB adapter's
# integration tests and the operator tools (dump, smoke) again under ib_insync 0.9.86.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
scripts/setup.sh --insync
echo "== tests under ib_async"
.venv/bin/python -m pytest -q "$@"
echo "== paper TWS client-level suite, the IB adapter (pacing, placement truth, quotes by contract, bracket modify/trail) and the IB tools under ib_insync 0.9.86 (drop-in)"
.venv-insync/bin/python -m pytest -q tests/sim tests/integration/test_runtime_ib.py tests/integration/test_ib_tools.py tests/integration/test_pacing_and_placement.py tests/integration/test_quotes_by_contract.py tests/integration/test_ib_lifecycle.py tests/e2e/test_commands_e2e.py -p no:cacheprovider
