"""The MQTT bridge's intake answers every payload exactly once, whatever its bytes.

The bridge is built for real (settings, bus, a SQLite journal as its decision hook) and never
connects: `_intake` runs the very path a message from the broker takes, and the answer lands
in the outbox (what would be published), so each case's answers can be counted and decoded.
tests/e2e/test_fuzz_corpus.py runs the same corpus through mosquitto and the daemon.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bracketgate.adapters.journal import Journal
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import RiskDecision, TradeProposal, Verdict
from bracketgate.bus.mqtt import MAX_JSON_DEPTH, MqttBridge
from bracketgate.config.settings import Settings
from bracketgate.core.clock import ManualClock
from tests.fixtures.fuzz import BASE, corpus

PREFIX = "bg"


class Rig:
    def __init__(self, bridge: MqttBridge, bus: Bus, journal: Journal,
                 proposals: list[TradeProposal]) -> None:
        self.bridge, self.bus, self.journal, self.proposals = bridge, bus, journal, proposals

    async def take(self, agent: str, payload: bytes) -> list[dict[str, Any]]:
        """Feed one payload; the answers the bridge would publish on decisions/{agent}."""
        before = len(self.bridge._outbox)
        await self.bridge._intake(agent, payload)
        await self.bus.drain(5.0)
        out = list(self.bridge._outbox)[before:]
        assert all(o.topic == f"{PREFIX}/decisions/{agent}" for o in out), [o.topic for o in out]
        return [json.loads(o.payload) for o in out]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock()
    settings = Settings(_env_file=None, mqtt_prefix=PREFIX, log_format="json")  # type: ignore[call-arg]
    bus = Bus(clock=clock)
    await bus.start()
    journal = await Journal.open(tmp_path / "journal.sqlite", clock)
    proposals: list[TradeProposal] = []

    async def on_decision(d: RiskDecision) -> None:
        await journal.record("decision", proposal_id=d.proposal_id, agent_id=d.agent_id, payload=d)

    bridge = MqttBridge(settings, bus, clock, url="mqtt://127.0.0.1:1", on_decision=on_decision)
    bridge.attach()

    async def gate(p: TradeProposal) -> None:   # the governor's seat: proposals only counted
        proposals.append(p)

    bus.subscribe(TradeProposal, gate, name="gate")
    try:
        yield Rig(bridge, bus, journal, proposals)
    finally:
        await bus.close()
        await journal.close()


def proposal_json(**over: Any) -> dict[str, Any]:
    return {"proposal_id": "p-1", **BASE, **over}


def raw_field(field: str, raw: str, **over: Any) -> bytes:
    text = json.dumps(proposal_json(**{field: "__RAW__"}, **over))
    return text.replace('"__RAW__"', raw).encode()


async def only_answer(rig: Rig, agent: str, payload: bytes) -> dict[str, Any]:
    answers = await rig.take(agent, payload)
    assert len(answers) == 1, answers
    (answer,) = answers
    RiskDecision.model_validate(answer)
    assert answer["verdict"] == "invalid" and answer["agent_id"] == agent
    return answer


# ============================================================================ the defects filed


async def test_nesting_past_the_parsers_recursion_limit_is_answered(rig: Rig) -> None:
    payload = b"[" * 1200 + b"]" * 1200
    with capture_logs() as logs:
        answer = await only_answer(rig, "alpha", payload)
    assert answer["reasons"][0]["code"] == "MALFORMED_JSON"
    assert "nested" in answer["reasons"][0]["message"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    # nested inside a field, deep but under the recursion limit: refused past MAX_JSON_DEPTH
    answer = await only_answer(rig, "alpha", raw_field("exchange", "[" * 900 + "]" * 900))
    assert answer["proposal_id"] == "p-1"
    assert answer["reasons"][0]["code"] == "MALFORMED_JSON"
    assert str(MAX_JSON_DEPTH) in answer["reasons"][0]["message"]


async def test_a_lone_surrogate_in_proposal_id_is_answered(rig: Rig) -> None:
    answer = await only_answer(rig, "alpha", raw_field("proposal_id", '"ab\\ud800"'))
    assert answer["proposal_id"] == "ab\\ud800"          # echoed, spelled out
    (reason,) = answer["reasons"]
    assert reason["code"] == "VALIDATION_ERROR" and reason["field"] == "proposal_id"
    assert "surrogate" in reason["message"]
    # journaled like any decision (SQLite takes the spelled-out id)
    assert await rig.journal.events(proposal_id="ab\\ud800", kinds="decision")


async def test_a_lone_surrogate_in_agent_id_is_answered(rig: Rig) -> None:
    answer = await only_answer(rig, "alpha", raw_field("agent_id", '"\\udfff"'))
    assert answer["proposal_id"] == "p-1"
    assert {r["field"] for r in answer["reasons"]} == {"agent_id"}


# ============================================================================ every kind of bytes


@pytest.mark.parametrize("case,payload,code,field", [
    ("empty", b"", "MALFORMED_JSON", None),
    ("invalid utf-8", b'{"proposal_id": "\xff"}', "MALFORMED_JSON", None),
    ("NaN literal", raw_field("limit_price", "NaN"), "VALIDATION_ERROR", "limit_price"),
    ("Infinity literal", raw_field("take_profit", "Infinity"), "VALIDATION_ERROR", "take_profit"),
    ("1e400", raw_field("stop_loss", "1e400"), "VALIDATION_ERROR", "stop_loss"),
    ("a price past MAX_PRICE", raw_field("take_profit", "1.8e306"), "VALIDATION_ERROR", "take_profit"),
    ("10,000-digit int", raw_field("quantity", "1" * 10_000), "MALFORMED_JSON", None),
    ("4,000-digit int", raw_field("quantity", "9" * 4000), "VALIDATION_ERROR", "quantity"),
    ("duplicate key", b'{"proposal_id": "p-1", "quantity": 1, "quantity": 2}', "VALIDATION_ERROR", "quantity"),
    ("array", b"[1, 2]", "MALFORMED_JSON", None),
    ("surrogate in a key", b'{"proposal_id": "p-1", "k\\ud800": 1}', "VALIDATION_ERROR", None),
    ("surrogate in a nested string", raw_field("symbol", '["\\udc00"]'), "VALIDATION_ERROR", "symbol.0"),
    ("proposal_id not a string", raw_field("proposal_id", "123"), "VALIDATION_ERROR", "proposal_id"),
    ("agent_id not a string", raw_field("agent_id", "[1]"), "VALIDATION_ERROR", "agent_id"),
    ("oversized", b'{"pad": "' + b"x" * 70_000 + b'"}', "PAYLOAD_TOO_LARGE", None),
])
async def test_each_hostile_payload_gets_one_typed_invalid_answer(
        rig: Rig, case: str, payload: bytes, code: str, field: str | None) -> None:
    answer = await only_answer(rig, "alpha", payload)
    codes = {r["code"] for r in answer["reasons"]}
    assert code in codes, (case, answer["reasons"])
    if field is not None:
        assert field in {r["field"] for r in answer["reasons"]}, (case, answer["reasons"])
    assert not rig.proposals


@pytest.mark.parametrize("agent", ["a b", "bad!agent", "ünïcode", "", "x" * 65, "y" * 5000])
async def test_an_invalid_topic_agent_id_is_answered_on_its_own_topic_and_logged(
        rig: Rig, agent: str) -> None:
    with capture_logs() as logs:
        answer = await only_answer(rig, agent, json.dumps(proposal_json()).encode())
    assert "agent_id" in {r["field"] for r in answer["reasons"]}
    (line,) = [e for e in logs if e["event"] == "proposal_topic_invalid"]
    assert line["code"] == "INVALID_AGENT_ID" and line["length"] == len(agent)


async def test_the_seeded_corpus_each_case_answered_once_none_approved(rig: Rig) -> None:
    """2,000 cases of the e2e corpus in-process: an `invalid` answer from the bridge, or the
    proposal handed to the gate (which answers it), never both, never neither."""
    with capture_logs() as logs:
        for case in corpus(2000, seed=3):
            before = len(rig.proposals)
            answers = await rig.take(case.agent, case.payload)
            to_gate = rig.proposals[before:]
            assert len(answers) + len(to_gate) == 1, (case.index, case.kind, answers, to_gate)
            if case.expect == "invalid":
                assert answers, (case.index, case.kind, to_gate)
            elif case.expect == "rejected":
                assert to_gate, (case.index, case.kind, answers)
            for a in answers:
                RiskDecision.model_validate(a)
                assert a["verdict"] == Verdict.INVALID.value and a["agent_id"] == case.agent
    failed = [e for e in logs if e["event"] in ("mqtt_inbound_failed", "proposal_unparsed",
                                                 "decision_not_recorded")]
    assert not failed, failed[:3]


async def test_the_bridge_answers_even_what_no_check_foresaw(rig: Rig, monkeypatch) -> None:
    def broken(*_a: Any) -> Any:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(rig.bridge, "parse_proposal", broken)
    with capture_logs() as logs:
        answer = await only_answer(rig, "alpha", b"{}")
    assert "RuntimeError" in answer["reasons"][0]["message"]
    assert [e for e in logs if e["event"] == "proposal_unparsed"][0]["code"] == "INTERNAL"


def test_corpus_is_deterministic_and_correlatable() -> None:
    a, b = corpus(500, seed=9), corpus(500, seed=9)
    assert a == b
    assert len({c.agent for c in a}) == 500
    assert corpus(50, seed=1) != corpus(50, seed=2)


async def test_intake_stays_responsive(rig: Rig) -> None:
    """A valid proposal right after the worst payloads still reaches the gate."""
    for payload in (b"[" * 5000, raw_field("quantity", "1" * 10_000), b"\xed\xa0\x80"):
        await rig.take("alpha", payload)
    await rig.take("alpha", json.dumps(proposal_json(proposal_id="after")).encode())
    await asyncio.sleep(0)
    assert [p.proposal_id for p in rig.proposals] == ["after"]
