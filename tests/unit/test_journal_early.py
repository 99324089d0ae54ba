"""adapters/journal_early.py: a proposal's id look-up is answered before its write commits
(the gate decides while the FULL commit is in flight), and what the gate then writes (an order
intent) is never committed before the proposal."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from pathlib import Path

from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import ApprovedBracket, TradeProposal

PROPOSAL = {"proposal_id": "p-1", "agent_id": "alpha", "symbol": "AAPL", "side": "BUY",
            "quantity": 10, "order_type": "LMT", "limit_price": 175.0, "take_profit": 180.0,
            "stop_loss": 172.5}
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)


def proposal(pid: str) -> TradeProposal:
    return TradeProposal(**PROPOSAL | {"proposal_id": pid})


def write(p: TradeProposal) -> dict:
    return {"kind": "proposal", "proposal_id": p.proposal_id, "agent_id": p.agent_id,
            "payload": p, "durable": True, "once": True}


async def _held_batch(journal: Journal, events: list[dict]) -> tuple[asyncio.Future, threading.Event]:
    """`events` written in a batch whose commit waits for the returned Event: a blocking op
    holds the writer while the write and a second blocking op queue up behind it, so both go
    in its next batch (the write's inserts run, then the batch waits before its COMMIT)."""
    first, second = threading.Event(), threading.Event()
    hold1 = journal._submit(lambda conn: first.wait(10), False)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.05)                    # the writer is inside the first op
    task = loop.create_task(journal.record_many(events))
    await asyncio.sleep(0)                       # the write is queued
    hold2 = journal._submit(lambda conn: second.wait(10), False)
    first.set()
    await hold1
    return task, second


async def test_a_new_id_is_answered_before_its_commit_and_an_intent_commits_after_it(
        tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = proposal("p-new")
        written, release = await _held_batch(journal, [write(p)])
        seen = await asyncio.wait_for(journal.first_seen("p-new"), 5)   # before the commit
        assert seen is not None and seen.decision is None and seen.verdict is None
        assert not written.done()
        # the gate approves: the intent, queued now, cannot commit before the proposal
        intent = asyncio.create_task(journal.record_intent(
            ApprovedBracket(proposal=p, approved_at=T0), {"entry": 1, "take_profit": 2,
                                                          "stop_loss": 3}))
        await asyncio.sleep(0.1)
        assert not intent.done() and not written.done()
        release.set()
        await asyncio.wait_for(intent, 5)
        assert written.done() and isinstance(written.result()[0], int)
        rows = await journal.events()
        kinds = [r["kind"] for r in rows if r["proposal_id"] == "p-new"]
        assert kinds.index("proposal") < kinds.index("intent")
        # answered once early: nothing of it stays in the in-flight or fresh books
        assert "p-new" not in journal._looking and "p-new" not in journal._early
        assert "p-new" not in journal._fresh


async def test_a_known_id_in_flight_is_read_from_sqlite_after_the_commit(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = proposal("p-old")
        await journal.record_many([write(p)])
        await journal.record("decision", proposal_id="p-old", agent_id="alpha",
                             payload={"proposal_id": "p-old", "agent_id": "alpha",
                                      "verdict": "rejected", "reasons": [], "ts": T0.isoformat()})
        written, release = await _held_batch(journal, [write(p)])   # a re-delivery
        look = asyncio.create_task(journal.first_seen("p-old"))
        await asyncio.sleep(0.1)
        assert not look.done()            # not new: its answer is SQLite's, after the commit
        release.set()
        seen = await asyncio.wait_for(look, 5)
        assert seen is not None and seen.verdict == "rejected"
        assert (await written) == [None]  # journaled once


async def test_a_failed_write_answers_ask_sqlite_and_keeps_nothing(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = proposal("p-x")
        bad = {"kind": "note", "proposal_id": object(), "payload": {"n": 1}}   # refused inside
        task = asyncio.create_task(journal.record_many([write(p), bad]))
        try:
            await task
        except Exception:
            pass
        assert task.exception() is not None
        assert journal._looking == {} and journal._early == set()
        assert await journal.first_seen("p-x") is None   # all or none: nothing was written


async def test_nothing_is_placed_for_a_proposal_whose_write_failed(tmp_path: Path) -> None:
    """The gate may decide a proposal while its write is in flight; when that write failed,
    the ExecutionAgent journals the intent (queued behind it), sees it, and sends nothing."""
    from types import SimpleNamespace

    from bracketgate.agents.execution import ExecutionAgent
    from bracketgate.bus.messages import BracketOrderIds

    sent: list[str] = []

    class Broker:
        def allocate_bracket_ids(self) -> BracketOrderIds:
            return BracketOrderIds(entry=11, take_profit=12, stop_loss=13)

        async def place_bracket(self, bracket, ids=None):
            sent.append(bracket.proposal.proposal_id)
            return ids

    async with Journal(tmp_path / "j.sqlite") as journal:
        bad = {"kind": "note", "proposal_id": object(), "payload": {"n": 1}}
        try:
            await journal.record_many([write(proposal("p-x")), bad])
        except Exception:
            pass
        assert journal.not_journaled("p-x") and not journal.not_journaled("p-ok")
        agent = ExecutionAgent(SimpleNamespace(), Broker(), journal=journal)
        res = await agent.place(ApprovedBracket(proposal=proposal("p-x"), approved_at=T0))
        assert not res.ok and "not journaled" in (res.error or "") and sent == []
        (rec,) = [r for r in await journal.intents() if r.proposal_id == "p-x"]
        assert rec.state == "failed"
        # written again (the broker's redelivery), committed: placed as any other
        await journal.record_many([write(proposal("p-x"))])
        assert not journal.not_journaled("p-x")
        res = await agent.place(ApprovedBracket(proposal=proposal("p-ok"), approved_at=T0))
        assert res.ok and sent == ["p-ok"]
