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
                # the gate has them while they commit: the daemon's SIGTERM order, intake
                # stopped (the batch in hand durable and acknowledged) before the bridge closes
                await bridge.stop_intake()
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


async def test_a_decision_is_journaled_while_the_one_before_commits_and_sent_after_it(
        mosquitto: MosquittoServer) -> None:
    """The bridge hands the next decisions to the journal while the last ones still commit
    (bus overlap), but sends each only once its own hook returned and after the ones before."""
    first_may_commit = asyncio.Event()
    journaled: list[str] = []
    calls: list[list[str]] = []

    async def on_decisions(ds: list[RiskDecision]) -> None:
        calls.append([d.proposal_id for d in ds])
        if ds[0].proposal_id == "slow":
            await first_may_commit.wait()
        journaled.extend(d.proposal_id for d in ds)

    def decision(pid: str) -> RiskDecision:
        return RiskDecision(proposal_id=pid, agent_id="alpha", verdict=Verdict.REJECTED,
                            reasons=[Reason(code=DenialCode.OVERLOADED, message="busy")], ts=TS)

    bus = Bus()
    await bus.start()
    try:
        async with Agent(mosquitto.url) as agent, \
                MqttBridge(make_settings(mqtt_client_id="bracketgate-overlap"), bus,
                           url=mosquitto.url, on_decisions=on_decisions) as bridge:
            await bridge.wait_connected(WAIT)
            await bus.publish(decision("slow"))
            async with asyncio.timeout(WAIT):
                while not calls:
                    await asyncio.sleep(0.01)
            await bus.publish(decision("quick"))
            async with asyncio.timeout(WAIT):   # journaled while "slow" still commits
                while "quick" not in journaled:
                    await asyncio.sleep(0.01)
            assert calls == [["slow"], ["quick"]] and journaled == ["quick"]
            with pytest.raises(TimeoutError):   # not sent ahead of the one before it
                await agent.next_json(f"{PREFIX}/decisions/alpha", timeout=0.5)
            first_may_commit.set()
            got = [(await agent.next_json(f"{PREFIX}/decisions/alpha"))["proposal_id"]
                   for _ in range(2)]
            assert got == ["slow", "quick"]
    finally:
        await bus.close()
