"""Combos (BAG) at the paper TWS through the IB client library: a straddle and a vertical
placed, quoted and filled as one unit (an execution per leg and one for the BAG, positions and
commission per leg), combo brackets to the take-profit and to the stop, cancel and modify, a
credit combo at a negative price, a bad leg refused; and the order-attribute refusals
(10268/10269) and exact average prices found driving the paper TWS with the official client."""

from __future__ import annotations

import asyncio

import pytest

from tests.iblib import (
    ComboLeg,
    Contract,
    LimitOrder,
    MarketOrder,
    Option,
    Stock,
)
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib

BAG_CON_ID = 28812380


async def _options(ib, *specs):
    """Qualified AAPL options of the second expiry: specs are (strike, right)."""
    aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
    chains = await ib.reqSecDefOptParamsAsync("AAPL", "", "STK", aapl.conId)
    expiry = next(ch for ch in chains if ch.exchange == "SMART").expirations[1]
    return [await qualify_one(ib, Option("AAPL", expiry, strike, right, "SMART"))
            for strike, right in specs]


def _bag(*legs):
    """A BAG of (contract, action[, ratio]) legs, as a user of either library builds it."""
    combo = Contract(secType="BAG", symbol="AAPL", exchange="SMART", currency="USD")
    combo.comboLegs = [ComboLeg(conId=c.conId, ratio=(rest[0] if rest else 1), action=action,
                                exchange="SMART") for c, action, *rest in legs]
    return combo


async def _prices(paper_tws, *pairs):
    for contract, price in pairs:
        await paper_tws.set_price(con_id=contract.conId, price=price)


def _bag_fills(trade):
    return [f for f in trade.fills if f.contract.secType == "BAG"]


def _leg_fills(trade):
    return {f.contract.conId: f for f in trade.fills if f.contract.secType != "BAG"}


def _position(ib, con_id):
    return next((p for p in ib.positions() if p.contract.conId == con_id), None)


async def test_straddle_quoted_and_filled_as_one(paper_tws):
    async with connected(paper_tws) as ib:
        call, put = await _options(ib, (230.0, "C"), (230.0, "P"))
        await _prices(paper_tws, (call, 10.0), (put, 8.0))
        straddle = _bag((call, "BUY"), (put, "BUY"))
        ticker = ib.reqMktData(straddle, "", False, False)
        # bid = sum of the legs' bids, ask = sum of the asks (options: 2-tick half spread)
        await wait_until(ib, lambda: ticker.bid == 17.96 and ticker.ask == 18.04
                         and ticker.last == 18.0, what="combo quote")
        [snapshot] = await ib.reqTickersAsync(straddle)  # snapshot: ends with tickSnapshotEnd
        assert (snapshot.bid, snapshot.ask, snapshot.last) == (17.96, 18.04, 18.0)
        trade = ib.placeOrder(straddle, LimitOrder("BUY", 2, 17.50, orderRef="straddle"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        await paper_tws.set_price(con_id=call.conId, price=9.40)  # combo last 17.40 <= 17.50
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled"
                         and len(trade.fills) == 3
                         and all(f.commissionReport.commission for f in _leg_fills(trade).values()),
                         what="straddle filled")
        await wait_until(ib, lambda: ticker.last == 17.4, what="combo re-quoted on a leg move")
        assert trade.orderStatus.avgFillPrice == 17.5 and trade.orderStatus.filled == 2
        [bag_fill] = _bag_fills(trade)
        assert bag_fill.contract.conId == BAG_CON_ID and bag_fill.execution.shares == 2
        assert bag_fill.execution.price == 17.5 and bag_fill.execution.side == "BOT"
        legs = _leg_fills(trade)
        assert set(legs) == {call.conId, put.conId}
        assert all(f.contract.secType == "OPT" and f.execution.side == "BOT"
                   and f.execution.shares == 2 for f in legs.values())
        assert all(f.execution.permId == bag_fill.execution.permId for f in legs.values())
        # the leg prices add up to the combo price: 9.50 + 8.00
        assert legs[call.conId].execution.price + legs[put.conId].execution.price == 17.5
        assert [legs[c.conId].commissionReport.commission for c in (call, put)] == [1.3, 1.3]
        await wait_until(ib, lambda: _position(ib, call.conId) and _position(ib, put.conId),
                         what="leg positions")
        assert _position(ib, call.conId).position == 2 and _position(ib, put.conId).position == 2
        assert _position(ib, call.conId).avgCost == pytest.approx(9.5 * 100 + 0.65)
        state = await paper_tws.state()
        assert {p["secType"] for p in state["positions"]} == {"OPT"}  # no BAG position
        assert [e["secType"] for e in state["executions"]] == ["OPT", "OPT", "BAG"]
        ib.cancelMktData(straddle)


async def test_vertical_market_order_what_if_and_fill(paper_tws):
    async with connected(paper_tws) as ib:
        long_call, short_call = await _options(ib, (230.0, "C"), (240.0, "C"))
        await _prices(paper_tws, (long_call, 10.0), (short_call, 4.0))
        vertical = _bag((long_call, "BUY"), (short_call, "SELL"))
        state = await ib.whatIfOrderAsync(vertical, MarketOrder("BUY", 1))
        # a debit spread needs its max loss (6.04 x 100 at the ask), not a naked short call
        assert float(state.initMarginChange) == pytest.approx(604.0)
        assert float(state.commission) == pytest.approx(2.0)  # $1 minimum per leg
        trade = ib.placeOrder(vertical, MarketOrder("BUY", 1, orderRef="vertical"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled"
                         and len(trade.fills) == 3, what="vertical filled")
        assert trade.orderStatus.avgFillPrice == 6.04  # the combo ask: 10.02 - 3.98
        legs = _leg_fills(trade)
        assert legs[long_call.conId].execution.side == "BOT"
        assert legs[short_call.conId].execution.side == "SLD"
        assert legs[long_call.conId].execution.price - legs[short_call.conId].execution.price \
            == pytest.approx(6.04)
        await wait_until(ib, lambda: _position(ib, short_call.conId), what="short leg position")
        assert _position(ib, long_call.conId).position == 1
        assert _position(ib, short_call.conId).position == -1


async def _combo_bracket(ib, paper_tws, ref):
    long_call, short_call = await _options(ib, (230.0, "C"), (240.0, "C"))
    await _prices(paper_tws, (long_call, 10.0), (short_call, 4.0))
    vertical = _bag((long_call, "BUY"), (short_call, "SELL"))
    bracket = ib.bracketOrder("BUY", 1, 6.00, 8.00, 5.00, orderRef=ref)
    entry, take_profit, stop = [ib.placeOrder(vertical, o) for o in bracket]
    await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                     and take_profit.orderStatus.status == "Submitted"
                     and stop.orderStatus.status == "Submitted", what="combo entry filled")
    assert entry.orderStatus.avgFillPrice == 6.0
    assert take_profit.order.parentId == entry.order.orderId == stop.order.parentId
    return long_call, short_call, entry, take_profit, stop


async def test_combo_bracket_take_profit_cancels_the_stop(paper_tws):
    async with connected(paper_tws) as ib:
        long_call, short_call, _entry, take_profit, stop = await _combo_bracket(
            ib, paper_tws, "cb-tp")
        await paper_tws.set_price(con_id=long_call.conId, price=12.0)  # combo 8.00
        await wait_until(ib, lambda: take_profit.orderStatus.status == "Filled"
                         and stop.orderStatus.status == "Cancelled", what="TP filled, SL cancelled")
        assert take_profit.orderStatus.avgFillPrice == 8.0
        legs = _leg_fills(take_profit)
        assert legs[long_call.conId].execution.side == "SLD"   # selling the combo reverses legs
        assert legs[short_call.conId].execution.side == "BOT"
        state = await paper_tws.state()
        assert {p["conId"]: p["position"] for p in state["positions"]} == {
            long_call.conId: 0, short_call.conId: 0}
        # realized: (8.00 - 6.00) x 100 minus 4 leg commissions of $1
        assert state["pnl"]["realized"] == pytest.approx(200.0 - 4.0)


async def test_combo_bracket_stop_cancels_the_take_profit(paper_tws):
    async with connected(paper_tws) as ib:
        long_call, _, _entry, take_profit, stop = await _combo_bracket(ib, paper_tws, "cb-sl")
        await paper_tws.set_price(con_id=long_call.conId, price=8.90)  # combo 4.90 <= 5.00
        await wait_until(ib, lambda: stop.orderStatus.status == "Filled"
                         and take_profit.orderStatus.status == "Cancelled", what="SL filled")
        assert stop.orderStatus.avgFillPrice == 4.9
        assert [f.execution.side for f in _bag_fills(stop)] == ["SLD"]
        state = await paper_tws.state()
        assert all(p["position"] == 0 for p in state["positions"])


async def test_combo_bracket_modify_child_and_cancel_parent(paper_tws):
    async with connected(paper_tws) as ib:
        long_call, short_call = await _options(ib, (230.0, "C"), (240.0, "C"))
        await _prices(paper_tws, (long_call, 10.0), (short_call, 4.0))
        vertical = _bag((long_call, "BUY"), (short_call, "SELL"))
        bracket = ib.bracketOrder("BUY", 1, 5.50, 8.00, 4.50, orderRef="cb-mod")
        entry, take_profit, stop = [ib.placeOrder(vertical, o) for o in bracket]
        await wait_until(ib, lambda: entry.orderStatus.status == "Submitted"
                         and stop.orderStatus.status == "PreSubmitted", what="bracket working")
        take_profit.order.lmtPrice = 8.50
        ib.placeOrder(vertical, take_profit.order)
        orders = {}

        async def refresh():
            orders.clear()
            orders.update({o["orderId"]: o for o in (await paper_tws.state())["orders"]})
            return orders[take_profit.order.orderId]["lmtPrice"] == 8.5

        for _ in range(50):
            if await refresh():
                break
            await ib.updateEvent
        assert orders[take_profit.order.orderId]["lmtPrice"] == 8.5
        assert orders[take_profit.order.orderId]["secType"] == "BAG"
        assert [leg["conId"] for leg in orders[take_profit.order.orderId]["comboLegs"]] == [
            long_call.conId, short_call.conId]
        ib.cancelOrder(entry.order)
        await wait_until(ib, lambda: all(t.orderStatus.status == "Cancelled"
                                         for t in (entry, take_profit, stop)),
                         what="the whole bracket cancelled")
        assert not (await paper_tws.state())["executions"]


async def test_credit_combo_at_a_negative_price(paper_tws):
    async with connected(paper_tws) as ib:
        short_call, long_call = await _options(ib, (230.0, "C"), (240.0, "C"))
        await _prices(paper_tws, (short_call, 10.0), (long_call, 4.0))
        bear_call = _bag((short_call, "SELL"), (long_call, "BUY"))  # a credit: quoted negative
        ticker = ib.reqMktData(bear_call, "", False, False)
        await wait_until(ib, lambda: ticker.bid == -6.04 and ticker.ask == -5.96,
                         what="credit combo quote")
        trade = ib.placeOrder(bear_call, LimitOrder("BUY", 1, -6.20, orderRef="credit"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        await paper_tws.set_price(con_id=short_call.conId, price=10.20)  # combo -6.20
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled"
                         and len(trade.fills) == 3, what="credit combo filled")
        assert trade.orderStatus.avgFillPrice == -6.2
        legs = _leg_fills(trade)
        assert (legs[short_call.conId].execution.side, legs[short_call.conId].execution.price) \
            == ("SLD", 10.2)
        assert (legs[long_call.conId].execution.side, legs[long_call.conId].execution.price) \
            == ("BOT", 4.0)
        ib.cancelMktData(bear_call)


async def test_bad_leg_is_refused_and_nothing_changes(paper_tws):
    async with connected(paper_tws) as ib:
        [call] = await _options(ib, (230.0, "C"))
        combo = Contract(secType="BAG", symbol="AAPL", exchange="SMART", currency="USD")
        combo.comboLegs = [ComboLeg(conId=call.conId, ratio=1, action="BUY", exchange="SMART"),
                           ComboLeg(conId=999999, ratio=1, action="BUY", exchange="SMART")]
        trade = ib.placeOrder(combo, LimitOrder("BUY", 1, 5.0))
        _, _code, message = await ib.errors.wait_for(321, trade.order.orderId)
        assert "combo details for leg '2' are invalid" in message
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
        empty = Contract(secType="BAG", symbol="AAPL", exchange="SMART", currency="USD")
        refused = ib.placeOrder(empty, LimitOrder("BUY", 1, 5.0))
        _, _, message = await ib.errors.wait_for(321, refused.order.orderId)
        assert "requires combo leg details" in message
        state = await paper_tws.state()
        assert not state["orders"] and not state["executions"] and not state["positions"]
        # contract details of a BAG: TWS answers 321 (a warning to ib_async, which then never
        # ends the request, as against a real TWS), so the request is dropped here
        request = asyncio.ensure_future(ib.reqContractDetailsAsync(_bag((call, "BUY"))))
        await wait_until(ib, lambda: [i for i in ib.errors.items
                                      if "isn't supported for contract data" in i[2]],
                         what="321 for a BAG's contract details")
        request.cancel()


@pytest.mark.parametrize("attribute,code", [("eTradeOnly", 10268), ("firmQuoteOnly", 10269)])
async def test_etrade_only_and_firm_quote_only_are_refused(paper_tws, attribute, code):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        order = LimitOrder("BUY", 1, 229.0)
        setattr(order, attribute, True)
        trade = ib.placeOrder(aapl, order)
        _, _, message = await ib.errors.wait_for(code, trade.order.orderId)
        assert message == f"The '{ {'eTradeOnly': 'EtradeOnly'}.get(attribute, attribute) }' " \
                          f"order attribute is not supported."
        await wait_until(ib, lambda: trade.orderStatus.status == "Cancelled")
        assert not (await paper_tws.state())["orders"]


async def test_average_prices_are_exact(paper_tws):
    async with connected(paper_tws) as ib:
        await paper_tws.fill_qty(3)
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        await paper_tws.set_price("AAPL", 240.0)
        trade = ib.placeOrder(aapl, LimitOrder("BUY", 10, 233.71, orderRef="avg"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
        for price in (233.7, 233.69, 233.68, 233.67):
            await paper_tws.set_price("AAPL", price)
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
        assert trade.orderStatus.avgFillPrice == 233.71
        assert [repr(f.execution.avgPrice) for f in trade.fills] == ["233.71"] * 4
        await wait_until(ib, lambda: _position(ib, aapl.conId), what="position")
        assert repr(_position(ib, aapl.conId).avgCost) == "233.81"  # + $1 commission / 10
        await paper_tws.fill_qty(None)
        state = await paper_tws.state()
        assert [repr(o["avgFillPrice"]) for o in state["orders"]] == ["233.71"]


async def test_combo_orders_and_fills_are_seen_again_after_a_reconnect(paper_tws):
    async with connected(paper_tws) as ib:
        call, put = await _options(ib, (230.0, "C"), (230.0, "P"))
        await _prices(paper_tws, (call, 10.0), (put, 8.0))
        straddle = _bag((call, "BUY"), (put, "BUY"))
        filled = ib.placeOrder(straddle, MarketOrder("BUY", 1, orderRef="again-filled"))
        working = ib.placeOrder(straddle, LimitOrder("BUY", 1, 15.0, orderRef="again-working"))
        await wait_until(ib, lambda: filled.orderStatus.status == "Filled"
                         and working.orderStatus.status == "Submitted")
    async with connected(paper_tws) as ib:  # the same client id: its open orders come back
        [trade] = [t for t in ib.openTrades() if t.order.orderRef == "again-working"]
        assert trade.contract.secType == "BAG"
        assert [(leg.conId, leg.ratio, leg.action) for leg in trade.contract.comboLegs] == [
            (call.conId, 1, "BUY"), (put.conId, 1, "BUY")]
        fills = await ib.reqExecutionsAsync()
        assert sorted(f.contract.secType for f in fills) == ["BAG", "OPT", "OPT"]
        done = await ib.reqCompletedOrdersAsync(apiOnly=True)
        [completed] = [t for t in done if t.order.orderRef == "again-filled"]
        assert completed.contract.secType == "BAG" and len(completed.contract.comboLegs) == 2


async def test_credit_combo_bracket_to_the_stop(paper_tws):
    async with connected(paper_tws) as ib:
        short_call, long_call = await _options(ib, (230.0, "C"), (240.0, "C"))
        await _prices(paper_tws, (short_call, 10.0), (long_call, 4.0))
        bear_call = _bag((short_call, "SELL"), (long_call, "BUY"))  # quoted about -6.00
        # bought for a credit: P&L = (exit - entry) x 100, so TP above and the stop below
        bracket = ib.bracketOrder("BUY", 1, -6.00, -3.00, -8.00, orderRef="credit-br")
        entry, take_profit, stop = [ib.placeOrder(bear_call, o) for o in bracket]
        await wait_until(ib, lambda: entry.orderStatus.status == "Filled"
                         and stop.orderStatus.status == "Submitted", what="credit entry filled")
        assert entry.orderStatus.avgFillPrice == -6.0
        await paper_tws.set_price(con_id=short_call.conId, price=12.0)  # combo -8.00
        await wait_until(ib, lambda: stop.orderStatus.status == "Filled"
                         and take_profit.orderStatus.status == "Cancelled", what="credit stop")
        assert stop.orderStatus.avgFillPrice == -8.0
        state = await paper_tws.state()
        assert state["pnl"]["realized"] == pytest.approx((-8.0 + 6.0) * 100 - 4.0)
