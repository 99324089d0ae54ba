"""The journal's batched write path: record_many is one operation (one transaction, one commit,
FULL when any event is durable), all or none; `once` writes a proposal once per id, the look-up
inside the write's own transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import TradeProposal

PROPOSAL = {"proposal_id": "p-1", "agent_id": "alpha", "symbol": "AAPL", "side": "BUY",
            "quantity": 10, "order_type": "LMT", "limit_price": 175.0, "take_profit": 180.0,
            "stop_loss": 172.5}


async def test_record_many_is_one_commit_and_full_when_one_is_durable(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        before = dict(journal.stats)
        seqs = await journal.record_many(
            [{"kind": "proposal", "payload": TradeProposal(**PROPOSAL | {"proposal_id": f"p-{i}"}),
              "durable": True} for i in range(50)]
            + [{"kind": "ack", "proposal_id": "p-0", "payload": {"delivered": "decision"}}])
        assert len(seqs) == 51 and seqs == sorted(seqs)
        assert journal.stats["batches"] - before["batches"] == 1
        assert journal.stats["full_commits"] - before["full_commits"] == 1
        rows = await journal.events(kinds="proposal")
        assert [r["proposal_id"] for r in rows] == [f"p-{i}" for i in range(50)]
        assert (await journal.first_seen("p-7")) is not None   # the id row kept in step
        assert await journal.record_many([]) == []


async def test_record_many_is_all_or_none(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        good = {"kind": "note", "payload": {"n": 1}}
        bad = {"kind": "note", "payload": {"n": 2}}
        # the shape the writer refuses inside the transaction: a proposal_id that is not text
        with pytest.raises(Exception):
            await journal.record_many([good, bad | {"proposal_id": object()}])
        with pytest.raises(TypeError):   # refused before anything is queued
            await journal.record_many([good, {"kind": "note", "payload": {"x": object()}}])
        with pytest.raises(ValueError):   # an intent is record_intent()'s
            await journal.record_many([good, bad | {"kind": "intent"}])
        assert await journal.events(kinds="note") == []


async def test_once_writes_a_proposal_once_per_id(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = TradeProposal(**PROPOSAL)
        first = await journal.record("proposal", payload=p, durable=True, once=True)
        again = await journal.record("proposal", payload=p, durable=True, once=True)
        both = await journal.record_many([
            {"kind": "proposal", "payload": p, "durable": True, "once": True},
            {"kind": "proposal", "payload": TradeProposal(**PROPOSAL | {"proposal_id": "p-2"}),
             "durable": True, "once": True},
            {"kind": "proposal", "payload": TradeProposal(**PROPOSAL | {"proposal_id": "p-2"}),
             "durable": True, "once": True}])
        assert isinstance(first, int) and again is None
        assert both[0] is None and isinstance(both[1], int) and both[2] is None
        rows = await journal.events(kinds="proposal")
        assert [r["proposal_id"] for r in rows] == ["p-1", "p-2"]
        # without `once` (the default) every record is written, as before
        await journal.record("proposal", payload=p, durable=True)
        assert len(await journal.events(kinds="proposal")) == 3


async def test_a_new_id_is_looked_up_without_a_writer_round_trip(tmp_path: Path) -> None:
    """The gate asks `first_seen` for every new proposal_id: an id this journal just wrote for
    the first time is answered in process (no operation queued behind the FULL commits); a
    decision for it, or an id it knew before, goes to SQLite as always."""
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = TradeProposal(**PROPOSAL)
        await journal.record("proposal", payload=p, durable=True, once=True)
        ops = journal.stats["ops"]
        seen = await journal.first_seen("p-1")
        assert journal.stats["ops"] == ops                       # no round trip
        assert seen is not None and seen.decision is None and seen.agent_id == "alpha"
        again = await journal.first_seen("p-1")                  # the second time: SQLite
        assert journal.stats["ops"] == ops + 1
        assert again is not None and again.first_seen == seen.first_seen

        await journal.record("proposal", payload=TradeProposal(**PROPOSAL | {"proposal_id": "p-2"}),
                             durable=True, once=True)
        await journal.record("decision", proposal_id="p-2", agent_id="alpha", payload={
            "proposal_id": "p-2", "agent_id": "alpha", "verdict": "rejected", "reasons": [],
            "ts": "2026-12-01T00:00:00Z"})
        decided = await journal.first_seen("p-2")                 # not the stale "undecided"
        assert decided is not None and decided.decision is not None

        await journal.record("proposal", payload=p, durable=True, once=True)   # known id
        assert await journal.first_seen("p-1") is not None
        assert journal.stats["ops"] > ops + 1
