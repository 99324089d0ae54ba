"""Replays end to end (mosquitto + paper TWS + the daemon as processes): a retained proposal is
refused RETAINED_PROPOSAL and never placed, across restarts; an old proposal is refused
PROPOSAL_EXPIRED; an id decided long ago (past the 36 h recovery lookback) gets its first
decision back and never a second order.

What mosquitto 2.0 does (checked here): a retained message is delivered with retain=1 at every
SUBSCRIBE, so at every daemon (re)connect; a live publish with retain=1 reaches a current
subscriber with retain=0 (MQTT 3.1.1), so it is decided like any proposal.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import RiskDecision, TradeProposal, Verdict
from bracketgate.core.clock import ManualClock
from tests.fixtures.daemon import DaemonProcess, MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def bracket(pid: str, **kw: Any) -> dict[str, Any]:
    p = {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 10,
         "order_type": "LMT", "limit_price": 229.00, "take_profit": 235.00, "stop_loss": 226.50}
    p.update(kw)
    return p


async def orders_for(tws: Any, pid: str) -> list[dict[str, Any]]:
    return [o for o in (await tws.state())["orders"] if o.get("orderRef") == pid]


def codes(decision: dict[str, Any]) -> list[str]:
    return [r["code"] for r in decision["reasons"]]


async def spawn(tws: Any, mosquitto: Any, tmp: Path, prefix: str) -> DaemonProcess:
    return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                     tmp=tmp, prefix=prefix)


async def test_retained_proposal_is_refused_never_placed_and_answered_once(
        mosquitto: Any, paper_tws_process: Any, tmp_path: Path) -> None:
    tws, prefix = paper_tws_process, f"bgret{uuid.uuid4().hex[:6]}"
    pid = f"ret-{uuid.uuid4().hex[:8]}"
    async with MqttProbe(mosquitto.url, prefix) as agent:
        # published retained before the daemon ever subscribed: delivered with retain=1
        await agent.client.publish(f"{prefix}/proposals/alpha", json.dumps(bracket(pid)),
                                   qos=1, retain=True)
        d = await spawn(tws, mosquitto, tmp_path, prefix)
        try:
            dec = await agent.decision("alpha", pid)
            assert dec["verdict"] == "rejected" and codes(dec) == ["RETAINED_PROPOSAL"], dec
            assert await orders_for(tws, pid) == []
            assert await d.terminate() == 0
            mark = agent.mark()
            d = await spawn(tws, mosquitto, tmp_path, prefix)   # subscribes again: replayed
            await d.wait_log(lambda e: e.get("event") == "retained_proposal_replay"
                             and e.get("proposal_id") == pid, timeout=15)
            # a live proposal after it is decided normally: the replay did not block intake
            live = f"live-{uuid.uuid4().hex[:8]}"
            await agent.propose("alpha", bracket(live))
            assert (await agent.decision("alpha", live))["verdict"] == "approved"
            later = [m for m in agent.messages[mark:] if m[0] == "decisions/alpha"
                     and m[1].get("proposal_id") == pid]
            assert later == []                                   # answered once
            assert await orders_for(tws, pid) == []
            # the daemon never cleared the publisher's retained message
            assert not [m for m in agent.messages if m[0] == "proposals/alpha" and m[1] == ""]
        finally:
            await d.terminate()


async def test_live_publish_with_retain_is_decided_once_and_its_replay_never_placed(
        mosquitto: Any, paper_tws_process: Any, tmp_path: Path) -> None:
    tws, prefix = paper_tws_process, f"bgret{uuid.uuid4().hex[:6]}"
    pid = f"liveret-{uuid.uuid4().hex[:8]}"
    d = await spawn(tws, mosquitto, tmp_path, prefix)
    try:
        async with MqttProbe(mosquitto.url, prefix) as agent:
            await agent.client.publish(f"{prefix}/proposals/alpha", json.dumps(bracket(pid)),
                                       qos=1, retain=True)
            first = await agent.decision("alpha", pid)
            assert first["verdict"] == "approved", first     # forwarded with retain=0
            assert len(await orders_for(tws, pid)) == 3
            assert await d.terminate() == 0
            d = await spawn(tws, mosquitto, tmp_path, prefix)
            await d.wait_log(lambda e: e.get("event") == "retained_proposal_replay"
                             and e.get("proposal_id") == pid, timeout=15)
            assert len(await orders_for(tws, pid)) == 3       # never a second bracket
    finally:
        await d.terminate()


async def test_expired_by_created_at_and_by_first_journaled_time_after_a_restart(
        mosquitto: Any, paper_tws_process: Any, tmp_path: Path) -> None:
    """A proposal journaled (so acknowledged) 2 minutes ago and never decided — the daemon
    died in between — is resubmitted at start and refused: it is older than 60 s."""
    tws, prefix = paper_tws_process, f"bgexp{uuid.uuid4().hex[:6]}"
    stale, old = f"stale-{uuid.uuid4().hex[:6]}", f"old-{uuid.uuid4().hex[:6]}"
    clock = ManualClock(start=datetime.now(timezone.utc) - timedelta(minutes=2))
    async with Journal(tmp_path / "journal.sqlite", clock) as j:
        p = TradeProposal.model_validate({**bracket(stale), "agent_id": "alpha"})
        await j.record("proposal", payload=p, durable=True)
    async with MqttProbe(mosquitto.url, prefix) as agent:
        d = await spawn(tws, mosquitto, tmp_path, prefix)
        try:
            dec = await agent.decision("alpha", stale)
            assert codes(dec) == ["PROPOSAL_EXPIRED"] and "first journaled" in dec["reasons"][0]["message"]
            created = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat()
            await agent.propose("alpha", bracket(old, created_at=created))
            dec = await agent.decision("alpha", old)
            assert codes(dec) == ["PROPOSAL_EXPIRED"] and dec["reasons"][0]["field"] == "created_at"
            assert await orders_for(tws, stale) == [] and await orders_for(tws, old) == []
        finally:
            await d.terminate()


async def test_an_id_decided_past_the_recovery_lookback_gets_its_first_decision(
        mosquitto: Any, paper_tws_process: Any, tmp_path: Path) -> None:
    """The journal holds a proposal approved and placed 40 h ago (its bracket long finished;
    this paper TWS never heard of it): a re-send gets that decision, not a new bracket."""
    tws, prefix = paper_tws_process, f"bglb{uuid.uuid4().hex[:6]}"
    pid = f"lb-{uuid.uuid4().hex[:8]}"
    clock = ManualClock(start=datetime.now(timezone.utc) - timedelta(hours=40))
    p = TradeProposal.model_validate({**bracket(pid), "agent_id": "alpha"})
    async with Journal(tmp_path / "journal.sqlite", clock) as j:
        await j.record("proposal", payload=p, durable=True)
        await j.record("decision", payload=RiskDecision(
            proposal_id=pid, agent_id="alpha", verdict=Verdict.APPROVED, ts=clock.now(),
            order_ids={"entry": 901, "take_profit": 902, "stop_loss": 903}))
    d = await spawn(tws, mosquitto, tmp_path, prefix)
    try:
        async with MqttProbe(mosquitto.url, prefix) as agent:
            await agent.propose("alpha", bracket(pid))
            dec = await agent.decision("alpha", pid)
            assert dec["verdict"] == "approved" and dec["order_ids"]["entry"] == 901, dec
            other = bracket(pid, quantity=20)
            mark = agent.mark()
            await agent.propose("alpha", other)
            dup = await agent.wait_topic("decisions/alpha", lambda m: m.get("proposal_id") == pid,
                                         since=mark)
            assert codes(dup) == ["DUPLICATE_PROPOSAL"]
            assert await orders_for(tws, pid) == []
    finally:
        await d.terminate()
