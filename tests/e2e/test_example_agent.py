"""examples/agent.py against the embedded default (`python run.py` with nothing configured, as
`bash scripts/run.sh` runs it: embedded paper TWS + embedded broker), run as a user would: its
login from data/default/mqtt-credentials.json, the port from data/endpoints.json. The agent's
bracket is approved, its entry fills, the test moves the market towards the target, the agent
sends the break-even `amend` and (once the commands topic of issue 13 is merged) gets the
command's answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "examples" / "agent.py"
PRICE = 230.0

pytestmark = [pytest.mark.e2e]


class DefaultDaemon:
    """`python run.py` in default mode as a subprocess; its JSON log lines collected."""

    def __init__(self, tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "MQTT_"))}
        env.update({"PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", "DATA_DIR": str(tmp / "data")})
        self.tmp = tmp
        self.proc = subprocess.Popen([sys.executable, str(REPO / "run.py")], cwd=tmp, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if '"event": "ready"' in line or '"event":"ready"' in line:
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("default daemon not ready:\n" + "\n".join(self.lines[-30:]))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def set_price(control_port: int, price: float) -> None:
    """Move AAPL at the embedded paper TWS (its control port, as the README's curl does)."""
    req = urllib.request.Request(f"http://127.0.0.1:{control_port}/price", method="POST",
                                 data=json.dumps({"symbol": "AAPL", "price": price}).encode())
    with urllib.request.urlopen(req, timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One default daemon, one run of the example agent: its exit code and JSON events."""
    tmp = tmp_path_factory.mktemp("example-agent")
    daemon = DefaultDaemon(tmp)
    try:
        daemon.wait_ready()
        data = tmp / "data"
        endpoints = json.loads((data / "endpoints.json").read_text())
        demo = json.loads((data / "default" / "mqtt-credentials.json").read_text())["demo"]
        port = endpoints["mqtt_url"].rsplit(":", 1)[1]
        # the embedded paper TWS's prices walk by themselves: start AAPL where --price says
        set_price(endpoints["sim_control_port"], PRICE)
        started = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, str(AGENT), "--port", port, "--username", demo["username"],
             f"--password={demo['password']}", "--prefix", endpoints["mqtt_prefix"],
             "--price", str(PRICE), "--timeout", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
        assert agent.stdout is not None
        lines: list[str] = []
        for line in agent.stdout:      # ends when the agent exits (answer, or its timeout)
            lines.append(line)
            event = json.loads(line)
            if event["event"] == "fill" and event["leg"] == "entry":
                # the market goes 3/4 of the way to the take-profit: the agent's trigger
                target = round(event["price"] + 0.75 * (round(PRICE * 1.02, 2) - event["price"]), 2)
                set_price(endpoints["sim_control_port"], target)
        stderr = agent.stderr.read() if agent.stderr else ""
        returncode = agent.wait(10)
        took = time.monotonic() - started
    finally:
        rc = daemon.stop()
    (tmp / "daemon.log").write_text("\n".join(daemon.lines) + "\n")
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return {"rc": returncode, "events": events, "stderr": stderr, "took": took,
            "daemon_rc": rc, "daemon_log": daemon.lines}


def of(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in run["events"] if e["event"] == kind]


def test_example_agent_is_approved_filled_and_sends_the_break_even_amend(run: dict[str, Any]) -> None:
    assert not run["stderr"].strip(), run["stderr"]
    decisions = of(run, "decision")
    assert len(decisions) == 1 and decisions[0]["verdict"] == "approved", run["events"]
    ids = decisions[0]["order_ids"]
    assert ids and all(ids[leg] for leg in ("entry", "take_profit", "stop_loss"))
    fills = [f for f in of(run, "fill") if f["leg"] == "entry"]
    assert fills and sum(f["quantity"] for f in fills) == 1, run["events"]
    assert all(f["order_id"] == ids["entry"] for f in fills)
    amends = of(run, "amend_sent")
    assert len(amends) == 1, run["events"]
    amend = amends[0]
    assert amend["action"] == "amend" and amend["proposal_id"] == decisions[0]["proposal_id"]
    assert amend["stop_loss"] == round(fills[-1]["price"], 2)    # break-even: the entry's price
    # sent once the bid was half way to the take-profit (the test moved the market 3/4 of it)
    halfway = fills[-1]["price"] + 0.5 * (round(PRICE * 1.02, 2) - fills[-1]["price"])
    assert amend["bid"] >= halfway
    assert run["daemon_rc"] == 0


def test_example_agent_amend_is_answered(run: dict[str, Any]) -> None:
    answers = of(run, "command_answer")
    assert len(answers) == 1, run["events"]
    answer, amend = answers[0], of(run, "amend_sent")[0]
    assert answer["command_id"] == amend["command_id"] and answer["action"] == "amend"
    assert answer["verdict"] == "accepted", answer
    assert run["rc"] == 0
