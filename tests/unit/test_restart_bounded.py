"""Start-up on a long journal reads only what recovery needs (issue 9): the per-agent attribution
comes from its checkpointed sum (adapters/journal_attrib.py) plus the fills since, never every fill
of the window again; intents only when live or undecided; and the result is the same as one pass
over every event (core/recovery.py `_recover_from_events`, the reference)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from bracketgate.adapters import journal as J
from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import Fill, Leg, Side
from bracketgate.core import recovery
from bracketgate.core.recovery import recover_from_journal
from tests.unit.riskkit import governor, proposal


def _fill(i: int, clock, *, agent: str, side: Side, realized: float | None = None,
          sec_type: str | None = None, con_id: int = 265598) -> Fill:
    return Fill(proposal_id=f"p{i}", agent_id=agent, order_id=1000 + i, leg=Leg.ENTRY,
                exec_id=f"e{i}", symbol="AAPL", con_id=con_id, side=side, quantity=1 + i % 3,
                price=100.0 + i, realized_pnl=realized, ts=clock.now(), sec_type=sec_type)


async def _fills(j: Journal, clock, start: int, n: int) -> None:
    for i in range(start, start + n):
        f = _fill(i, clock, agent=f"a{i % 2}", side=Side.BUY if i % 3 else Side.SELL,
                  realized=(i * 1.5 - 20) if i % 4 else None,
                  sec_type="BAG" if i % 17 == 0 else None, con_id=265598 + i % 3)
        await j.record("fill", payload=f)
        await j.record("ack", proposal_id=f.proposal_id, agent_id=f.agent_id,
                       payload={"delivered": "fill", "exec_id": f.exec_id})


def _attribution(gov) -> tuple[dict, dict, dict]:
    return (dict(gov._agent_realized), {b: dict(p) for b, p in gov._agent_positions.items()},
            dict(gov._last_price))


def _same(a, b) -> None:
    assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
    for k in a[0]:
        assert a[0][k] == pytest.approx(b[0][k], abs=1e-6)
    for k in a[1]:
        assert a[1][k] == pytest.approx(b[1][k], abs=1e-6)
    assert a[2] == b[2]


async def _reference(j: Journal, clock):
    ref, _ = governor(clock=clock)
    await recovery._recover_from_events(j, ref, clock)
    return _attribution(ref)


async def test_restart_reads_only_the_fills_since_the_checkpoint_and_attributes_the_same(tmp_path):
    _, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        await _fills(j, clock, 0, 120)
        gov, _ = governor(clock=clock)
        first = await j.recovery_set(clock.now() - recovery.LOOKBACK)
        assert first.attribution.full and first.attribution.read == 120   # an older journal: once
        await j.checkpoint_recovery(clock.now() - recovery.LOOKBACK)
        clock.advance(60)
        await _fills(j, clock, 120, 3)
        rs = await j.recovery_set(clock.now() - recovery.LOOKBACK)
        assert not rs.attribution.full and rs.attribution.read == 3   # not the 123 of the window
        assert rs.attribution.fills == 123
        await recover_from_journal(j, gov, clock)
        _same(_attribution(gov), await _reference(j, clock))
        assert gov._agent_realized["a1"] != 0 and gov._agent_positions

        # the window moves: only the fills that left it are read (and taken out of the sum)
        clock.advance(recovery.LOOKBACK.total_seconds() - 30)       # the first 120 left it
        rs = await j.recovery_set(clock.now() - recovery.LOOKBACK)
        assert rs.attribution.read == 120 and rs.attribution.fills == 3
        moved, _ = governor(clock=clock)
        await recover_from_journal(j, moved, clock)
        _same(_attribution(moved), await _reference(j, clock))
        again = await j.recovery_set(clock.now() - recovery.LOOKBACK)
        assert again.attribution.read == 0                          # stored: nothing to read

        # down longer than the window: summed anew from what the window holds (here nothing)
        clock.advance(recovery.LOOKBACK.total_seconds() + 3600)
        await _fills(j, clock, 200, 2)
        late = await j.recovery_set(clock.now() - recovery.LOOKBACK)
        assert late.attribution.full and late.attribution.fills == 2
        fresh, _ = governor(clock=clock)
        await recover_from_journal(j, fresh, clock)
        _same(_attribution(fresh), await _reference(j, clock))


async def test_an_undelivered_fill_published_again_is_not_counted_twice(tmp_path):
    _, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        await _fills(j, clock, 1, 4)
        lost = _fill(50, clock, agent="a1", side=Side.BUY, realized=-7.0)
        await j.record("fill", payload=lost)                        # no delivery record
        gov, _ = governor(clock=clock)
        got = await recover_from_journal(j, gov, clock)
        assert [f.exec_id for f in got.undelivered_fills] == ["e50"]
        before = _attribution(gov)
        gov.on_fill(got.undelivered_fills[0])                       # core/app.py republishes it
        assert _attribution(gov) == before


async def test_start_up_loads_only_live_or_undecided_intents(tmp_path):
    gov, clock = governor()
    async with Journal(tmp_path / "j.sqlite", clock) as j:
        for i in range(40):                                         # finished, decided: not read
            p = proposal(f"done{i}")
            await j.record("proposal", payload=p)
            await j.record_intent({"proposal": p.model_dump(mode="json")}, (10 + 3 * i,
                                  11 + 3 * i, 12 + 3 * i))
            await j.mark_intent(p.proposal_id, "sent")
            await j.mark_intent(p.proposal_id, "done")
            await j.record("decision", payload={"proposal_id": p.proposal_id, "agent_id": "a1",
                                                "verdict": "approved", "ts": clock.now()})
        live = proposal("live")
        await j.record("proposal", payload=live)
        await j.record_intent({"proposal": live.model_dump(mode="json")}, (500, 501, 502))
        crashed = proposal("crashed")                               # intent, never a decision
        await j.record("proposal", payload=crashed)
        await j.record_intent({"proposal": crashed.model_dump(mode="json")}, (600, 601, 602))
        await j.mark_intent("crashed", "failed")
        loaded = await j.intents_to_load(clock.now())
        assert [r.proposal_id for r in loaded] == ["live", "crashed"]
        assert await j.max_order_id() == 602


def test_start_up_queries_are_index_searches(tmp_path):
    conn = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    J.migrate(conn)
    live = J.INTENTS_LIVE.format(marks="?, ?, ?, ?")
    for name, sql in {**J.RECOVERY_QUERIES, "intents_live": live,
                      "intents_undecided": J.INTENTS_UNDECIDED}.items():
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?"))]
        # the one scan allowed: the partial index of undecided ids (only those rows are in it)
        assert not any(step.startswith("SCAN") and "proposal_ids_undecided" not in step
                       for step in plan), (name, plan)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + J._EXEC_IDS_FROM_INDEX)]
    assert plan == ["SCAN events USING INDEX events_fill_exec"], plan   # the fills' index only
