"""Messages authenticated in the daemon (issue 10), against real mosquitto, the paper TWS and the
daemon: with an agents file holding keys, an unsigned, forged, moved, stale or nonce-reusing
proposal is refused with its typed code and nothing is placed — and a forger cannot burn the
agent's proposal_id —; an unsigned control command is refused (journaled, an Alert) while the
operator CLI, which signs, halts.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bracketgate.adapters.journal import read_events
from bracketgate.bus.auth import sign
from tests.e2e.test_agents_e2e import write_agents
from tests.e2e.test_risk_e2e import _pid, orders_by_ref, resting, running
from tests.fixtures.daemon import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

KEY = "alpha-e2e-key-" + "k" * 16
OPKEY = "operator-e2e-key-" + "o" * 16


async def test_only_signed_messages_trade_or_halt(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    agents = write_agents(tmp_path / "agents.toml", {"alpha": {"key": KEY}})
    agents.write_text(f'[operator]\nkey = "{OPKEY}"\n\n' + agents.read_text())
    env = {"AGENTS_FILE": str(agents)}
    async with running(mosquitto, tws, tmp_path, env=env) as (d, probe):
        topic = f"{d.prefix}/proposals/alpha"

        async def publish(payload: bytes | str) -> None:
            await probe.client.publish(topic, payload, qos=1)

        async def answer(pid: str, since: int) -> dict:
            return await probe.wait_topic("decisions/alpha",
                                          lambda m: m.get("proposal_id") == pid, since=since)

        now = int(time.time() * 1000)
        burned = _pid("burn")
        cases = {
            "unsigned": (_pid("u"), lambda pid: json.dumps(resting(pid)), "AUTH_REQUIRED"),
            "forged": (burned, lambda pid: sign(b"not-alpha-key-0123456789", topic,
                                                json.dumps(resting(pid))), "BAD_SIGNATURE"),
            "moved": (_pid("m"), lambda pid: sign(KEY.encode(), f"{d.prefix}/proposals/beta",
                                                  json.dumps(resting(pid))), "BAD_SIGNATURE"),
            "stale": (_pid("s"), lambda pid: sign(KEY.encode(), topic, json.dumps(resting(pid)),
                                                  ts=now - 120_000), "SIGNATURE_REPLAYED"),
        }
        for name, (pid, make, want) in cases.items():
            mark = probe.mark()
            await publish(make(pid))
            dec = await answer(pid, mark)
            assert dec["verdict"] == "rejected", (name, dec)
            assert [r["code"] for r in dec["reasons"]] == [want], (name, dec)

        # the genuine agent, with the proposal_id the forger tried: decided on its merits
        mark = probe.mark()
        signed = sign(KEY.encode(), topic, json.dumps(resting(burned)), nonce="nonce-genuine-1")
        await publish(signed)
        ok = await answer(burned, mark)
        assert ok["verdict"] == "approved", ok
        # the same signed message again (a broker's redelivery): its first decision, no order
        mark = probe.mark()
        await publish(signed)
        assert (await answer(burned, mark))["order_ids"] == ok["order_ids"]
        # its nonce with another body: a replay attempt
        other = _pid("r")
        mark = probe.mark()
        await publish(sign(KEY.encode(), topic, json.dumps(resting(other)), nonce="nonce-genuine-1"))
        assert [r["code"] for r in (await answer(other, mark))["reasons"]] == ["SIGNATURE_REPLAYED"]

        await asyncio.sleep(0.5)        # anything placed would be at the paper TWS by now
        placed = await orders_by_ref(tws, {p for p, _, _ in cases.values()} | {other, burned})
        assert set(placed) == {burned} and len(placed[burned]) == 3, placed

        # control: unsigned halt refused (an Alert, journaled); the CLI signs and halts
        mark = probe.mark()
        await probe.publish("control", {"action": "halt", "reason": "forged"})
        alert = await probe.wait_topic("events", lambda m: m.get("type") == "alert"
                                       and m.get("code") == "AUTH_REQUIRED", since=mark)
        assert "control command refused" in alert["message"]
        status = [m for t, m, _ in probe.messages[mark:] if t == "status"]
        assert all(s.get("trading_state") != "HALTED" for s in status), status
        rc, out, err = await run_cli(d, "halt", "--reason", "signed", timeout=20,
                                     env={"AGENTS_FILE": str(agents)})
        assert rc == 0, (out, err)
        assert json.loads(out)["new"] == "HALTED"
        assert OPKEY not in out + err and KEY not in "\n".join(d.raw)
    journal = Path(d.env["JOURNAL_PATH"])
    refused = [e for e in read_events(journal, kinds=["alert"])
               if e["payload"].get("code") == "AUTH_REQUIRED"]
    assert refused, "the refused control command is journaled"
    decided = {e["proposal_id"]: e["payload"]["reasons"] for e in read_events(journal, kinds=["decision"])}
    assert decided[cases["unsigned"][0]][0]["code"] == "AUTH_REQUIRED"   # refusals journaled
