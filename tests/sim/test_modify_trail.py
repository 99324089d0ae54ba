"""A bracket's life at the paper TWS through the client library (issue 13): modify of working
entries and children, every modify refusal with its TWS code, the stop moved after the parent
filled, TRAIL / TRAIL LIMIT stops that follow the price and trigger (standalone, as a bracket
child, joined to a bracket's OCA group), and partial then full closes.

Runs under ib_async and ib_insync (scripts/test.sh runs tests/sim under both). After a refused
modify both libraries mark the Trade done although TWS keeps the order working; the tests check
the truth at the paper TWS (/state) and that a reqOpenOrders re-sync brings the Trade back.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from tests.iblib import LimitOrder, MarketOrder, Order, Stock
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib


async def _aapl(ib):
    return await qualify_one(ib, Stock("AAPL", "SMART", "USD"))


async def _rows(paper_tws):
    return {o["orderId"]: o for o in (await paper_tws.state())["orders"]}


async def _row(paper_tws, order_id):
    return (await _rows(paper_tws))[order_id]


async def _row_when(paper_tws, order_id, predicate, timeout=3.0):
    """The paper TWS's row for `order_id` once `predicate(row)` holds (polled: the client's
    socket and the control port are two connections)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await _row(paper_tws, order_id)
        if predicate(row):
            return row
        if loop.time() > deadline:
            raise AssertionError(f"order {order_id} never matched: {row}")
        await asyncio.sleep(0.02)


def _bracket(ib, contract, ref, qty=10, entry=229.0, take=235.0, stop=225.0, oca=""):
    bracket = ib.bracketOrder("BUY", qty, entry, take, stop, orderRef=ref)
    if oca:
        for child in (bracket.takeProfit, bracket.stopLoss):
            child.ocaGroup, child.ocaType = oca, 3
    return [ib.placeOrder(contract, o) for o in bracket]


async def _filled_bracket(ib, paper_tws, ref, **kw):
    aapl = await _aapl(ib)
    entry, tp, sl = _bracket(ib, aapl, ref, **kw)
    await wait_until(ib, lambda: entry.orderStatus.status == "Submitted"
                     and sl.orderStatus.status == "PreSubmitted", what="bracket working")
    await paper_tws.set_price("AAPL", 229.0)
    await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                     and tp.orderStatus.status == "Submitted"
                     and sl.orderStatus.status == "Submitted", what="entry filled")
    return aapl, entry, tp, sl


def _trail(action, qty, *, amount=None, percent=None, stop=None, offset=None, **kw):
    o = Order(action=action, totalQuantity=qty, orderType="TRAIL LIMIT" if offset else "TRAIL",
              **kw)
    if amount is not None:
        o.auxPrice = amount
    if percent is not None:
        o.trailingPercent = percent
    if stop is not None:
        o.trailStopPrice = stop
    if offset is not None:
        o.lmtPriceOffset = offset
    return o


async def _resync(ib, trade, status="Submitted"):
    """After a refused modify the library marks the trade done; reqOpenOrders re-sends the
    order's openOrder + orderStatus and the Trade shows the truth again."""
    await ib.reqOpenOrdersAsync()
    await wait_until(ib, lambda: trade.orderStatus.status == status, what=f"resync {status}")


# ---------------------------------------------------------------- modify


async def test_modify_entry_and_children_before_the_entry_fills(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        entry, tp, sl = _bracket(ib, aapl, "mod-1")
        await wait_until(ib, lambda: sl.orderStatus.status == "PreSubmitted")
        entry.order.lmtPrice, entry.order.totalQuantity = 228.5, 12
        ib.placeOrder(aapl, entry.order)
        for trade, field, price in ((tp, "lmtPrice", 236.0), (sl, "auxPrice", 224.0)):
            setattr(trade.order, field, price)
            trade.order.totalQuantity = 12
            ib.placeOrder(aapl, trade.order)          # parentId still set: the parent works
        await wait_until(ib, lambda: entry.orderStatus.remaining == 12
                         and sl.orderStatus.remaining == 12 and tp.orderStatus.remaining == 12,
                         what="modified quantities")
        rows = await _rows(paper_tws)
        assert (rows[entry.order.orderId]["lmtPrice"], rows[entry.order.orderId]["totalQuantity"]) \
            == (228.5, 12)
        assert rows[tp.order.orderId]["lmtPrice"] == 236.0
        assert rows[sl.order.orderId]["auxPrice"] == 224.0
        assert {r["status"] for r in rows.values()} == {"Submitted", "PreSubmitted"}
        assert len({r["permId"] for r in rows.values()}) == 3
        await paper_tws.set_price("AAPL", 228.5)
        await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                         and sl.orderStatus.status == "Submitted")
        assert [p["position"] for p in (await paper_tws.state())["positions"]] == [12]
        await paper_tws.set_price("AAPL", 223.9)         # the moved stop (224) protects all 12
        await wait_until(ib, lambda: sl.orderStatus.status == "Filled"
                         and tp.orderStatus.status == "Cancelled")
        assert sl.orderStatus.filled == 12


async def test_stop_moved_after_the_parent_filled_needs_parent_id_zero(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "be-1")
        moved = copy.copy(sl.order)                      # the Trade keeps its parentId
        moved.auxPrice = 229.0                           # break-even
        ib.placeOrder(aapl, moved)
        err = await ib.errors.wait_for(135, sl.order.orderId)
        assert err[2] == f"Can't find order with id ={entry.order.orderId}"
        row = await _row(paper_tws, sl.order.orderId)
        assert (row["auxPrice"], row["status"]) == (225.0, "Submitted")   # nothing changed
        await _resync(ib, sl)
        moved.parentId = 0
        ib.placeOrder(aapl, moved)
        await wait_until(ib, lambda: sl.order.auxPrice == 229.0, what="stop at break-even")
        row = await _row(paper_tws, sl.order.orderId)
        assert (row["auxPrice"], row["status"], row["parentId"]) == (
            229.0, "Submitted", entry.order.orderId)
        assert sl.order.parentId == entry.order.orderId
        await paper_tws.set_price("AAPL", 228.9)
        await wait_until(ib, lambda: sl.orderStatus.status == "Filled"
                         and tp.orderStatus.status == "Cancelled", what="break-even stop hit")
        assert sl.orderStatus.avgFillPrice == 228.9


async def test_take_profit_resized_after_the_parent_filled(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "tp-1")
        resized = copy.copy(tp.order)
        resized.parentId, resized.totalQuantity, resized.lmtPrice = 0, 6, 234.0
        ib.placeOrder(aapl, resized)
        await wait_until(ib, lambda: tp.orderStatus.remaining == 6 and tp.order.lmtPrice == 234.0)
        await paper_tws.set_price("AAPL", 234.0)        # 6 taken; the stop still guards 4
        await wait_until(ib, lambda: tp.orderStatus.status == "Filled"
                         and sl.orderStatus.remaining == 4, what="tp 6, stop reduced to 4")
        assert sl.orderStatus.status == "Submitted"
        assert [p["position"] for p in (await paper_tws.state())["positions"]] == [4]


async def test_modify_refusals_carry_the_tws_codes_and_change_nothing(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        # 105: the side changes
        lmt = ib.placeOrder(aapl, LimitOrder("BUY", 5, 220.0, orderRef="r105"))
        await wait_until(ib, lambda: lmt.orderStatus.status == "Submitted")
        flipped = copy.copy(lmt.order)
        flipped.action = "SELL"
        ib.placeOrder(aapl, flipped)
        err = await ib.errors.wait_for(105, lmt.order.orderId)
        assert err[2] == "Order being modified does not match original order"
        await _resync(ib, lmt)
        # 329: the order type changes (a STP cannot become a TRAIL by modify)
        stp = ib.placeOrder(aapl, Order(action="SELL", totalQuantity=5, orderType="STP",
                                        auxPrice=220.0, orderRef="r329"))
        await wait_until(ib, lambda: stp.orderStatus.status == "Submitted")
        as_trail = copy.copy(stp.order)
        as_trail.orderType, as_trail.auxPrice = "TRAIL", 2.0
        ib.placeOrder(aapl, as_trail)
        err = await ib.errors.wait_for(329, stp.order.orderId)
        assert err[2] == "Order modify failed. Cannot change to the new order type."
        row = await _row(paper_tws, stp.order.orderId)
        assert (row["orderType"], row["auxPrice"], row["status"]) == ("STP", 220.0, "Submitted")
        await _resync(ib, stp)
        # 10326: the OCA group is restated differently
        regroup = copy.copy(lmt.order)
        regroup.ocaGroup = "other"
        ib.placeOrder(aapl, regroup)
        err = await ib.errors.wait_for(10326, lmt.order.orderId)
        assert err[2] == "OCA group revision is not allowed"
        assert (await _row(paper_tws, lmt.order.orderId))["ocaGroup"] == ""
        await _resync(ib, lmt)
        # 10327: the OCA type of a grouped order is restated differently
        grouped = ib.placeOrder(aapl, LimitOrder("BUY", 1, 210.0, ocaGroup="grp", ocaType=3))
        await wait_until(ib, lambda: grouped.orderStatus.status == "Submitted")
        retyped = copy.copy(grouped.order)
        retyped.ocaType = 1
        ib.placeOrder(aapl, retyped)
        err = await ib.errors.wait_for(10327, grouped.order.orderId)
        assert err[2] == "OCA group type revision is not allowed"
        assert (await _row(paper_tws, grouped.order.orderId))["ocaType"] == 3
        await _resync(ib, grouped)
        # 321: below what already filled
        await paper_tws.fill_qty(3)
        part = ib.placeOrder(aapl, LimitOrder("BUY", 10, 228.0, orderRef="r321"))
        await wait_until(ib, lambda: part.orderStatus.status == "Submitted")
        await paper_tws.set_price("AAPL", 227.9)
        await wait_until(ib, lambda: part.orderStatus.filled == 3)
        await paper_tws.fill_qty(None)
        shrink = copy.copy(part.order)
        shrink.totalQuantity = 2
        ib.placeOrder(aapl, shrink)
        err = await ib.errors.wait_for(321, part.order.orderId)
        assert "less than the filled quantity" in err[2]
        assert (await _row(paper_tws, part.order.orderId))["totalQuantity"] == 10
        await _resync(ib, part)
        # a quantity cut down to exactly the filled completes the order
        shrink.totalQuantity = 3
        ib.placeOrder(aapl, shrink)
        await wait_until(ib, lambda: part.orderStatus.status == "Filled")
        # 104: a filled order's id re-placed; 103: a cancelled order's id re-placed. The
        # libraries refuse to modify a done Trade, so these go through the raw client.
        ib.client.placeOrder(part.order.orderId, aapl, shrink)
        err = await ib.errors.wait_for(104, part.order.orderId)
        assert err[2] == "Can't modify a filled order."
        ib.cancelOrder(lmt.order)
        await wait_until(ib, lambda: lmt.orderStatus.status == "Cancelled")
        ib.client.placeOrder(lmt.order.orderId, aapl, lmt.order)
        await ib.errors.wait_for(103, lmt.order.orderId)
        rows = await _rows(paper_tws)
        assert (rows[part.order.orderId]["status"], rows[part.order.orderId]["filled"]) == (
            "Filled", 3)
        assert rows[lmt.order.orderId]["status"] == "Cancelled"
        assert rows[stp.order.orderId]["status"] == "Submitted"


async def test_new_child_of_a_filled_parent_is_refused(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "kid-1")
        late = ib.placeOrder(aapl, _trail("SELL", 10, amount=1.0, parentId=entry.order.orderId))
        await ib.errors.wait_for(135, late.order.orderId)
        assert late.order.orderId not in await _rows(paper_tws)


# ---------------------------------------------------------------- trailing stops


async def test_trail_follows_the_high_never_back_and_triggers(paper_tws):
    async with connected(paper_tws, 1) as ib, connected(paper_tws, 2) as other:
        aapl = await _aapl(ib)
        buy = ib.placeOrder(aapl, MarketOrder("BUY", 10))
        await wait_until(ib, lambda: buy.orderStatus.status == "Filled")
        trail = ib.placeOrder(aapl, _trail("SELL", 10, amount=2.0, orderRef="tr-1"))
        await wait_until(ib, lambda: trail.orderStatus.status == "Submitted")
        assert (await _row(paper_tws, trail.order.orderId))["trailStopPrice"] == 228.0
        for price, stop in ((231.0, 229.0), (233.0, 231.0), (232.0, 231.0), (231.5, 231.0)):
            await paper_tws.set_price("AAPL", price)
            row = await _row(paper_tws, trail.order.orderId)
            assert (row["trailStopPrice"], row["status"]) == (stop, "Submitted"), price
        # the current stop is on the wire: a client that did not place it decodes it
        [seen] = [t for t in await other.reqAllOpenOrdersAsync()
                  if t.order.orderId == trail.order.orderId]
        assert (seen.order.orderType, seen.order.auxPrice, seen.order.trailStopPrice) == (
            "TRAIL", 2.0, 231.0)
        await paper_tws.set_price("AAPL", 230.9)
        await wait_until(ib, lambda: trail.orderStatus.status == "Filled", what="trail hit")
        assert trail.orderStatus.avgFillPrice == 230.9
        assert [p["position"] for p in (await paper_tws.state())["positions"]] == [0]
        [done] = [t for t in await ib.reqCompletedOrdersAsync(apiOnly=True)
                  if t.order.orderType == "TRAIL"]
        assert (done.order.trailStopPrice, done.orderStatus.status) == (231.0, "Filled")


async def test_trailing_percent_and_a_buy_trail_on_a_short(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        sell = ib.placeOrder(aapl, MarketOrder("SELL", 5))
        await wait_until(ib, lambda: sell.orderStatus.status == "Filled")
        trail = ib.placeOrder(aapl, _trail("BUY", 5, percent=1.0, orderRef="pct"))
        await wait_until(ib, lambda: trail.orderStatus.status == "Submitted")
        row = await _row(paper_tws, trail.order.orderId)
        assert (row["trailStopPrice"], row["trailingPercent"], row["auxPrice"]) == (
            232.3, 1.0, None)                            # 230 * 1.01
        await paper_tws.set_price("AAPL", 220.0)         # the low falls: stop 222.2
        await paper_tws.set_price("AAPL", 221.0)         # a bounce below the stop: it stays
        assert (await _row(paper_tws, trail.order.orderId))["trailStopPrice"] == 222.2
        await paper_tws.set_price("AAPL", 222.3)
        await wait_until(ib, lambda: trail.orderStatus.status == "Filled")
        assert trail.orderStatus.avgFillPrice == 222.3
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [0]
        # short 5 at the bid 229.99, covered at 222.3, two $1 commissions
        assert state["pnl"]["realized"] == pytest.approx((229.99 - 222.3) * 5 - 2.0)


async def test_trail_limit_limit_follows_the_stop_and_fills_within_it(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        buy = ib.placeOrder(aapl, MarketOrder("BUY", 10))
        await wait_until(ib, lambda: buy.orderStatus.status == "Filled")
        trail = ib.placeOrder(aapl, _trail("SELL", 10, amount=1.0, offset=0.5, orderRef="tl"))
        await wait_until(ib, lambda: trail.orderStatus.status == "Submitted")
        row = await _row(paper_tws, trail.order.orderId)
        assert (row["orderType"], row["trailStopPrice"], row["lmtPrice"], row["lmtPriceOffset"]) \
            == ("TRAIL LIMIT", 229.0, 228.5, 0.5)
        await paper_tws.set_price("AAPL", 232.0)
        await wait_until(ib, lambda: trail.order.lmtPrice == 230.5, what="limit follows")
        assert (await _row(paper_tws, trail.order.orderId))["trailStopPrice"] == 231.0
        await paper_tws.set_price("AAPL", 230.2)        # through the stop, below the limit
        row = await _row(paper_tws, trail.order.orderId)
        assert (row["status"], row["filled"]) == ("Submitted", 0)
        await paper_tws.set_price("AAPL", 230.6)        # back within the limit: fills there
        await wait_until(ib, lambda: trail.orderStatus.status == "Filled")
        assert trail.orderStatus.avgFillPrice == 230.5


async def test_trail_child_arms_when_the_parent_fills_and_cancels_the_take_profit(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        bracket = ib.bracketOrder("BUY", 10, 229.0, 235.0, 225.0, orderRef="trc")
        stop = bracket.stopLoss
        trail = _trail("SELL", 10, amount=2.0, orderRef="trc", parentId=stop.parentId,
                       orderId=stop.orderId)
        entry, tp, tr = [ib.placeOrder(aapl, o) for o in (bracket.parent, bracket.takeProfit,
                                                         trail)]
        await wait_until(ib, lambda: tr.orderStatus.status == "PreSubmitted")
        assert (await _row(paper_tws, tr.order.orderId))["trailStopPrice"] is None  # not armed
        await paper_tws.set_price("AAPL", 232.0)        # away from the entry: no trailing yet
        await paper_tws.set_price("AAPL", 229.0)        # entry fills; the trail starts here
        await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                         and tr.orderStatus.status == "Submitted")
        assert (await _row(paper_tws, tr.order.orderId))["trailStopPrice"] == 227.0
        await paper_tws.set_price("AAPL", 233.0)
        assert (await _row(paper_tws, tr.order.orderId))["trailStopPrice"] == 231.0
        await paper_tws.set_price("AAPL", 230.9)
        await wait_until(ib, lambda: tr.orderStatus.status == "Filled"
                         and tp.orderStatus.status == "Cancelled", what="trail out, TP gone")
        assert tr.orderStatus.avgFillPrice == 230.9
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [0]
        assert state["pnl"]["realized"] == pytest.approx((230.9 - 229.0) * 10 - 2.0)


async def test_stop_turned_into_a_trail_before_the_fill_by_cancel_replace(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        entry, tp, sl = _bracket(ib, aapl, "swap-1")
        await wait_until(ib, lambda: sl.orderStatus.status == "PreSubmitted")
        tr = ib.placeOrder(aapl, _trail("SELL", 10, amount=1.5, orderRef="swap-1",
                                        parentId=entry.order.orderId))   # new first...
        await wait_until(ib, lambda: tr.orderStatus.status == "PreSubmitted")
        ib.cancelOrder(sl.order)                                          # ...then the STP
        await wait_until(ib, lambda: sl.orderStatus.status == "Cancelled")
        await paper_tws.set_price("AAPL", 229.0)
        await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                         and tr.orderStatus.status == "Submitted"
                         and tp.orderStatus.status == "Submitted")
        await paper_tws.set_price("AAPL", 235.0)        # take-profit wins: the trail goes
        await wait_until(ib, lambda: tp.orderStatus.status == "Filled"
                         and tr.orderStatus.status == "Cancelled")


async def test_standalone_trail_joins_the_bracket_oca_group_after_the_fill(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "oca-1", oca="bg-oca-1")
        tr = ib.placeOrder(aapl, _trail("SELL", 10, amount=1.0, orderRef="oca-1",
                                        ocaGroup="bg-oca-1", ocaType=3))
        await wait_until(ib, lambda: tr.orderStatus.status == "Submitted")
        ib.cancelOrder(sl.order)
        await wait_until(ib, lambda: sl.orderStatus.status == "Cancelled")
        assert tp.orderStatus.status == "Submitted"
        await paper_tws.set_price("AAPL", 232.0)
        assert (await _row(paper_tws, tr.order.orderId))["trailStopPrice"] == 231.0
        await paper_tws.set_price("AAPL", 230.5)
        await wait_until(ib, lambda: tr.orderStatus.status == "Filled"
                         and tp.orderStatus.status == "Cancelled", what="OCA across")
        assert [p["position"] for p in (await paper_tws.state())["positions"]] == [0]


async def test_modify_trail_amount_retrails_and_unset_stop_keeps_it(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        buy = ib.placeOrder(aapl, MarketOrder("BUY", 10))
        await wait_until(ib, lambda: buy.orderStatus.status == "Filled")
        trail = ib.placeOrder(aapl, _trail("SELL", 10, amount=3.0))
        await wait_until(ib, lambda: trail.orderStatus.status == "Submitted")
        await paper_tws.set_price("AAPL", 234.0)        # best 234: stop 231
        trail.order.totalQuantity = 8                    # quantity only: the trail is kept
        ib.placeOrder(aapl, trail.order)
        await wait_until(ib, lambda: trail.orderStatus.remaining == 8)
        assert (await _row(paper_tws, trail.order.orderId))["trailStopPrice"] == 231.0
        trail.order.auxPrice = 1.0                       # tighter: re-trails from the best
        ib.placeOrder(aapl, trail.order)
        row = await _row_when(paper_tws, trail.order.orderId, lambda r: r["auxPrice"] == 1.0)
        assert row["trailStopPrice"] == 233.0


# ---------------------------------------------------------------- partial and full closes


async def test_partial_close_resizes_the_children_then_full_close(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "pc-1")
        part = ib.placeOrder(aapl, MarketOrder("SELL", 4, orderRef="pc-1"))
        await wait_until(ib, lambda: part.orderStatus.status == "Filled")
        for trade in (tp, sl):                           # nothing left over-hedged
            resized = copy.copy(trade.order)
            resized.parentId, resized.totalQuantity = 0, 6
            ib.placeOrder(aapl, resized)
        await wait_until(ib, lambda: tp.orderStatus.remaining == 6
                         and sl.orderStatus.remaining == 6, what="children resized")
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [6]
        assert state["pnl"]["realized"] == pytest.approx((228.99 - 229.0) * 4 - 1.0 - 1.0 * 4 / 10,
                                                         abs=0.01)
        rest = ib.placeOrder(aapl, MarketOrder("SELL", 6, orderRef="pc-1"))
        await wait_until(ib, lambda: rest.orderStatus.status == "Filled")
        for trade in (tp, sl):
            ib.cancelOrder(trade.order)
        await wait_until(ib, lambda: tp.orderStatus.status == "Cancelled"
                         and sl.orderStatus.status == "Cancelled")
        state = await paper_tws.state()
        assert [p["position"] for p in state["positions"]] == [0]
        # bought 10 @ 229 (+$1), sold 10 @ the bid 228.99 in two fills (+$1 each)
        assert state["pnl"]["realized"] == pytest.approx(-0.01 * 10 - 3.0)
        assert float(state["accountValues"]["RealizedPnL"]) == pytest.approx(-3.1)
        assert {(o["orderId"], o["status"]) for o in state["orders"]} >= {
            (tp.order.orderId, "Cancelled"), (sl.order.orderId, "Cancelled")}


async def test_partial_close_in_the_children_oca_group_shrinks_them(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, entry, tp, sl = await _filled_bracket(ib, paper_tws, "pc-2", oca="bg-pc-2")
        part = ib.placeOrder(aapl, MarketOrder("SELL", 3, orderRef="pc-2", ocaGroup="bg-pc-2",
                                               ocaType=3))
        await wait_until(ib, lambda: part.orderStatus.status == "Filled"
                         and tp.orderStatus.remaining == 7 and sl.orderStatus.remaining == 7,
                         what="OCA reduce of both children")
        await paper_tws.set_price("AAPL", 224.0)
        await wait_until(ib, lambda: sl.orderStatus.status == "Filled"
                         and tp.orderStatus.status == "Cancelled")
        assert sl.orderStatus.filled == 7
        assert [p["position"] for p in (await paper_tws.state())["positions"]] == [0]


async def test_adjustable_stop_is_refused_not_silently_dropped(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await _aapl(ib)
        stop = Order(action="SELL", totalQuantity=5, orderType="STP", auxPrice=220.0,
                     triggerPrice=235.0, adjustedOrderType="TRAIL", adjustedTrailingAmount=1.0,
                     adjustableTrailingUnit=0)
        trade = ib.placeOrder(aapl, stop)
        err = await ib.errors.wait_for(321, trade.order.orderId)
        assert "adjustable stops" in err[2]
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
        assert trade.order.orderId not in await _rows(paper_tws)
