"""Positions, portfolio, account values and P&L streams after fills and price moves."""

from __future__ import annotations

import math

import pytest

from tests.iblib import MarketOrder, Stock
from tests.sim.support import account_value, connected, qualify_one, wait_until

pytestmark = pytest.mark.ib

ACCOUNT = "DU1234567"


async def _buy_aapl(ib, qty=10):
    aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
    trade = ib.placeOrder(aapl, MarketOrder("BUY", qty, orderRef="acct"))
    await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
    return aapl, trade


async def test_positions_and_portfolio_follow_fills_and_prices(paper_tws):
    async with connected(paper_tws) as ib:
        seen = []
        ib.positionEvent += seen.append
        aapl, _ = await _buy_aapl(ib)
        await wait_until(ib, lambda: ib.positions() and ib.portfolio(), what="position")
        [pos] = ib.positions()
        assert pos.account == ACCOUNT and pos.contract.conId == aapl.conId
        assert pos.position == 10
        assert pos.avgCost == pytest.approx((230.01 * 10 + 1.0) / 10)  # price + commission
        assert seen and seen[-1].position == 10
        await paper_tws.set_price("AAPL", 240.0)
        await wait_until(ib, lambda: ib.portfolio()[0].marketPrice == 240.0, what="portfolio")
        [item] = ib.portfolio()
        assert item.marketValue == pytest.approx(2400.0)
        assert item.unrealizedPNL == pytest.approx(2400.0 - 2301.1)
        assert item.averageCost == pytest.approx(230.11)
        # a second client sees the same account-wide position at connect
        async with connected(paper_tws, 2) as other:
            [p2] = other.positions()
            assert p2.position == 10 and p2.contract.conId == aapl.conId


async def test_account_values_move_with_fills_and_prices(paper_tws):
    async with connected(paper_tws) as ib:
        assert account_value(ib, "NetLiquidation") == pytest.approx(1_000_000.0)
        assert account_value(ib, "GrossPositionValue") == 0
        await _buy_aapl(ib)
        # bought 10 @ 230.01 (the ask) with $1 commission, marked at last 230.00
        await wait_until(ib, lambda: account_value(ib, "GrossPositionValue") == 2300.0)
        assert account_value(ib, "NetLiquidation") == pytest.approx(1_000_000 - 1.0 - 0.1)
        assert account_value(ib, "TotalCashValue") == pytest.approx(1_000_000 - 2300.1 - 1.0)
        assert account_value(ib, "InitMarginReq") == pytest.approx(0.25 * 2300.0)
        await paper_tws.set_price("AAPL", 240.0)
        await wait_until(ib, lambda: account_value(ib, "GrossPositionValue") == 2400.0)
        net_liq = account_value(ib, "NetLiquidation")
        assert net_liq == pytest.approx(1_000_000 - 1.0 + (240.0 - 230.01) * 10)
        assert account_value(ib, "EquityWithLoanValue") == pytest.approx(net_liq)
        assert account_value(ib, "AvailableFunds") == pytest.approx(net_liq - 0.25 * 2400.0)
        assert account_value(ib, "BuyingPower") == pytest.approx(
            4 * account_value(ib, "AvailableFunds"), rel=1e-6)
        expected = {tag: value for tag, value in (await paper_tws.state())["accountValues"].items()}
        assert float(expected["NetLiquidation"]) == pytest.approx(net_liq)


async def test_pnl_and_pnl_single_after_a_fill(paper_tws):
    async with connected(paper_tws) as ib:
        aapl, _ = await _buy_aapl(ib)
        pnl = ib.reqPnL(ACCOUNT)
        single = ib.reqPnLSingle(ACCOUNT, "", aapl.conId)
        await wait_until(ib, lambda: single.position == 10, what="pnlSingle")
        await paper_tws.set_price("AAPL", 240.0)
        upnl = 2400.0 - 2301.1
        await wait_until(ib, lambda: pnl.unrealizedPnL == pytest.approx(upnl)
                         and single.unrealizedPnL == pytest.approx(upnl), what="P&L move")
        assert pnl.dailyPnL == pytest.approx(upnl)
        assert pnl.realizedPnL == pytest.approx(0.0)
        assert single.value == pytest.approx(2400.0)
        assert single.dailyPnL == pytest.approx(upnl)
        # close the position: realized = proceeds at the bid - cost - commission
        sell = ib.placeOrder(aapl, MarketOrder("SELL", 10))
        await wait_until(ib, lambda: sell.orderStatus.status == "Filled")
        realized = 239.99 * 10 - 2301.1 - 1.0
        await wait_until(ib, lambda: pnl.realizedPnL == pytest.approx(realized)
                         and single.position == 0, what="realized P&L")
        assert pnl.unrealizedPnL == pytest.approx(0.0)
        assert single.realizedPnL == pytest.approx(realized)
        [fill] = sell.fills
        assert fill.commissionReport.realizedPNL == pytest.approx(realized)


async def test_pnl_single_without_a_position_is_unset(paper_tws):
    async with connected(paper_tws) as ib:
        msft = await qualify_one(ib, Stock("MSFT", "SMART", "USD"))
        single = ib.reqPnLSingle(ACCOUNT, "", msft.conId)
        await ib.reqCurrentTimeAsync()  # round trip: the first pnlSingle has arrived
        assert single.position == 0
        for value in (single.dailyPnL, single.unrealizedPnL, single.value):
            assert math.isnan(value) or value > 1e300  # TWS's unset double


async def test_account_summary_streams_changes(paper_tws):
    async with connected(paper_tws) as ib:
        latest: dict[tuple[str, str], float] = {}
        ib.accountSummaryEvent += lambda v: latest.__setitem__((v.tag, v.currency), float(v.value))
        summary = await ib.accountSummaryAsync(ACCOUNT)
        tags = {v.tag: float(v.value) for v in summary if v.currency == "USD" and
                v.tag in ("NetLiquidation", "BuyingPower", "GrossPositionValue")}
        assert tags == {"NetLiquidation": 1_000_000.0, "BuyingPower": 4_000_000.0,
                        "GrossPositionValue": 0.0}
        await _buy_aapl(ib)
        await wait_until(ib, lambda: latest.get(("GrossPositionValue", "USD")) == 2300.0,
                         what="summary update")
