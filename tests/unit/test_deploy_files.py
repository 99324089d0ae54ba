"""deploy/systemd/bracketgate.service agrees with the daemon it runs: systemd-analyze verify
(when the binary is there), the keys docs/DEPLOY.md promises, the exit codes core/app.py
really uses, and a stop timeout longer than the graceful stop's bounded steps."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bracketgate.core import app

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "bracketgate.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=Value, '#'/';' comments, repeated keys kept in
    order (an empty assignment resets the list, as systemd does), backslash continuation."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            current = line[1:-1]
            continue
        assert current is not None and "=" in line, f"not a Key=Value line: {raw!r}"
        key, _, value = line.partition("=")
        values = sections[current][key.strip()]
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def seconds(value: str) -> float:
    """systemd time span: 60, 60s, 2min, 1h 30s ..."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def test_service_keys(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = "Service"
    assert one(unit, svc, "Type") == "notify" and one(unit, svc, "NotifyAccess") == "main"
    assert one(unit, svc, "Restart") == "on-failure"
    assert 5 <= seconds(one(unit, svc, "RestartSec")) <= 60
    assert one(unit, svc, "KillSignal") == "SIGTERM"
    assert one(unit, svc, "EnvironmentFile") == "/etc/bracketgate/env"
    assert one(unit, svc, "User") == "bracketgate" and one(unit, svc, "Group") == "bracketgate"
    assert one(unit, svc, "NoNewPrivileges") == "yes"
    assert one(unit, svc, "ProtectSystem") == "strict"
    assert one(unit, svc, "ReadWritePaths") == "/var/lib/bracketgate"
    assert one(unit, svc, "StateDirectory") == "bracketgate"
    assert one(unit, svc, "StateDirectoryMode") == "0700"
    assert one(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, svc, "ExecStart").endswith("bracketgate daemon")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    # a start limit that a steady RestartSec cadence reaches only after minutes of failures
    burst = int(one(unit, "Unit", "StartLimitBurst"))
    interval = seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    assert burst * seconds(one(unit, svc, "RestartSec")) >= 300 and interval >= 300


def test_restart_prevented_exactly_for_the_exit_codes_a_restart_cannot_fix(
        unit: dict[str, dict[str, list[str]]]) -> None:
    prevented = {int(v) for v in one(unit, "Service", "RestartPreventExitStatus").split()}
    assert prevented == {app.EXIT_CONFIG, app.EXIT_JOURNAL}
    # the transient ones (IB, MQTT unreachable at start) restart
    assert app.EXIT_IB not in prevented and app.EXIT_MQTT not in prevented and app.EXIT_OK == 0


def graceful_stop_budget() -> float:
    """Sum of the bounded steps of the daemon's graceful stop, read from core/app.py."""
    src = Path(app.__file__).read_text()
    stop = src[src.index('log.info("stopping"'):src.index('log.info("stopped"')]
    steps = [float(t) for t in re.findall(r"await _step\([^\n]*?,\s*([\d.]+)\)\n", stop)]
    drains = [float(t) for t in re.findall(r"await bus\.drain\(([\d.]+)\)", stop)]
    assert len(steps) >= 4 and len(drains) >= 2, (steps, drains)
    return sum(steps) + sum(drains)


def test_stop_timeout_covers_the_graceful_stop(unit: dict[str, dict[str, list[str]]]) -> None:
    budget = graceful_stop_budget()
    timeout = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert timeout >= budget + 10, f"TimeoutStopSec={timeout}s, graceful stop up to {budget}s"
    assert timeout <= 180    # a stuck stop still ends (SIGKILL: the journal survives it)
    assert one(unit, "Service", "KillMode") == "mixed"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this checkout's daemon, nothing else changed
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    local = tmp_path / "bracketgate.service"
    local.write_text(text.replace(exec_start, f"ExecStart={sys.executable} {REPO / 'run.py'} daemon"))
    done = subprocess.run([tool, "verify", "--man=no", str(local)], capture_output=True,
                          text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, output
    # unknown keys and bad values are only warnings for systemd: none is allowed here
    assert "bracketgate.service" not in output, output


def test_parser_reads_what_systemd_reads() -> None:
    parsed = parse_unit("[Service]\n# c\nA=1\nA=2\nB=x \\\n y\nA=\nA=3\n")
    assert parsed["Service"]["A"] == ["3"] and parsed["Service"]["B"] == ["x  y"]


TEMPLATE = REPO / "deploy" / "systemd" / "bracketgate@.service"
PER_INSTANCE = {   # the only keys the template may change, and to what
    ("Unit", "Description"): "bracketgate risk gate for IB bracket orders (account %i)",
    ("Service", "EnvironmentFile"): "/etc/bracketgate/%i.env",
    ("Service", "WorkingDirectory"): "/var/lib/bracketgate/%i",
    ("Service", "StateDirectory"): "bracketgate/%i",
    ("Service", "ReadWritePaths"): "/var/lib/bracketgate/%i",
}


def test_template_is_the_unit_with_per_account_paths(unit: dict[str, dict[str, list[str]]]) -> None:
    template = parse_unit(TEMPLATE.read_text())
    assert set(template) == set(unit)
    for section, keys in unit.items():
        assert set(template[section]) == set(keys), section
        for key, values in keys.items():
            want = [PER_INSTANCE[(section, key)]] if (section, key) in PER_INSTANCE else values
            assert template[section][key] == want, (section, key)


def test_systemd_analyze_verify_template(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    text = TEMPLATE.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    local = tmp_path / "bracketgate@acct-a.service"   # an instance of the template
    local.write_text(text.replace(exec_start, f"ExecStart={sys.executable} {REPO / 'run.py'} daemon"))
    done = subprocess.run([tool, "verify", "--man=no", str(local)], capture_output=True,
                          text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and "bracketgate@" not in output, output
