"""The IB pacer and placement truth against the paper TWS over a real socket (issue 8, 1-2).

(a) a burst far above 50 requests/s (contract resolutions, what-ifs, quotes, brackets) makes
    the paper TWS (default pacing: 50 messages per client per second) answer no error 100;
(b) an ack that never comes with the connection up is not success: IB is asked what it has,
    a bracket missing its stop is cancelled and the PlacementError names the legs found;
    a bracket whose acks were only muted is all there and is reported placed;
(c) a refused stop leg leaves nothing live and the placement failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bracketgate.bus.errors import PlacementError
from tests.fixtures.ib_broker import (DEAD, Rig, execution_rig, legs_at_ib, proposal,
                                      until_none_live)

pytestmark = pytest.mark.ib

@pytest.fixture
async def rig(paper_tws) -> AsyncIterator[Rig]:
    async with execution_rig(paper_tws, client_id=11) as r:
        yield r


# --------------------------------------------------------------------------- (a) pacing


async def test_a_burst_far_above_50_per_s_gets_no_error_100(paper_tws, rig):
    broker = rig.broker
    aapl = await broker.resolve_contract(proposal("x"))
    assert aapl is not None
    known = ["MSFT", "TSLA", "SPY", "NVDA", "AMZN"]
    jobs: list[Any] = []
    # contract resolutions: 40 unknown symbols (each one request, answered 200) + 5 real ones
    jobs += [broker.resolve_contract(proposal(f"r{i}", symbol=f"ZZ{i}")) for i in range(40)]
    jobs += [broker.resolve_contract(proposal(f"k{s}", symbol=s)) for s in known]
    # 80 what-ifs
    b = await rig.bracket(proposal("w"))
    jobs += [broker.what_if(b) for _ in range(80)]
    # brackets far below the market (they rest): 10 x 3 legs
    brackets = [await rig.bracket(proposal(f"burst-{i}", limit_price=150.0 + i, take_profit=260.0,
                                           stop_loss=140.0)) for i in range(10)]
    jobs += [rig.execution.place(x) for x in brackets]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    # quotes for every real symbol (one reqMktData each)
    for s in known:
        c = broker.cached_contract(proposal(f"q{s}", symbol=s))
        assert c is not None
        await broker.ensure_quote(c)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    placed = results[-10:]
    assert all(r.ok for r in placed), [r for r in placed if not r.ok][:2]
    health = await paper_tws.get("/health")
    assert health["pacingErrors"] == 0 and health["pacingDropped"] == 0, health
    me = next(c for c in health["clients"] if c["clientId"] == 11)
    assert me["peakPerWindow"] <= 50
    # the pacer counted every message that left, and more than 50/s were asked for
    assert broker.pacer.stats.sent >= 40 + 5 + 80 + 30 + 5
    assert broker.pacer.stats.peak_per_s <= broker.pacer.burst + broker.pacer.rate


# --------------------------------------------------------------------------- (b) ack truth


async def test_an_ack_that_never_comes_is_checked_at_ib_and_a_stopless_bracket_cancelled(paper_tws, rig):
    """The stop leg is lost on its way (IB never sees it): entry and take-profit sit at IB,
    untransmitted. That is not a placed bracket: PlacementError naming what IB has, and
    nothing of it stays live."""
    await paper_tws.post("/ack_hold", {"orderRef": "lost-1", "orderType": "STP", "mode": "lose"})
    with pytest.raises(PlacementError) as info:
        await rig.broker.place_bracket(await rig.bracket(proposal("lost-1")))
    msg = str(info.value)
    assert "entry" in msg and "take_profit" in msg and "missing stop_loss" in msg, msg
    assert "PreSubmitted" in msg, msg
    legs = await until_none_live(paper_tws, "lost-1")
    assert len(legs) == 2 and {o["orderType"] for o in legs} == {"LMT"}
    assert (await paper_tws.get("/health"))["lostOrders"] == 1


async def test_a_lost_stop_through_the_execution_agent_is_a_failed_placement(paper_tws, rig):
    await paper_tws.post("/ack_hold", {"orderRef": "lost-2", "orderType": "STP", "mode": "lose"})
    res = await rig.execution.place(await rig.bracket(proposal("lost-2")))
    assert not res.ok
    assert "missing stop_loss" in (res.error or "")
    await until_none_live(paper_tws, "lost-2")
    assert rig.execution.placed_ids("lost-2") is None


async def test_muted_acks_with_all_three_legs_at_ib_is_a_placed_bracket(paper_tws, rig):
    """IB took every leg but never pushed their status: asking IB finds all three."""
    await paper_tws.post("/ack_hold", {"orderRef": "mute-1", "orderType": "STP", "mode": "mute"})
    ids = await rig.broker.place_bracket(await rig.bracket(proposal("mute-1")))
    assert ids.entry and ids.take_profit and ids.stop_loss
    legs = await legs_at_ib(paper_tws, "mute-1")
    assert len(legs) == 3 and not any(o["status"] in DEAD for o in legs)


async def test_existing_bracket_never_reports_order_id_zero(paper_tws, rig):
    await paper_tws.post("/ack_hold", {"orderRef": "lost-3", "orderType": "STP", "mode": "lose"})
    with pytest.raises(PlacementError):
        await rig.broker.place_bracket(await rig.bracket(proposal("lost-3")))
    assert rig.broker.existing_bracket("lost-3") is None       # two legs: not a bracket
    assert set(rig.broker.bracket_legs("lost-3")) == {"entry", "take_profit"}


# --------------------------------------------------------------------------- (c) refused stop


async def test_a_refused_stop_leaves_nothing_live_and_the_placement_failed(paper_tws, rig):
    res = await rig.execution.place(await rig.bracket(proposal("stop-1", stop_loss=190.003)))
    assert not res.ok and res.code == 110
    legs = await until_none_live(paper_tws, "stop-1")
    assert legs   # IB saw the legs, and none is working
    assert rig.execution.placed_ids("stop-1") is None


async def test_a_placement_past_the_governors_deadline_is_answered_with_what_ib_took(
        paper_tws, rig):
    """The governor's placement deadline (0.1 s) passes while IB is taking the legs (acks muted:
    the adapter asks IB after its 0.5 s ack timeout). The decision must say what IB has: all
    three legs, so approved with their ids — not a PLACEMENT_FAILED with a live bracket."""
    from bracketgate.agents.portfolio import PortfolioMonitor
    from bracketgate.agents.risk import RiskGovernor
    from bracketgate.bus.messages import Verdict
    from bracketgate.core.clock import SYSTEM_CLOCK
    from tests.unit.riskkit import open_limits

    await paper_tws.post("/ack_hold", {"orderRef": "slow-1", "orderType": "STP", "mode": "mute"})
    gov = RiskGovernor(open_limits(placement_timeout_s=0.1, price_bands=False), SYSTEM_CLOCK,
                       contract_info=rig.broker.cached_contract)
    gov.attach(rig.bus)
    monitor = PortfolioMonitor(rig.bus, rig.broker)
    p = proposal("slow-1")
    await rig.broker.resolve_contract(p)
    gov.on_snapshot(monitor.build())
    d = await gov.handle_proposal(p)
    legs = await legs_at_ib(paper_tws, "slow-1")
    assert len(legs) == 3 and not any(o["status"] in DEAD for o in legs)
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert (d.order_ids.entry, d.order_ids.take_profit, d.order_ids.stop_loss) == tuple(
        sorted(o["orderId"] for o in legs))
