"""Bounds of the IB adapter's and the client library's id-keyed books against the paper TWS over
a real socket (both client libraries run this file; core/bounds.py names every bound):
- the wrapper's request books (`_results`, `_futures`, `_reqId2Contract`): every what-if left its
  container behind (the library pops the future, not the container, when the answer is a value)
  and a timed-out one its future; adapters/ib_prune.py drops them after the grace;
- one P&L subscription task per conId while the pacer makes it wait: a Filled status spawned one
  per fill, and a saturated pacer (a DATA turn waits behind every ORDER one) let them pile up;
- a placement check (no ack: IB's open, then completed orders asked) leaves the books as they
  were: the library put back every order completed this session (ib_prune.drop_replayed)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from bracketgate.bus.errors import BrokerTimeout, PlacementError
from bracketgate.bus.messages import ApprovedBracket
from bracketgate.core.bounds import BOUNDS, library_sizes, sizes
from tests.integration.test_ib_retention import (
    N,
    book_sizes,
    close_rig,
    finish_brackets,
    make_rig,
    until,
)
from tests.integration.test_pacing_and_placement import proposal

pytestmark = pytest.mark.ib


def request_keys(broker) -> set[int]:
    w = broker.ib.wrapper
    return {k for d in (w._results, w._futures, w._reqId2Contract) for k in d if isinstance(k, int)}


async def test_what_ifs_leave_the_libraries_request_books(paper_tws) -> None:
    rig = await make_rig(paper_tws, 31, retention_s=1.0)
    try:
        b = rig.broker
        before = request_keys(b)
        p = proposal("bound-wi")
        approved = ApprovedBracket(proposal=p, contract=await b.resolve_contract(p),
                                   approved_at=datetime.now(timezone.utc))
        for _ in range(8):
            assert (await b.what_if(approved))["init_margin_change"] is not None
        b.request_timeout = 1e-6   # answered after more than one loop step: never in time
        with pytest.raises(BrokerTimeout):
            await b.what_if(approved)
        b.request_timeout = 5.0
        left = request_keys(b) - before
        assert len(left) >= 9, left   # the library's own leftovers, one per what-if
        await until(lambda: not (request_keys(b) - before), timeout=20.0, what="requests pruned")
        assert b.retention.stats()["pruned_requests"] >= 9
        got = sizes(broker=b, execution=rig.execution)
        assert set(got) <= set(BOUNDS), set(got) - set(BOUNDS)   # every size has its bound named
        assert got["ib._results"] == library_sizes(b.ib.wrapper)["ib._results"]
    finally:
        await close_rig(rig)


async def test_one_pnl_subscription_waits_per_con_id_however_many_fills(paper_tws) -> None:
    rig = await make_rig(paper_tws, 32, retention_s=600.0)
    try:
        b = rig.broker
        res = await rig.place("bound-pnl")
        assert res.order_ids is not None, res
        await paper_tws.set_price("AAPL", 199.0)   # the entry (BUY LMT 200) fills
        await until(lambda: rig.execs, what="entry filled")
        trade = next(t for t in b.ib.trades() if t.order.orderId == res.order_ids.entry)
        await until(lambda: trade.orderStatus.status == "Filled", what="Filled status")
        con_id = trade.contract.conId
        await until(lambda: con_id in b._pnl_single, what="P&L subscribed after the fill")
        b.ib.cancelPnLSingle(b.account, "", con_id)   # as if not subscribed yet: the next
        b._pnl_single.pop(con_id)                      # fill asks again
        pacer = b.pacer
        pacer.note_sent(int(pacer.tokens()) + int(pacer.rate * 2))   # ~2 s of owed messages
        for _ in range(50):                      # fills' statuses while the DATA turn waits
            b._on_order_status(trade)
        name = f"ib-pnl-single:{con_id}"
        waiting = [t for t in b._tasks if t.get_name() == name and not t.done()]
        assert len(waiting) == 1, len(waiting)
        assert b._pnl_waiting == {con_id}
        await until(lambda: con_id in b._pnl_single, timeout=20.0, what="subscribed")
        await asyncio.sleep(0)
        assert not b._pnl_waiting
        assert not [t for t in b._tasks if t.get_name() == name and not t.done()]
    finally:
        await close_rig(rig)


async def test_a_placement_check_does_not_bring_pruned_brackets_back(paper_tws) -> None:
    """A placement whose ack never comes asks IB for its completed orders: the library put every
    order completed this session back into its books (keyed by permId), every bracket the
    retention had pruned. Only the orderRef asked about may stay."""
    rig = await make_rig(paper_tws, 33, retention_s=1.0)
    try:
        b = rig.broker
        await finish_brackets(rig, paper_tws, "gone")
        await until(lambda: book_sizes(b) == (0, 0, 0), what="pruned")
        await paper_tws.post("/ack_hold", {"orderRef": "lost-b", "orderType": "STP", "mode": "lose"})
        with pytest.raises(PlacementError):
            await b.place_bracket(await rig_bracket(b, proposal("lost-b")))
        refs = {t.order.orderRef for t in b.ib.wrapper.trades.values()}
        assert refs == {"lost-b"}, refs
        # the check's completed orders are filtered on its orderRef before the library decodes
        # them (adapters/ib_truth.py): none of the pruned brackets is decoded, none to drop
        assert b.queries.stats["completed"] >= 1 and b.queries.stats["decoded"] <= 3
        assert all(b.has_order_ref(f"gone-{i}") for i in range(N))   # tombstones still answer
    finally:
        await close_rig(rig)


async def rig_bracket(b, p) -> ApprovedBracket:
    return ApprovedBracket(proposal=p, contract=await b.resolve_contract(p),
                           approved_at=datetime.now(timezone.utc))
