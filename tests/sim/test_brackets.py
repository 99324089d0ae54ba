"""Brackets with IB semantics (entry + take-profit + stop; children held, then OCA) and partial
fills."""

from __future__ import annotations

import pytest

from tests.iblib import LimitOrder, Stock
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib


async def _bracket(ib, paper_tws, ref):
    aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
    bracket = ib.bracketOrder("BUY", 10, 229.0, 235.0, 225.0, orderRef=ref)
    trades = [ib.placeOrder(aapl, o) for o in bracket]
    entry, take_profit, stop = trades
    await wait_until(ib, lambda: entry.orderStatus.status == "Submitted"
                     and take_profit.orderStatus.status == "PreSubmitted"
                     and stop.orderStatus.status == "PreSubmitted", what="bracket working")
    assert take_profit.order.parentId == entry.order.orderId == stop.order.parentId
    await paper_tws.set_price("AAPL", 229.0)
    await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                     and take_profit.orderStatus.status == "Submitted"
                     and stop.orderStatus.status == "Submitted", what="entry filled")
    assert entry.orderStatus.avgFillPrice == 229.0
    return entry, take_profit, stop


async def _orders_by_id(paper_tws):
    return {o["orderId"]: o for o in (await paper_tws.state())["orders"]}


async def test_bracket_take_profit_fills_and_stop_is_cancelled(paper_tws):
    async with connected(paper_tws) as ib:
        entry, take_profit, stop = await _bracket(ib, paper_tws, "br-tp")
        await paper_tws.set_price("AAPL", 235.0)
        await wait_until(ib, lambda: take_profit.orderStatus.status == "Filled"
                         and stop.orderStatus.status == "Cancelled", what="TP filled, SL cancelled")
        assert take_profit.orderStatus.avgFillPrice == 235.0
        orders = await _orders_by_id(paper_tws)
        assert [orders[t.order.orderId]["status"] for t in (entry, take_profit, stop)] == [
            "Filled", "Filled", "Cancelled"]
        assert {o["orderRef"] for o in orders.values()} == {"br-tp"}
        assert orders[stop.order.orderId]["parentId"] == entry.order.orderId
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [0]
        # realized = (235 - 229) * 10 minus both commissions ($1 minimum each)
        assert state["pnl"]["realized"] == pytest.approx(60.0 - 2.0)
        assert [e["orderRef"] for e in state["executions"]] == ["br-tp", "br-tp"]


async def test_bracket_stop_fills_and_take_profit_is_cancelled(paper_tws):
    async with connected(paper_tws) as ib:
        entry, take_profit, stop = await _bracket(ib, paper_tws, "br-sl")
        await paper_tws.set_price("AAPL", 224.0)  # through the 225 stop: fills at the price
        await wait_until(ib, lambda: stop.orderStatus.status == "Filled"
                         and take_profit.orderStatus.status == "Cancelled", what="SL filled")
        assert stop.orderStatus.avgFillPrice == 224.0
        assert [f.execution.side for f in stop.fills] == ["SLD"]
        state = await paper_tws.state()
        assert state["pnl"]["realized"] == pytest.approx((224.0 - 229.0) * 10 - 2.0)


async def test_partial_fills_report_filled_and_remaining(paper_tws):
    async with connected(paper_tws) as ib:
        await paper_tws.fill_qty(3)
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 10, 228.0, orderRef="part"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        for step, price in enumerate((227.9, 227.8, 227.7), start=1):
            await paper_tws.set_price("AAPL", price)
            await wait_until(ib, lambda: trade.orderStatus.filled == 3 * step,
                             what=f"partial fill {step}")
            assert trade.orderStatus.status == "Submitted"
            assert trade.orderStatus.remaining == 10 - 3 * step
        await paper_tws.set_price("AAPL", 227.6)
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
        assert [f.execution.shares for f in trade.fills] == [3, 3, 3, 1]
        assert [f.execution.cumQty for f in trade.fills] == [3, 6, 9, 10]
        assert trade.orderStatus.avgFillPrice == 228.0
        await paper_tws.fill_qty(None)


async def test_bracket_children_follow_a_partly_filled_parent(paper_tws):
    async with connected(paper_tws) as ib:
        await paper_tws.fill_qty(4)
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trades = [ib.placeOrder(aapl, o)
                  for o in ib.bracketOrder("BUY", 10, 229.0, 235.0, 225.0, orderRef="br-part")]
        entry, take_profit, stop = trades
        await wait_until(ib, lambda: entry.orderStatus.status == "Submitted")
        await paper_tws.set_price("AAPL", 229.0)
        await wait_until(ib, lambda: entry.orderStatus.filled == 4)
        await paper_tws.set_price("AAPL", 235.0)  # the take-profit protects the 4 filled
        await wait_until(ib, lambda: take_profit.orderStatus.filled == 4)
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [0]
        assert entry.orderStatus.status == "Submitted" and entry.orderStatus.remaining == 6
