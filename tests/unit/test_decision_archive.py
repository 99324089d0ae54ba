"""The governor's archived decisions (agents/decision_archive.py, DecisionMemory in agents/risk.py):
a repeat answered from the archive is the decision first published, byte for byte (the bytes the
daemon's bridge publishes: adapters/journal.py `encode`, core/app.py `_journal_decision`), and the
archive is compact."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from bracketgate.adapters.journal import encode as encode_payload
from bracketgate.agents.decision_archive import pack, unpack
from bracketgate.agents.risk import DecisionMemory
from bracketgate.agents.rules import deny
from bracketgate.bus.messages import (
    BracketOrderIds,
    DenialCode,
    RiskDecision,
    TradingState,
    Verdict,
    WorstCase,
)
from tests.unit.riskkit import governor, open_limits, proposal, snapshot

# every check of a soak's rejection fails: five reasons, each with its limit and value
FIVE = dict(max_position_units=1000.0, max_order_quantity=1000, max_order_notional=1e4,
            max_position_notional=1e4, per_trade_loss_limit=10.0)


def published(decision: RiskDecision) -> bytes:
    """What the daemon publishes for a decision (the bytes it journals)."""
    return encode_payload(decision).text.encode()


def archived(memory: DecisionMemory, pid: str) -> RiskDecision:
    assert pid in memory._cold, "the decision was not archived"
    seen = memory.get(pid)
    assert seen is not None
    return seen[1]


@pytest.mark.parametrize("text", [
    "", "{}", '{"proposal_id":"p-1","reasons":[]}', '{"message":"caf\u00e9 \u2014 \u6f22"}',
    "x" * 10_000,
])
def test_pack_gives_back_exactly_the_text(text: str) -> None:
    assert unpack(pack(text)) == text


def decisions() -> list[RiskDecision]:
    ts = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
    gov, clock = governor(open_limits(**FIVE))
    snap = snapshot(clock)
    gov.on_snapshot(snap)
    rejected = gov.evaluate(proposal("rej-5", qty=100000, sl=99.0), snap)
    assert len(rejected.reasons) == 5
    approved = gov.evaluate(proposal("appr"), snap)
    assert approved.verdict is Verdict.APPROVED
    placed = approved.model_copy(update={"order_ids": BracketOrderIds(
        entry=101, take_profit=102, stop_loss=103)})
    odd = RiskDecision(
        proposal_id="odd-1", agent_id="a1", verdict=Verdict.REJECTED, ts=ts,
        trading_state=TradingState.REDUCING, reasons=[
            deny(DenialCode.BRACKET_FINISHED_AT_IB, value="finished",
                 detail="IB traded this bracket before: LMT Filled filled 3; STP Cancelled \u2014 caf\u00e9"),
            deny(DenialCode.DAILY_LOSS_LIMIT, -2000.0, -2150.33333333333, field="daily"),
            deny(DenialCode.MAX_ORDER_NOTIONAL, math.inf, 1e-7)],
        worst_case=WorstCase(loss=12.345678901234, bound="structure"))
    return [rejected, approved, placed, odd]


@pytest.mark.parametrize("i", range(4))
def test_an_archived_decision_is_published_as_it_first_was(i: int) -> None:
    """Fails if the archive's form of a decision diverges from the one published."""
    d = decisions()[i]
    first = published(d)
    memory = DecisionMemory(10, keep=lambda _: False)
    memory.resize(10)
    memory.recent = 0
    memory.put(d.proposal_id, proposal(d.proposal_id), d)
    memory.compact()
    again = archived(memory, d.proposal_id)
    assert again is not d
    assert published(again) == first
    assert again == d


def test_a_repeat_past_the_recent_objects_gets_the_published_bytes_back() -> None:
    """The idempotent replay through the governor: the same proposal_id, archived meanwhile,
    gets the same decision, byte for byte as published; other content is a duplicate."""
    gov, clock = governor(open_limits(**FIVE))
    snap = snapshot(clock)
    gov.on_snapshot(snap)
    first = gov.evaluate(proposal("old", qty=100000, sl=99.0), snap)
    bytes_out = published(first)
    for i in range(DecisionMemory.RECENT + 10):
        gov.evaluate(proposal(f"n{i}", qty=100000, sl=99.0), snap)
    clock.advance(1.0)
    gov.on_snapshot(snapshot(clock))
    assert "old" in gov._decisions._cold
    again = gov.evaluate(proposal("old", qty=100000, sl=99.0), snap)
    assert again is not first
    assert published(again) == bytes_out
    dup = gov.evaluate(proposal("old", qty=3), snap)
    assert [r.code for r in dup.reasons] == [DenialCode.DUPLICATE_PROPOSAL]


def test_the_archive_is_compact() -> None:
    """A soak's rejection (five reasons) and its proposal archived in well under 0.4 KB (the
    JSON text alone is ~1.2 KB); the newest RECENT stay objects."""
    gov, clock = governor(open_limits(**FIVE, max_remembered_decisions=4 * DecisionMemory.RECENT))
    snap = snapshot(clock)
    gov.on_snapshot(snap)
    for i in range(2 * DecisionMemory.RECENT):
        gov.evaluate(proposal(f"soak-{i}-abcdef", qty=100000, sl=99.0), snap)
    gov.on_snapshot(snap)
    memory = gov._decisions
    assert len(memory._hot) == DecisionMemory.RECENT and len(memory._cold) == DecisionMemory.RECENT
    sizes = [len(p) + len(d) for p, d in memory._cold.values()]
    text = sum(len(unpack(p)) + len(unpack(d)) for p, d in memory._cold.values())
    assert max(sizes) < 400 and text / sum(sizes) > 4


def test_a_placement_update_of_an_archived_decision_is_archived_as_published() -> None:
    memory = DecisionMemory(10, keep=lambda _: False)
    memory.recent = 0
    d = decisions()[1]
    memory.put(d.proposal_id, proposal(d.proposal_id), d)
    memory.compact()
    placed = d.model_copy(update={"order_ids": BracketOrderIds(entry=7, take_profit=8,
                                                               stop_loss=9)})
    memory.replace(placed)
    assert published(archived(memory, d.proposal_id)) == published(placed)
    first, _ = memory.get(d.proposal_id)
    assert isinstance(first, str) and DecisionMemory.same(first, proposal(d.proposal_id))
