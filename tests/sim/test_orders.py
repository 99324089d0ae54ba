"""Orders through the client library: types, TIFs, orderRef, modify, cancel, what-if, rejects."""

from __future__ import annotations

import pytest

from tests.iblib import Contract, LimitOrder, MarketOrder, Order, Stock, StopOrder
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib


def _done(trade):
    return trade.orderStatus.status in ("Filled", "Cancelled", "ApiCancelled", "Inactive")


async def test_market_order_fills_with_execution_and_commission(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, MarketOrder("BUY", 10, orderRef="mkt-1"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled"
                         and trade.fills and trade.fills[0].commissionReport.commission > 0)
        st = trade.orderStatus
        assert (st.filled, st.remaining, st.avgFillPrice) == (10, 0, 230.01)  # paid the ask
        [fill] = trade.fills
        assert fill.execution.side == "BOT" and fill.execution.shares == 10
        assert fill.execution.orderRef == "mkt-1" and fill.execution.clientId == 1
        assert fill.commissionReport.commission == pytest.approx(1.0)  # IB fixed minimum
        assert trade.order.orderRef == "mkt-1"
        statuses = [e.status for e in trade.log]
        assert statuses[0] == "PendingSubmit" and statuses[-1] == "Filled"


@pytest.mark.parametrize("tif", ["DAY", "GTC"])
async def test_limit_order_rests_then_fills_on_a_price_move(paper_tws, tif):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 5, 228.0, tif=tif, orderRef=f"lmt-{tif}"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        assert trade.order.tif == tif
        await paper_tws.set_price("AAPL", 227.5)
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
        assert trade.orderStatus.avgFillPrice == 228.0
        [order] = [o for o in (await paper_tws.state())["orders"] if o["orderRef"] == f"lmt-{tif}"]
        assert order["status"] == "Filled" and order["tif"] == tif and order["filled"] == 5


async def test_stop_and_stop_limit_trigger(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        buy = ib.placeOrder(aapl, MarketOrder("BUY", 20))
        await wait_until(ib, lambda: buy.orderStatus.status == "Filled")
        stop = ib.placeOrder(aapl, StopOrder("SELL", 10, 225.0, orderRef="stp"))
        stop_limit = ib.placeOrder(aapl, Order(action="SELL", totalQuantity=10, orderType="STP LMT",
                                               auxPrice=224.0, lmtPrice=223.5, orderRef="stplmt"))
        await wait_until(ib, lambda: stop.orderStatus.status == "Submitted"
                         and stop_limit.orderStatus.status == "Submitted")
        await paper_tws.set_price("AAPL", 224.5)  # stop triggers, fills at the price
        await wait_until(ib, lambda: stop.orderStatus.status == "Filled")
        assert stop.orderStatus.avgFillPrice == 224.5
        assert stop_limit.orderStatus.status == "Submitted"
        await paper_tws.set_price("AAPL", 223.8)  # stop-limit triggers, limit 223.5 reachable
        await wait_until(ib, lambda: stop_limit.orderStatus.status == "Filled")
        assert stop_limit.orderStatus.avgFillPrice >= 223.5


async def test_modify_by_replacing_the_same_order_id(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        order = LimitOrder("BUY", 5, 220.0, orderRef="mod")
        trade = ib.placeOrder(aapl, order)
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        order.lmtPrice = 221.0
        order.totalQuantity = 7
        again = ib.placeOrder(aapl, order)
        assert again is trade
        # TWS answers the modify with openOrder + orderStatus carrying the new quantity
        await wait_until(ib, lambda: trade.orderStatus.remaining == 7
                         and trade.log[-1].status == "Submitted")
        [row] = (await paper_tws.state())["orders"]
        assert row["lmtPrice"] == 221.0 and row["totalQuantity"] == 7 and row["orderRef"] == "mod"
        assert row["orderId"] == trade.order.orderId and row["status"] == "Submitted"


async def test_cancel_sends_202_and_cancelled(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 5, 200.0, orderRef="cx"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        ib.cancelOrder(trade.order)
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
        await ib.errors.wait_for(202, trade.order.orderId)
        [row] = (await paper_tws.state())["orders"]
        assert row["status"] == "Cancelled" and row["orderRef"] == "cx"


async def test_global_cancel_cancels_every_working_order(paper_tws):
    async with connected(paper_tws, 1) as ib1, connected(paper_tws, 2) as ib2:
        aapl = await qualify_one(ib1, Stock("AAPL", "SMART", "USD"))
        t1 = ib1.placeOrder(aapl, LimitOrder("BUY", 1, 200.0))
        t2 = ib2.placeOrder(aapl, LimitOrder("SELL", 1, 260.0))
        await wait_until(ib1, lambda: t1.orderStatus.status == "Submitted")
        await wait_until(ib2, lambda: t2.orderStatus.status == "Submitted")
        ib1.reqGlobalCancel()
        await wait_until(ib1, lambda: t1.orderStatus.status == "Cancelled")
        await wait_until(ib2, lambda: t2.orderStatus.status == "Cancelled")


async def test_what_if_returns_margins_and_creates_no_order(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        state = await ib.whatIfOrderAsync(aapl, LimitOrder("BUY", 100, 230.0))
        init_change = float(state.initMarginChange)
        assert init_change == pytest.approx(0.25 * 100 * 230.0)
        assert float(state.maintMarginChange) == pytest.approx(init_change)
        assert float(state.equityWithLoanBefore) == pytest.approx(1_000_000.0)
        assert float(state.initMarginAfter) == pytest.approx(
            float(state.initMarginBefore) + init_change)
        assert state.commission == pytest.approx(1.0)
        assert (await paper_tws.state())["orders"] == []
        assert ib.openTrades() == []
        # no id consumed: the next real order may use any higher id
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 1, 200.0))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")


async def test_reject_103_duplicate_order_id(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        first = ib.placeOrder(aapl, LimitOrder("BUY", 1, 200.0))
        await wait_until(ib, lambda: first.orderStatus.status == "Submitted")
        low = LimitOrder("BUY", 1, 200.0)
        low.orderId = first.order.orderId - 1  # below the highest id this client used
        trade = ib.placeOrder(aapl, low)
        await ib.errors.wait_for(103, low.orderId)
        await wait_until(ib, lambda: _done(trade))
        assert first.orderStatus.status == "Submitted"  # the real order is untouched


async def test_reject_110_price_off_tick(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 1, 200.005))
        await ib.errors.wait_for(110, trade.order.orderId)
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
        assert (await paper_tws.state())["orders"] == []


async def test_reject_200_unknown_contract(paper_tws):
    async with connected(paper_tws) as ib:
        trade = ib.placeOrder(Stock("NOPE", "SMART", "USD"), MarketOrder("BUY", 1))
        await ib.errors.wait_for(200, trade.order.orderId)
        await wait_until(ib, lambda: _done(trade))


async def test_reject_201_insufficient_margin_then_inactive(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, MarketOrder("BUY", 100_000))  # $23M, 25% margin > $1M
        _, _, message = await ib.errors.wait_for(201, trade.order.orderId)
        assert message.startswith("Order rejected")
        await wait_until(ib, lambda: trade.orderStatus.status == "Inactive")
        assert (await paper_tws.state())["positions"] == []


async def test_reject_321_limit_order_without_price(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, Order(action="BUY", totalQuantity=1, orderType="LMT"))
        _, _, message = await ib.errors.wait_for(321, trade.order.orderId)
        assert message.startswith("Error validating request")
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")


async def test_reject_321_order_without_exchange(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        bare = Contract(conId=aapl.conId)  # what the real capture shows: 321, missing exchange
        trade = ib.placeOrder(bare, LimitOrder("BUY", 1, 200.0))
        _, _, message = await ib.errors.wait_for(321, trade.order.orderId)
        assert message.endswith("Missing order exchange.")
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
