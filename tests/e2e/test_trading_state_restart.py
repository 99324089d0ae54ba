"""The operator's trading state survives a daemon restart (adapters/journal_state.py): a HALT,
then SIGKILL (a crash, systemd's Restart=on-failure), then a new daemon on the same DATA_DIR
comes back HALTED — the first proposal is rejected TRADING_HALTED and the status says HALTED —
until `run.py resume`; a scoped halt of `flatten --agent A` holds for A while B trades on.
Real processes: mosquitto, the paper TWS, the daemon (`python run.py`), the operator CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_risk_e2e import AGENT, _pid, codes, operator, ready_snapshot, resting
from tests.fixtures.daemon import DaemonProcess, MqttProbe, run_cli
from tests.fixtures.paper_tws import PaperTWSHandle

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

BUDGET_S = 90.0


async def _start(mosquitto: Any, tws: PaperTWSHandle, tmp: Path, prefix: str | None = None
                 ) -> DaemonProcess:
    return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                     tmp=tmp, prefix=prefix, timeout=30.0)


async def test_halt_survives_sigkill_until_resume(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with asyncio.timeout(BUDGET_S):
        d = await _start(mosquitto, tws, tmp_path)
        try:
            async with MqttProbe(mosquitto.url, d.prefix) as agent:
                await agent.wait_topic("portfolio", ready_snapshot)
                first = await agent.wait_topic("status", lambda s: s.get("state") == "online")
                rc, out = await operator(d, "halt", "--reason", "news")
                assert rc == 0 and out["new"] == "HALTED", out
        finally:
            await d.kill()                        # SIGKILL: no clean shutdown
        assert d.proc.returncode == -9

        d = await _start(mosquitto, tws, tmp_path, prefix=d.prefix)
        try:
            restored = [e for e in d.logs if e.get("event") == "trading_state_restored"]
            assert len(restored) == 1 and restored[0]["state"] == "HALTED", restored
            assert restored[0]["by"] == "operator" and restored[0]["reason"] == "news"
            ready = next(e for e in d.logs if e.get("event") == "ready")
            assert ready["trading_state"] == "HALTED"
            assert d.logs.index(restored[0]) < d.logs.index(ready)
            async with MqttProbe(mosquitto.url, d.prefix) as agent:
                await agent.wait_topic("portfolio", ready_snapshot, timeout=20.0)
                st = await agent.wait_topic("status", lambda s: s.get("state") == "online"
                                            and s.get("started_at") != first.get("started_at"))
                assert st["trading_state"] == "HALTED", st
                rc, line, _ = await run_cli(d, "status")
                assert "trading=HALTED" in line, line
                pid = _pid("after-restart")
                await agent.propose(AGENT, resting(pid))
                dec = await agent.decision(AGENT, pid, timeout=15.0)
                assert dec["verdict"] == "rejected" and codes(dec) == {"TRADING_HALTED"}, dec

                rc, out = await operator(d, "resume")
                assert rc == 0 and out["new"] == "ACTIVE", out
                pid = _pid("resumed")
                await agent.propose(AGENT, resting(pid))
                assert (await agent.decision(AGENT, pid, timeout=15.0))["verdict"] == "approved"
            assert await d.terminate(timeout=15.0) == 0
        finally:
            await d.kill()

        # resumed, then stopped: the next start is ACTIVE
        d = await _start(mosquitto, tws, tmp_path, prefix=d.prefix)
        try:
            restored = [e for e in d.logs if e.get("event") == "trading_state_restored"]
            assert [e["state"] for e in restored] == ["ACTIVE"], restored
            assert await d.terminate(timeout=15.0) == 0
        finally:
            await d.kill()


async def test_scoped_halt_of_a_flatten_survives_a_restart(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with asyncio.timeout(BUDGET_S):
        d = await _start(mosquitto, tws, tmp_path)
        try:
            async with MqttProbe(mosquitto.url, d.prefix) as agent:
                await agent.wait_topic("portfolio", ready_snapshot)
                rc, out = await operator(d, "flatten", "--agent", "A", "--reason", "runaway")
                assert rc == 0, out
                st = await agent.wait_topic("status", lambda s: s.get("halted_scopes"))
                assert st["halted_scopes"] == ["agent A"] and st["trading_state"] == "ACTIVE"
        finally:
            await d.kill()

        d = await _start(mosquitto, tws, tmp_path, prefix=d.prefix)
        try:
            restored = [e for e in d.logs if e.get("event") == "trading_state_restored"]
            assert len(restored) == 1, restored
            assert restored[0]["state"] == "ACTIVE"
            assert restored[0]["scoped_halts"] == [{"agent_id": "A", "symbol": None}]
            async with MqttProbe(mosquitto.url, d.prefix) as agent:
                await agent.wait_topic("portfolio", ready_snapshot, timeout=20.0)
                rc, line, _ = await run_cli(d, "status")
                assert "halted=agent:A" in line, line
                a, b = _pid("a"), _pid("b")
                await agent.propose("A", resting(a))
                dec = await agent.decision("A", a, timeout=15.0)
                assert dec["verdict"] == "rejected" and codes(dec) == {"TRADING_HALTED"}, dec
                await agent.propose("B", resting(b))
                assert (await agent.decision("B", b, timeout=15.0))["verdict"] == "approved"
                rc, out = await operator(d, "resume")   # lifts the scoped halt as well
                assert rc == 0, out
                a2 = _pid("a2")
                await agent.propose("A", resting(a2))
                assert (await agent.decision("A", a2, timeout=15.0))["verdict"] == "approved"
            assert await d.terminate(timeout=15.0) == 0
        finally:
            await d.kill()
