"""Issue 13, recovery: a bracket lifecycle command in flight when the daemon is SIGKILLed (at
the named crash points of core/crashpoints.py COMMAND_POINTS) or the gateway restarts ends in
a state that agrees with the paper TWS and is answered once.

  command_journaled  durable, not acted on, not acknowledged -> after the restart answered
                     COMMAND_FAILED from IB's state (never acted on: the bracket is untouched)
  close_sent         a close's children changed, its market exit not sent -> COMMAND_FAILED,
                     the stop covers the whole position again (a partial close had shrunk it)
  command_answered   the answer journaled, not published -> published after the restart
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bracketgate.core.crashpoints import ENV
from tests.e2e.test_commands_e2e import _held, command
from tests.e2e.test_risk_e2e import marketable, orders_by_ref, ready_snapshot, wait_for_tws
from tests.fixtures.daemon import DaemonProcess, MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

AGENT = "alpha"


async def spawn(tws: Any, mosquitto: Any, tmp: Path, prefix: str, crash: str | None = None
                ) -> DaemonProcess:
    return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                     tmp=tmp, prefix=prefix,
                                     extra_env={ENV: crash} if crash else {})


def answers_for(probe: MqttProbe, cid: str) -> list[dict[str, Any]]:
    return [m for m in probe.on(f"decisions/{AGENT}")
            if isinstance(m, dict) and m.get("command_id") == cid]


async def settle_answers(probe: MqttProbe, cid: str) -> list[dict[str, Any]]:
    """Every answer to `cid`, once a later command's answer came too (answers go out in order)."""
    await probe.wait_topic(f"decisions/{AGENT}", lambda m: m.get("command_id") == cid, timeout=20)
    marker = await command(probe, AGENT, {"action": "cancel", "proposal_id": "no-such-bracket"})
    assert marker["reasons"][0]["code"] == "UNKNOWN_BRACKET"
    return answers_for(probe, cid)


CASES = [
    ("command_journaled", {"action": "close"}),
    ("close_sent", {"action": "close", "quantity": 4}),
    ("close_sent", {"action": "close"}),
    ("command_answered", {"action": "amend", "stop_loss": 229.0}),
]


@pytest.mark.parametrize("point,body", CASES, ids=[f"{p}-{b.get('quantity', b['action'])}"
                                                   for p, b in CASES])
async def test_sigkill_in_the_middle_of_a_command(mosquitto, paper_tws_process, tmp_path,
                                                   point, body):
    tws = paper_tws_process
    prefix = f"bgrec{uuid.uuid4().hex[:6]}"
    async with asyncio.timeout(60):
        d = await spawn(tws, mosquitto, tmp_path, prefix, crash=point)
        try:
            async with MqttProbe(mosquitto.url, prefix) as probe:
                await probe.wait_topic("portfolio", ready_snapshot)
                pid = f"rec-{uuid.uuid4().hex[:8]}"
                await probe.propose(AGENT, marketable(pid))
                dec = await probe.decision(AGENT, pid)
                assert dec["verdict"] == "approved", dec
                ids = dec["order_ids"]
                await wait_for_tws(tws, lambda s: _held(s).get("AAPL") == 10.0)
                cid = f"c-{uuid.uuid4().hex[:8]}"
                await probe.publish(f"commands/{AGENT}", {"command_id": cid, "proposal_id": pid,
                                                          **body})
                await d.wait_exit(timeout=20)
                assert any(e.get("event") == "crash_point" and e.get("point") == point
                           for e in d.logs), "\n".join(d.raw[-20:])

                d = await spawn(tws, mosquitto, tmp_path, prefix)
                got = await settle_answers(probe, cid)
                assert len(got) == 1, json.dumps(got)
                ans = got[0]
                legs = {o["orderId"]: o for o in (await orders_by_ref(tws, {pid}))[pid]}
                held = _held(await tws.state()).get("AAPL", 0.0)
                stop = legs[ids["stop_loss"]]
                if point == "command_answered":
                    assert ans["verdict"] == "accepted", json.dumps(ans)
                    assert stop["auxPrice"] == pytest.approx(229.0)
                else:
                    assert ans["verdict"] == "rejected", json.dumps(ans)
                    assert [r["code"] for r in ans["reasons"]] == ["COMMAND_FAILED"]
                    assert held == 10.0, "never acted on again"
                    # protected: the stop works for everything held
                    assert stop["status"] in ("Submitted", "PreSubmitted"), stop
                    assert stop["totalQuantity"] - stop.get("filled", 0.0) == pytest.approx(held)
                # the answer says what IB has
                assert ans["legs"]["stop_loss"]["status"] == stop["status"]
                assert ans["legs"]["stop_loss"]["quantity"] == pytest.approx(stop["totalQuantity"])
                assert ans["position"] == pytest.approx(held)
            rc = await d.terminate()
            assert rc == 0, "\n".join(d.raw[-30:])
        finally:
            await d.kill()


async def test_gateway_restart_during_a_command(mosquitto, paper_tws_process, tmp_path):
    """The gateway goes away right after an amend is sent: one answer, and it agrees with what
    the paper TWS has (accepted: the new stop is there; COMMAND_FAILED: the old one is)."""
    from tests.e2e.test_risk_e2e import running

    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, probe):
        pid = f"gw-{uuid.uuid4().hex[:8]}"
        await probe.propose(AGENT, marketable(pid))
        dec = await probe.decision(AGENT, pid)
        ids = dec["order_ids"]
        await wait_for_tws(tws, lambda s: _held(s).get("AAPL") == 10.0)
        cid = f"c-{uuid.uuid4().hex[:8]}"
        await probe.publish(f"commands/{AGENT}", {"command_id": cid, "proposal_id": pid,
                                                  "action": "amend", "stop_loss": 228.0})
        await tws.restart(downtime=1.0)
        await tws.wait_up(timeout=10)
        got = await settle_answers(probe, cid)
        assert len(got) == 1, json.dumps(got)
        ans = got[0]
        stop = {o["orderId"]: o for o in (await orders_by_ref(tws, {pid}))[pid]}[ids["stop_loss"]]
        if ans["verdict"] == "accepted":
            assert stop["auxPrice"] == pytest.approx(228.0)
        else:
            assert [r["code"] for r in ans["reasons"]] == ["COMMAND_FAILED"], json.dumps(ans)
            assert stop["auxPrice"] == pytest.approx(226.5)
        assert stop["status"] in ("Submitted", "PreSubmitted")


async def test_gateway_restart_while_a_close_waits_for_ibs_ack(mosquitto, paper_tws_process,
                                                               tmp_path):
    """Deterministic: the paper TWS loses the close's market exit (ack_hold "lose": no order, no
    answer) and the gateway restarts while the daemon waits for the ack. After the reconnect
    the command is answered once, COMMAND_FAILED (IB never had the exit), and the position is
    still under its stop, which the close had not cancelled yet."""
    from tests.e2e.test_risk_e2e import running

    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, probe):
        pid = f"gwc-{uuid.uuid4().hex[:8]}"
        await probe.propose(AGENT, marketable(pid))
        ids = (await probe.decision(AGENT, pid))["order_ids"]
        await wait_for_tws(tws, lambda s: _held(s).get("AAPL") == 10.0)
        await tws.post("/ack_hold", {"orderRef": pid, "orderType": "MKT", "mode": "lose"})
        cid = f"c-{uuid.uuid4().hex[:8]}"
        await probe.publish(f"commands/{AGENT}", {"command_id": cid, "proposal_id": pid,
                                                  "action": "close"})
        await d.wait_log(lambda e: e.get("event") == "ib_protective_order_sent"
                         and e.get("proposal_id") == pid)
        await tws.restart(downtime=1.0)
        got = await settle_answers(probe, cid)
        assert len(got) == 1, json.dumps(got)
        ans = got[0]
        assert [r["code"] for r in ans["reasons"]] == ["COMMAND_FAILED"], json.dumps(ans)
        assert any(e.get("event") == "command_uncertain" for e in d.logs)
        legs = {o["orderId"]: o for o in (await orders_by_ref(tws, {pid}))[pid]}
        assert _held(await tws.state()).get("AAPL") == 10.0
        stop = legs[ids["stop_loss"]]
        assert stop["status"] == "Submitted" and stop["totalQuantity"] == pytest.approx(10.0)
        assert not [o for o in legs.values() if o["orderType"] == "MKT"], "IB never had the exit"
        assert ans["position"] == pytest.approx(10.0)
        assert ans["legs"]["stop_loss"]["status"] == "Submitted"
        assert any(e.get("event") == "exit_not_at_ib" for e in d.logs)
        # and the bracket can still be closed
        ans = await command(probe, AGENT, {"action": "close", "proposal_id": pid})
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert "AAPL" not in _held(await tws.state())
