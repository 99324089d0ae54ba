"""A placement whose ack is lost and whose check at IB gets no (complete) answer (issue 9, task P).

IB is asked what it has for a bracket whose acks did not come (adapters/ib_truth.py). An answer
that does not come in time is UNKNOWN, never "IB has nothing": every leg not known dead is
cancelled and the placement fails (ACK_TIMEOUT), so no leg of it stays at IB.

(a) the stop is lost, and so is the answer to reqOpenOrders: entry and take-profit are at IB,
    untransmitted; the adapter must cancel them (before the fix: marked "absent", left there);
(b) the answer to reqCompletedOrders comes after the request timeout;
(c) two brackets lose their stops at once: both checks ask IB together (the client library keys
    its open-orders request by name: a second request took the first's answer);
(d) the check asks IB only for this orderRef's completed orders: the others are never decoded
    into the library's books, even when the answer is late;
(e) through the governor: the decision is a typed rejection, the reservation is released, and
    IB has no working order of the proposal;
(f) a cancel lost on its way is noticed (IB still lists the order) and sent again, also when
    the connection drops before the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bracketgate.bus.errors import PlacementError
from tests.fixtures.ib_broker import Rig, execution_rig, proposal, until_none_live

pytestmark = pytest.mark.ib

@pytest.fixture
async def rig(paper_tws) -> AsyncIterator[Rig]:
    async with execution_rig(paper_tws, client_id=12, request_timeout=1.0) as r:
        yield r


async def lose_stop(paper_tws, ref: str) -> None:
    await paper_tws.post("/ack_hold", {"orderRef": ref, "orderType": "STP", "mode": "lose"})


# --------------------------------------------------------------------------- (a), (b)


async def test_a_lost_open_orders_answer_is_unknown_and_the_legs_at_ib_are_cancelled(
        paper_tws, rig):
    await lose_stop(paper_tws, "unk-1")
    await paper_tws.post("/answer_hold", {"request": "open_orders", "mode": "lose"})
    with pytest.raises(PlacementError) as info:
        await rig.broker.place_bracket(await rig.bracket(proposal("unk-1")))
    assert info.value.code == "ACK_TIMEOUT", info.value
    legs = await until_none_live(paper_tws, "unk-1")
    assert len(legs) == 2 and {o["orderType"] for o in legs} == {"LMT"}
    assert (await paper_tws.get("/health"))["answersLost"] == 1
    # nothing was taken as "absent at IB" on an answer that never came
    assert not rig.broker._absent


async def test_a_late_completed_orders_answer_is_unknown_and_nothing_stays_live(paper_tws, rig):
    await lose_stop(paper_tws, "unk-2")
    await paper_tws.post("/answer_hold", {"request": "completed_orders", "mode": "delay",
                                          "seconds": 2.5})
    with pytest.raises(PlacementError) as info:
        await rig.broker.place_bracket(await rig.bracket(proposal("unk-2")))
    assert info.value.code == "ACK_TIMEOUT"
    await until_none_live(paper_tws, "unk-2")
    assert not rig.broker._absent


async def test_the_execution_agent_fails_the_placement_and_nothing_stays_at_ib(paper_tws, rig):
    await lose_stop(paper_tws, "unk-3")
    await paper_tws.post("/answer_hold", {"request": "open_orders", "mode": "lose"})
    res = await rig.execution.place(await rig.bracket(proposal("unk-3")))
    assert not res.ok and rig.execution.placed_ids("unk-3") is None
    await until_none_live(paper_tws, "unk-3")


# --------------------------------------------------------------------------- (c)


async def test_two_brackets_checked_at_once_both_leave_nothing_at_ib(paper_tws, rig):
    """The first check's open-orders answer is a little slow (0.4 s, well within the request
    timeout), so the second check asks while it is pending: the library's open-orders future of
    the first was replaced by the second's, the first timed out and took its legs as absent."""
    for ref in ("two-1", "two-2"):
        await lose_stop(paper_tws, ref)
    await paper_tws.post("/answer_hold", {"request": "open_orders", "mode": "delay",
                                          "seconds": 0.4})
    b1, b2 = await rig.bracket(proposal("two-1")), await rig.bracket(proposal("two-2"))
    results = await asyncio.gather(rig.broker.place_bracket(b1), rig.broker.place_bracket(b2),
                                   return_exceptions=True)
    assert all(isinstance(r, PlacementError) for r in results), results
    for ref in ("two-1", "two-2"):
        legs = await until_none_live(paper_tws, ref)
        assert len(legs) == 2


# --------------------------------------------------------------------------- (d)


async def test_the_check_decodes_only_this_bracket_s_completed_orders(paper_tws, rig):
    """Ten brackets placed and cancelled (completed at IB), then a lost stop whose check gets
    IB's completed orders after the request timeout: neither in time nor late does that answer
    bring any of the ten into the library's books."""
    broker = rig.broker
    for i in range(10):
        ids = await broker.place_bracket(await rig.bracket(proposal(f"old-{i}", limit_price=150.0)))
        await broker.cancel_order(ids.entry)
    for i in range(10):
        await until_none_live(paper_tws, f"old-{i}")
    # the old ones are in the library's book now; pruned, as the retention does after its grace
    book, perms = broker.ib.wrapper.trades, broker.ib.wrapper.permId2Trade
    for key in [k for k, t in book.items() if (t.order.orderRef or "").startswith("old-")]:
        perms.pop(book.pop(key).order.permId, None)
    before = len(book)
    await lose_stop(paper_tws, "unk-4")
    await paper_tws.post("/answer_hold", {"request": "completed_orders", "mode": "delay",
                                          "seconds": 1.5})
    with pytest.raises(PlacementError):
        await broker.place_bracket(await rig.bracket(proposal("unk-4")))
    await until_none_live(paper_tws, "unk-4")

    async def late_answer_read() -> None:
        while "completedOrders" in broker.ib.wrapper._futures:
            await asyncio.sleep(0.05)  # the late answer's end pops the library's request
    await asyncio.wait_for(late_answer_read(), 10)
    refs = {t.order.orderRef for t in broker.ib.wrapper.trades.values()}
    assert not any(r.startswith("old-") for r in refs), sorted(refs)
    assert len(broker.ib.wrapper.trades) <= before + 3
    assert not any((t.order.orderRef or "").startswith("old-")
                   for t in broker.ib.wrapper.permId2Trade.values())


# --------------------------------------------------------------------------- (e)


async def test_the_governor_rejects_with_a_typed_code_releases_and_leaves_nothing_at_ib(
        paper_tws, rig):
    from bracketgate.agents.portfolio import PortfolioMonitor
    from bracketgate.agents.risk import RiskGovernor
    from bracketgate.bus.messages import DenialCode, Verdict
    from bracketgate.core.clock import SYSTEM_CLOCK
    from tests.unit.riskkit import open_limits

    await lose_stop(paper_tws, "gov-1")
    await paper_tws.post("/answer_hold", {"request": "open_orders", "mode": "lose"})
    gov = RiskGovernor(open_limits(placement_timeout_s=10.0, price_bands=False), SYSTEM_CLOCK,
                       contract_info=rig.broker.cached_contract)
    gov.attach(rig.bus)
    monitor = PortfolioMonitor(rig.bus, rig.broker)
    p = proposal("gov-1")
    await rig.broker.resolve_contract(p)
    gov.on_snapshot(monitor.build())
    d = await gov.handle_proposal(p)
    assert d.verdict is Verdict.REJECTED, d
    assert [r.code for r in d.reasons] == [DenialCode.PLACEMENT_FAILED], d.reasons
    assert "did not acknowledge" in str(d.reasons[0].value), d.reasons
    assert "unknown" in str(d.reasons[0].value), d.reasons
    assert "gov-1" not in gov.ledger            # the reservation is released
    legs = await until_none_live(paper_tws, "gov-1")
    assert len(legs) == 2


# --------------------------------------------------------------------------- (f)


async def cancel_lost_on_its_way(paper_tws, rig: Rig, ref: str) -> None:
    """A bracket `ref` at IB whose entry's cancel is sent and lost (the watch checks at 0.5 s)."""
    rig.broker.cancels.verify_s = 0.5
    ids = await rig.broker.place_bracket(await rig.bracket(proposal(ref, limit_price=150.0)))
    await paper_tws.post("/answer_hold", {"request": "cancel", "mode": "lose", "orderRef": ref})
    assert await rig.broker.cancel_order(ids.entry)


async def test_a_lost_cancel_is_noticed_at_ib_and_sent_again(paper_tws, rig):
    broker = rig.broker
    await cancel_lost_on_its_way(paper_tws, rig, "cxl-1")
    legs = await until_none_live(paper_tws, "cxl-1")
    assert len(legs) == 3
    health = await paper_tws.get("/health")
    assert health["answersLost"] == 1, health
    assert broker.cancels.stats["resent"] == 1, broker.cancels.stats
    assert not broker.cancels.watching


async def test_a_cancel_lost_before_a_disconnect_is_sent_again_after_the_reconnect(paper_tws, rig):
    """The cancel is lost and IB goes away before the watch's check: the watch keeps the order
    and, once the broker is READY again, finds it still listed at IB and sends the cancel again
    (before: the disconnect cleared the watch and the entry stayed working at IB)."""
    broker = rig.broker
    await cancel_lost_on_its_way(paper_tws, rig, "cxl-3")
    await paper_tws.restart(downtime=1.5)          # the check at 0.5 s meets no connection
    assert await broker.wait_ready(15.0)
    legs = await until_none_live(paper_tws, "cxl-3", timeout=10.0)
    assert len(legs) == 3
    assert broker.cancels.stats["resent"] == 1, broker.cancels.stats
    assert not broker.cancels.watching


async def test_a_confirmed_cancel_costs_no_check(paper_tws, rig):
    broker = rig.broker
    broker.cancels.verify_s = 0.3
    ids = await broker.place_bracket(await rig.bracket(proposal("cxl-2", limit_price=150.0)))
    assert await broker.cancel_order(ids.entry)
    await until_none_live(paper_tws, "cxl-2")

    async def settled() -> None:
        while broker.cancels.watching:
            await asyncio.sleep(0.05)  # IB's Cancelled status clears the watch
    await asyncio.wait_for(settled(), 5)
    assert broker.cancels.stats["checked"] == 0, broker.cancels.stats
