"""Start-up recovery from the journal (core/recovery.py) with a real SQLite journal."""

from __future__ import annotations

from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import DenialCode, Leg, Reason, RiskDecision, Side, Verdict
from bracketgate.core.recovery import recover_from_journal
from tests.unit.riskkit import fill, governor, proposal


async def test_decisions_fills_and_undecided_come_back(tmp_path):
    gov, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        decided, refused, waiting = proposal("d1"), proposal("o1"), proposal("u1")
        for p in (decided, refused, waiting):
            await j.record("proposal", payload=p)
        first = RiskDecision(proposal_id="d1", agent_id="a1", verdict=Verdict.REJECTED, ts=clock.now(),
                             reasons=[Reason(code=DenialCode.MAX_ORDER_QUANTITY, message="m")])
        await j.record("decision", payload=first)
        # the bridge's own OVERLOADED refusal is no decision of the gate's
        await j.record("decision", payload=RiskDecision(
            proposal_id="o1", agent_id="a1", verdict=Verdict.REJECTED, ts=clock.now(),
            reasons=[Reason(code=DenialCode.OVERLOADED, message="intake queue full")]))
        await j.record("fill", payload=fill(decided, clock, leg=Leg.ENTRY))
        await j.record("fill", payload=fill(decided, clock, leg=Leg.TAKE_PROFIT).model_copy(
            update={"exec_id": "x-tp", "side": Side.SELL, "realized_pnl": 42.5}))

        undecided = (await recover_from_journal(j, gov, clock)).undecided

    assert gov.decision_for("d1") == first                    # a repeat gets the first decision
    assert gov.decision_for("o1") is None                     # a retry is decided afresh
    assert {p.proposal_id for p in undecided} == {"o1", "u1"}
    assert gov.summary()["agent_realized"] == {"a1": 42.5}     # fills attributed to the agent again


async def test_undelivered_decisions_and_fills(tmp_path):
    gov, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        p1, p2 = proposal("a"), proposal("b")
        for pid in ("a", "b"):
            await j.record("decision", payload=RiskDecision(proposal_id=pid, agent_id="a1",
                                                            verdict=Verdict.APPROVED, ts=clock.now()))
        await j.record("ack", proposal_id="a", agent_id="a1", payload={"delivered": "decision"})
        f1 = fill(p1, clock, exec_id="e1")
        f2 = fill(p2, clock, exec_id="e2")
        await j.record("fill", payload=f1)
        await j.record("fill", payload=f2)
        await j.record("ack", proposal_id="b", agent_id="a1", payload={"delivered": "fill", "exec_id": "e2"})
        recovered = await recover_from_journal(j, gov, clock)
        assert [d.proposal_id for d in recovered.undelivered_decisions] == ["b"]
        assert [f.exec_id for f in recovered.undelivered_fills] == ["e1"]
