#!/usr/bin/env bash
# Fresh machine -> the whole test suite: installs mosquitto (Debian) and both virtualenvs, runs
# every test under ib_async, then the paper TWS client-level suite and the IB adapter's
# integration tests and the operator tools (dump, smoke) again under ib_insync 0.9.86, then the
# official IB client (10.x and 9.81, each in its own virtualenv) against the paper TWS.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
# the dashboard test drives Debian's chromium headless; here a missing one fails it, never skips
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
export BRACKETGATE_REQUIRE_CHROMIUM=1
scripts/setup.sh --insync --ibapi
echo "== tests under ib_async"
.venv/bin/python -m pytest -q "$@"
echo "== paper TWS client-level suite, the IB adapter (pacing, placement truth, quotes by contract, combos, market-data lines, bracket modify/trail, retention of finished trades, bounds of the id-keyed books, the orderRef index, what-if, placement truth when IB does not answer, pacing violations, compact completed orders) and the IB tools under ib_insync 0.9.86 (drop-in)"
.venv-insync/bin/python -m pytest -q tests/sim tests/integration/test_runtime_ib.py tests/integration/test_ib_tools.py tests/integration/test_pacing_and_placement.py tests/integration/test_quotes_by_contract.py tests/integration/test_combos_ib.py tests/integration/test_md_lines_ib.py tests/integration/test_ib_lifecycle.py tests/integration/test_ib_retention.py tests/integration/test_ib_bounds.py tests/unit/test_ib_prune.py tests/unit/test_ib_refs.py tests/integration/test_ib_refs_ib.py tests/integration/test_ib_startup.py tests/integration/test_ib_execs.py tests/integration/test_ib_whatif.py tests/integration/test_whatif_saturation.py tests/integration/test_placement_unknown.py tests/integration/test_pacing_violation.py tests/unit/test_ib_truth_units.py tests/unit/test_ib_completed.py tests/unit/test_ib_repr.py tests/e2e/test_commands_e2e.py -p no:cacheprovider
echo "== the official IB client (ibapi 10.x, then 9.81) against the paper TWS"
for venv in .venv-ibapi .venv-ibapi981; do
  BRACKETGATE_SIM_PYTHON="$PWD/.venv/bin/python" "$venv/bin/python" -m pytest -q tests/official \
    --confcutdir=tests/official -p no:cacheprovider -W ignore::pytest.PytestConfigWarning
done
