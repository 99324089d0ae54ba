"""Bounds of issue 9: every structure that grows with proposals has a cap, and what falls out
of memory is still answered from the journal; start-up reads only what recovery needs."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from types import SimpleNamespace

from bracketgate.adapters import journal as J
from bracketgate.adapters.ib import _Bounded
from bracketgate.adapters.journal import Journal
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.agents.risk import DecisionMemory
from bracketgate.bus.messages import BracketOrderIds, DenialCode, Reason, RiskDecision, Verdict
from bracketgate.config.limits import RiskLimits
from bracketgate.core.recovery import recover_from_journal
from tests.unit.riskkit import governor, proposal


def _decision(pid: str, clock, verdict=Verdict.REJECTED) -> RiskDecision:
    reasons = [] if verdict is Verdict.APPROVED else [
        Reason(code=DenialCode.MAX_ORDER_QUANTITY, message="m")]
    return RiskDecision(proposal_id=pid, agent_id="a1", verdict=verdict, ts=clock.now(),
                        reasons=reasons)


def test_decision_memory_never_exceeds_its_cap_but_keeps_open_ids():
    _, clock = governor()
    open_ids = {"p3", "p7"}
    mem = DecisionMemory(50, keep=open_ids.__contains__)
    for i in range(5000):
        mem.put(f"p{i}", proposal(f"p{i}"), _decision(f"p{i}", clock))
        assert len(mem) <= 4 * mem.recent + 50
    mem.compact()
    assert len(mem) <= 50 + len(open_ids)
    assert "p3" in mem and "p7" in mem and "p100" not in mem
    assert RiskLimits().max_remembered_decisions <= 10_000     # a hot cache, not a day of ids


def test_bounded_maps_of_the_ib_adapter_forget_the_oldest():
    seen: _Bounded[str, bool] = _Bounded(3)
    for k in "abcde":
        seen[k] = True
    assert list(seen) == ["c", "d", "e"]


def test_every_recovery_query_is_an_index_search_not_a_scan(tmp_path):
    conn = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    J.migrate(conn)
    for name, sql in J.RECOVERY_QUERIES.items():
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?"))]
        assert not any(step.startswith("SCAN") for step in plan), (name, plan)


async def test_recovery_reads_only_past_the_checkpoint_and_still_returns_what_is_open(tmp_path):
    gov, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        for i in range(50):                       # decided and delivered: behind the checkpoint
            await j.record("proposal", payload=proposal(f"old{i}"))
            await j.record("decision", payload=_decision(f"old{i}", clock))
            await j.record("ack", proposal_id=f"old{i}", agent_id="a1",
                           payload={"delivered": "decision"})
        await j.record("proposal", payload=proposal("waiting"))          # never decided
        await j.record("proposal", payload=proposal("unsent"))
        await j.record("decision", payload=_decision("unsent", clock))   # never delivered
        cp = await j.checkpoint_recovery(clock.now() - timedelta(hours=36))
        rs = await j.recovery_set(clock.now() - timedelta(hours=36))
        assert rs.checkpoint == cp and cp > 150            # the delivered ones are behind it
        recovered = await recover_from_journal(j, gov, clock)
        assert [p.proposal_id for p in recovered.undecided] == ["waiting"]
        assert [d.proposal_id for d in recovered.undelivered_decisions] == ["unsent"]
        # delivered now: the next checkpoint passes it, the next start does not publish it again
        await j.record("ack", proposal_id="unsent", agent_id="a1", payload={"delivered": "decision"})
        await j.checkpoint_recovery(clock.now() - timedelta(hours=36))
        again = await recover_from_journal(j, gov, clock)
        assert again.undelivered_decisions == [] and len(again.undecided) == 1
        assert gov.decision_for("old3") is not None        # the newest decisions warm the cache


async def test_compaction_deletes_old_events_but_keeps_what_remembered_ids_need(tmp_path):
    _, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        await j.record("proposal", payload=proposal("kept"))
        await j.record("decision", payload=_decision("kept", clock))
        await j.record("note", payload={"text": "old noise"})
        await j.record("ack", proposal_id="kept", agent_id="a1", payload={"delivered": "decision"})
        clock.advance(20 * 86400)
        counts = await j.compact(clock.now() - timedelta(days=14))
        assert counts["events"] == 2                          # the note and the ack
        seen = await j.first_seen("kept")                     # the id still answers in full
        assert seen is not None and seen.decision is not None and seen.proposal is not None
        await j.prune_ids(clock.now() - timedelta(days=7))
        assert (await j.compact(clock.now() - timedelta(days=14)))["events"] == 2
        assert await j.first_seen("kept") is None
        meta = await j.size()
        assert meta["bytes"] > 0


class _Broker:
    def __init__(self) -> None:
        self.orders: list = []

    def orders_at_ib(self):
        return self.orders


async def test_execution_forgets_closed_brackets_and_prior_placement_still_reads_ib(monkeypatch):
    import bracketgate.agents.execution as ex

    monkeypatch.setattr(ex, "CLOSED_KEEP_S", 0.0)
    broker = _Broker()
    agent = ExecutionAgent(SimpleNamespace(), broker)
    ids = BracketOrderIds(entry=11, take_profit=12, stop_loss=13)
    book = ex.Bracket(proposal_id="p1", agent_id="a1", symbol="AAPL", side=ex.Side.BUY,
                      ids=ids, placed=True)
    for leg in ex.Leg:
        book.status[leg] = "Cancelled"
    agent._track(book)
    broker.orders = [SimpleNamespace(order_ref="p1", order_type=t, status="Cancelled", filled=0,
                                     parent_id=p, order_id=o)
                     for t, p, o in (("LMT", 0, 11), ("LMT", 11, 12), ("STP", 11, 13))]
    assert book.closed
    agent._note_closed("p1")
    assert "p1" not in agent._brackets and 11 not in agent._by_order
    prior = agent.prior_placement(proposal("p1"))
    assert prior is not None and prior.outcome != "placed"    # IB's orders by orderRef answer
    assert agent.max_order_id_in_journal() >= 0
