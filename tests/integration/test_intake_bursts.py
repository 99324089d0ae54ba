"""Bursts through the MQTT bridge against a real mosquitto: the proposals that arrive together
are made durable together (one hook call, so one journal commit) and every one of them is
still offered, acknowledged and answered; decisions that are ready together share one hook
call before any is published, and go out in order with several PUBACKs awaited at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import Reason, DenialCode, RiskDecision, TradeProposal, Verdict
from bracketgate.bus.mqtt import MqttBridge
from bracketgate.core.app import _journal_decision, _journal_proposal
from tests.fixtures.mosquitto import MosquittoServer
from tests.integration.test_mqtt_bridge import PREFIX, TS, VALID, WAIT, Agent, Sink, make_settings

pytestmark = pytest.mark.mosquitto


async def test_a_burst_of_proposals_is_journaled_in_few_commits_and_each_answered_once(
        mosquitto: MosquittoServer, tmp_path: Path) -> None:
    n = 120
    journal = await Journal.open(tmp_path / "j.sqlite")
    batches: list[int] = []
    journal_proposals = _journal_proposal(journal)

    async def on_proposals(ps: list[TradeProposal]) -> None:
        batches.append(len(ps))
        await journal_proposals(ps)

    bus = Bus()
    sink = Sink(bus, TradeProposal)
    await bus.start()
    try:
        async with Agent(mosquitto.url) as agent:
            async with MqttBridge(make_settings(mqtt_client_id="bracketgate-burst"), bus,
                                  url=mosquitto.url, on_proposals=on_proposals) as bridge:
                await bridge.wait_connected(WAIT)
                before = journal.stats["full_commits"]
                await asyncio.gather(*(agent.propose("alpha", VALID | {"proposal_id": f"b-{i}"})
                                       for i in range(n)))
                await agent.propose("alpha", VALID | {"proposal_id": "b-0"})   # a repeat
                got = [(await sink.next()).proposal_id for _ in range(n + 1)]
                commits = journal.stats["full_commits"] - before
        assert got[:n] == [f"b-{i}" for i in range(n)]      # offered in arrival order
        assert sum(batches) == n + 1 and max(batches) > 1   # a burst shared the hook
        assert commits <= len(batches) < n                  # one FULL commit per batch
        rows = await journal.events(kinds="proposal")
        assert sorted(r["proposal_id"] for r in rows) == sorted(f"b-{i}" for i in range(n))
    finally:
        await bus.close()
        await journal.close()
    # all acknowledged: a new session of the same client id gets nothing again
    bus2 = Bus()
    sink2 = Sink(bus2, TradeProposal)
    await bus2.start()
    async with MqttBridge(make_settings(mqtt_client_id="bracketgate-burst"), bus2,
                          url=mosquitto.url) as again:
        await again.wait_connected(WAIT)
        with pytest.raises(TimeoutError):
            await sink2.next(timeout=0.5)
    await bus2.close()


async def test_decisions_ready_together_are_journaled_together_then_published_in_order(
        mosquitto: MosquittoServer, tmp_path: Path) -> None:
    n = 200
    journal = await Journal.open(tmp_path / "j.sqlite")
    journal_decisions = _journal_decision(journal)
    published_before_journaled: list[str] = []
    batches: list[int] = []

    async def on_decisions(ds: list[RiskDecision]) -> None:
        batches.append(len(ds))
        await journal_decisions(ds)

    bus = Bus()
    await bus.start()
    try:
        async with Agent(mosquitto.url) as agent, \
                MqttBridge(make_settings(mqtt_client_id="bracketgate-decisions"), bus,
                           url=mosquitto.url, on_decisions=on_decisions) as bridge:
            await bridge.wait_connected(WAIT)
            for i in range(n):
                await bus.publish(RiskDecision(
                    proposal_id=f"d-{i}", agent_id="alpha", verdict=Verdict.REJECTED,
                    reasons=[Reason(code=DenialCode.OVERLOADED, message="busy")], ts=TS))
            seen = []
            for _ in range(n):
                d = await agent.next_json(f"{PREFIX}/decisions/alpha")
                if await journal.decision_for(d["proposal_id"]) is None:
                    published_before_journaled.append(d["proposal_id"])
                seen.append(d["proposal_id"])
        assert seen == [f"d-{i}" for i in range(n)]          # in order, each once
        assert not published_before_journaled
        assert sum(batches) == n and len(batches) < n
    finally:
        await bus.close()
        await journal.close()
