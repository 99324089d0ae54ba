"""adapters/ib_refs.py against the paper TWS over a real socket (both client libraries run this
file): the adapter's orderRef look-ups (has_order_ref, orders_for_ref, existing_bracket,
prior_placement) answer from the index, never from a scan of the library's trades, for brackets
placed this connection (placeOrder), working brackets and finished ones a reconnect loads
(openOrder, completedOrder: no event), and for pruned ones (the retention's tombstones)."""

from __future__ import annotations

from typing import Any

import pytest

from bracketgate.adapters.ib_refs import TradeBook
from bracketgate.bus.messages import ConnectionState
from tests.integration.test_ib_retention import (
    book_sizes, close_rig, finish_brackets, make_rig, until)
from tests.integration.test_pacing_and_placement import proposal

pytestmark = pytest.mark.ib


def no_scans(broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look-up that walks the library's whole book fails the test."""
    def scan() -> list[Any]:
        raise AssertionError("an orderRef look-up scanned ib.trades()")

    monkeypatch.setattr(broker.ib, "trades", scan)


def same_open_trades(b: Any, working: dict[str, Any]) -> None:
    """The open-trade index lists what the library's own pass lists: the working brackets'
    legs, and none of the finished ones the book still keeps."""
    got = b.open_trades()
    assert {id(t) for t in got} == {id(t) for t in b.ib.openTrades()}
    assert sorted(t.order.orderId for t in got) == sorted(
        i for ids in working.values() for i in (ids.entry, ids.take_profit, ids.stop_loss))
    assert b.refs.open_mismatches == 0
    assert len(b.working_orders()) == 3 * len(working)


async def test_look_ups_by_order_ref_use_the_index_across_a_reconnect(paper_tws,
                                                                     monkeypatch) -> None:
    rig = await make_rig(paper_tws, 23, retention_s=600.0)
    try:
        b, ex = rig.broker, rig.execution
        finished = await finish_brackets(rig, paper_tws, "idx")       # filled, then closed
        working = {}
        for i in range(2):                                           # entries rest at IB
            res = await rig.place(f"idx-open-{i}")
            assert res.ok and res.order_ids is not None, res
            working[f"idx-open-{i}"] = res.order_ids
        assert isinstance(b.ib.wrapper.trades, TradeBook)
        same_open_trades(b, working)
        with monkeypatch.context() as m:
            no_scans(b, m)
            for ref, ids in {**finished, **working}.items():
                assert b.has_order_ref(ref)
                assert b.existing_bracket(ref) == ids
                assert {u.order_id for u in b.orders_for_ref(ref)} == {
                    ids.entry, ids.take_profit, ids.stop_loss}
            assert not b.has_order_ref("idx-never") and b.orders_for_ref("idx-never") == []
            assert ex.prior_placement(proposal("idx-never")) is None    # decided as new
        # the gateway drops every client: the library's book is reset and loaded again from
        # IB's open orders (openOrder) and completed orders (completedOrder, no event)
        rebuilds, reconnects = b.refs.rebuilds, b.reconnects
        await paper_tws.restart(0.2)
        await until(lambda: b.reconnects > reconnects and b.state is ConnectionState.READY,
                    what="reconnected")
        assert b.refs.rebuilds == rebuilds + 1 and isinstance(b.ib.wrapper.trades, TradeBook)
        same_open_trades(b, working)
        with monkeypatch.context() as m:
            no_scans(b, m)
            for ref, ids in working.items():
                assert b.existing_bracket(ref) == ids
            for ref in finished:                       # completed orders: no orderId at IB
                assert b.has_order_ref(ref)
                assert len(b.orders_for_ref(ref)) == 3
                ex._forget(ref)
                prior = ex.prior_placement(proposal(ref))
                assert prior is not None and prior.outcome == "finished", (ref, prior)
        assert len(b.refs) == len(b.refs.book().by_ref) == len(finished) + len(working)
    finally:
        await close_rig(rig)


async def test_the_index_empties_with_the_pruned_book_and_tombstones_answer(paper_tws,
                                                                            monkeypatch) -> None:
    rig = await make_rig(paper_tws, 24, retention_s=1.0)
    try:
        b, ex = rig.broker, rig.execution
        placed = await finish_brackets(rig, paper_tws, "idxp")
        await until(lambda: book_sizes(b) == (0, 0, 0), what="pruned")
        assert len(b.refs) == 0                        # bounded: nothing the book does not hold
        with monkeypatch.context() as m:
            no_scans(b, m)
            for ref, ids in placed.items():
                assert b.has_order_ref(ref) and b.existing_bracket(ref) == ids
                ex._forget(ref)
                prior = ex.prior_placement(proposal(ref))
                assert prior is not None and prior.outcome == "finished", prior
    finally:
        await close_rig(rig)
