"""Brokerage engine: positions, avgCost, P&L, account values, what-if, persistence (by hand)."""

from __future__ import annotations

import json

import pytest

from bracketgate.sim.engine import Brokerage
from bracketgate.sim.model import UNSET_DOUBLE, OrderRejected
from tests.unit.engine_helpers import AS_OF, Clock, bracket, make_engine, order

approx = pytest.approx


@pytest.fixture
def env():
    eng, events, clock = make_engine()
    return eng, events, clock


def values(eng: Brokerage) -> dict[tuple[str, str], str]:
    return {(tag, ccy): value for tag, value, ccy in eng.account_values()}


def test_stock_round_trip_by_hand(env):
    eng, _events, _clock = env
    aapl = eng.universe.stock("AAPL")
    # BUY 100 MKT at the ask 230.01, commission max(100 * 0.005, 1.00) = 1.00
    eng.place(order(aapl, 1, "BUY", 100, "MKT"))
    pos = eng.position(aapl.con_id)
    assert pos.quantity == 100
    assert pos.avg_cost == approx(230.02)                      # (23001 + 1) / 100
    assert eng.executions[0].realized_pnl is None              # opening fill
    assert eng.account.cash == approx(1_000_000 - 23_002)
    eng.set_price(aapl.con_id, 232.00)
    daily, unrealized, realized = eng.pnl()
    assert unrealized == approx((232.00 - 230.02) * 100)       # 198.00
    assert daily == approx(198.00) and realized == 0
    assert eng.pnl_single(aapl.con_id) == (100, approx(198.0), approx(198.0), 0.0, approx(23_200.0))
    # SELL 100 LMT 232.00: marketable, fills at max(232.00, bid 231.99) = 232.00
    eng.place(order(aapl, 2, "SELL", 100, "LMT", 232.00))
    ex = eng.executions[-1]
    assert (ex.price, ex.commission) == (232.00, 1.00)
    assert ex.realized_pnl == approx((232.00 - 230.02) * 100 - 1.00)   # 197.00
    assert eng.account.cash == approx(1_000_000 + 197.00)
    assert eng.pnl() == (approx(197.0), approx(0.0), approx(197.0))
    pos = eng.position(aapl.con_id)
    assert (pos.quantity, pos.avg_cost, pos.realized_pnl) == (0, 0, approx(197.0))
    assert eng.pnl_single(aapl.con_id) == (0, approx(197.0), 0.0, approx(197.0), 0.0)
    assert eng.positions() == [pos]                            # zeroed today is still listed


def test_short_stock_avg_cost_subtracts_commission(env):
    eng, _events, _clock = env
    tsla = eng.universe.stock("TSLA")                          # 250.00, bid 249.99
    eng.place(order(tsla, 1, "SELL", 300, "MKT"))              # commission 300 * 0.005 = 1.50
    pos = eng.position(tsla.con_id)
    assert pos.quantity == -300
    assert pos.avg_cost == approx(249.99 - 1.50 / 300)         # 249.985
    eng.set_price(tsla.con_id, 240.00)
    assert eng.pnl()[1] == approx((240.00 - 249.985) * -300)   # +2995.50
    eng.place(order(tsla, 2, "BUY", 100, "LMT", 240.00))       # fills at min(240, ask 240.01)
    assert eng.executions[-1].realized_pnl == approx((249.985 - 240.00) * 100 - 1.00)
    assert eng.position(tsla.con_id).quantity == -200
    assert eng.position(tsla.con_id).avg_cost == approx(249.985)


def test_es_future_by_hand(env):
    eng, _events, _clock = env
    es = eng.universe.front_future("ES")
    assert (es.local_symbol, es.multiplier, es.min_tick) == ("ESZ6", 50.0, 0.25)
    # BUY 2 MKT at the ask 5900.25; commission 2 * 0.85 = 1.70
    eng.place(order(es, 1, "BUY", 2, "MKT"))
    pos = eng.position(es.con_id)
    assert pos.avg_cost == approx(5900.25 * 50 + 0.85)         # 295013.35
    assert eng.account.cash == approx(1_000_000 - 1.70)        # futures: only the commission
    eng.set_price(es.con_id, 5910.00)
    unrealized = (5910.00 * 50 - 295_013.35) * 2                # 973.30
    assert eng.pnl() == (approx(unrealized), approx(unrealized), 0.0)
    v = values(eng)
    assert v[("NetLiquidation", "USD")] == "1000973.30"
    assert v[("InitMarginReq-C", "USD")] == "44000.00"
    assert v[("MaintMarginReq-C", "USD")] == "40000.00"
    assert v[("InitMarginReq-S", "USD")] == "0.00"
    assert v[("GrossPositionValue", "USD")] == "0.00"          # futures are not in GPV
    assert v[("FuturesPNL", "USD")] == "973.30"
    # SELL 1 LMT 5920.00 rests above the market, fills at its limit when 5920 trades; 0.85
    eng.place(order(es, 2, "SELL", 1, "LMT", 5920.00))
    assert eng.executions[-1].side == "BOT"
    eng.set_price(es.con_id, 5920.00)
    realized = 5920.00 * 50 - 295_013.35 - 0.85                # 985.80
    assert eng.executions[-1].realized_pnl == approx(realized)
    assert eng.executions[-1].liquidity == 1                   # resting limit added liquidity
    assert eng.account.cash == approx(1_000_000 - 1.70 + (5920.00 - 5900.25) * 50 - 0.85)
    upnl = 5920.00 * 50 - 295_013.35                            # 986.65 on the remaining one
    assert eng.pnl_single(es.con_id) == (1, approx(realized + upnl), approx(upnl),
                                         approx(realized), approx(296_000.0))
    assert eng.pnl() == (approx(realized + upnl), approx(upnl), approx(realized))
    assert eng.position(es.con_id).avg_cost == approx(295_013.35)


def test_pnl_single_without_position_is_unset(env):
    eng, _events, _clock = env
    assert eng.pnl_single(eng.universe.stock("NVDA").con_id) == (0,) + (UNSET_DOUBLE,) * 4


def test_account_values_tag_set_and_format(env):
    eng, _events, _clock = env
    rows = eng.account_values()
    assert len(rows) == 153                                     # as the TWS 176 capture
    v = values(eng)
    for tag in ("NetLiquidation", "AvailableFunds", "BuyingPower", "ExcessLiquidity",
                "EquityWithLoanValue", "InitMarginReq", "MaintMarginReq", "FullInitMarginReq",
                "FullMaintMarginReq", "TotalCashValue", "GrossPositionValue"):
        assert (tag, "USD") in v
    for tag in ("CashBalance", "UnrealizedPnL", "RealizedPnL", "NetLiquidationByCurrency"):
        assert v[(tag, "BASE")] == v[(tag, "USD")]
    assert v[("NetLiquidation", "USD")] == "1000000.00"
    assert v[("NetLiquidation-S", "USD")] == "1000000.00"
    assert v[("NetLiquidation-C", "USD")] == "0.00"
    assert v[("Cushion", "")] == "1" and v[("AccountReady", "")] == "true"
    assert v[("AccountCode", "")] == "DU1234567" and v[("Currency", "BASE")] == "BASE"
    assert v[("DayTradesRemaining", "")] == "-1" and v[("Leverage-S", "")] == "0.00"


def test_account_values_with_stock_position(env):
    eng, _events, _clock = env
    aapl = eng.universe.stock("AAPL")
    eng.place(order(aapl, 1, "BUY", 1000, "MKT"))             # 230.01, commission 5.00
    eng.set_price(aapl.con_id, 230.00)
    netliq = 1_000_000 - 1000 * 230.01 - 5.00 + 1000 * 230.00  # 999985.00
    init = 0.25 * 230_000
    assert eng.account_value("NetLiquidation") == approx(netliq)
    assert eng.account_value("GrossPositionValue") == approx(230_000)
    assert eng.account_value("InitMarginReq") == approx(init)
    assert eng.account_value("AvailableFunds") == approx(netliq - init)
    assert eng.account_value("ExcessLiquidity") == approx(netliq - init)
    assert eng.account_value("BuyingPower") == approx(4 * (netliq - init))
    assert eng.account_value("TotalCashValue") == approx(1_000_000 - 230_015.0)
    assert eng.account_value("StockMarketValue") == approx(230_000)
    assert eng.account_value("UnrealizedPnL") == approx(230_000 - 230_015.0)
    assert values(eng)[("Cushion", "")] == f"{(netliq - init) / netliq:.6f}"


def test_what_if_creates_nothing(env):
    eng, events, _clock = env
    aapl = eng.universe.stock("AAPL")
    before = eng.to_dict()
    result = eng.what_if(order(aapl, 1, "BUY", 100, "MKT"))
    assert result.init_margin_before == 0 and result.equity_with_loan_before == approx(1_000_000)
    assert result.init_margin_after == approx(0.25 * 100 * 230.00)
    assert result.maint_margin_change == approx(0.25 * 100 * 230.00)
    assert result.commission == 1.00
    assert result.equity_with_loan_change == approx(-1.00 - 100 * 0.01)   # commission + spread
    assert eng.to_dict() == before and events == []
    eng.place(order(aapl, 1, "BUY", 100, "MKT"))               # the id was not consumed
    with pytest.raises(OrderRejected) as exc:
        eng.what_if(order(aapl, 2, "BUY", 100, "LMT", 230.001))
    assert exc.value.code == 110


def test_what_if_future_margin(env):
    eng, _events, _clock = env
    nq = eng.universe.front_future("NQ")
    result = eng.what_if(order(nq, 1, "SELL", 3, "LMT", 20900.00))
    assert result.init_margin_after == 3 * 32_000 and result.maint_margin_after == 3 * 29_000
    assert result.commission == approx(2.55)


def test_persistence_round_trip(env):
    eng, _events, clock = env
    aapl = eng.universe.stock("AAPL")
    es = eng.universe.front_future("ES")
    eng.place(order(es, 1, "BUY", 1, "MKT", order_ref="fut"))
    parent, tp, sl = bracket(eng, aapl, 2, "BUY", 100, 229.0, 235.0, 225.0, order_ref="b")
    eng.place(order(aapl, 5, "SELL", 10, "LMT", 250.0, transmit=False))  # held
    eng.place(order(aapl, 9, "SELL", 5, "STP LMT", 210.0, 215.0, client_id=3))
    eng.set_price(aapl.con_id, 228.0)
    eng.set_price(es.con_id, 5890.0)
    state = json.loads(json.dumps(eng.to_dict()))
    again = Brokerage.from_dict(state, eng.universe, clock=clock)
    assert again.to_dict() == eng.to_dict()
    assert again.pnl() == eng.pnl() and again.account_values() == eng.account_values()
    # behaviour survives: ids, perm ids, bracket links
    with pytest.raises(OrderRejected) as exc:
        again.place(order(es, 1, "BUY", 1, "MKT"))            # filled before the save
    assert exc.value.code == 104                         # a filled order: 104
    new = again.place(order(aapl, 10, "BUY", 1, "LMT", 200.0))
    assert new.perm_id not in eng.orders
    again.set_price(aapl.con_id, 235.0)
    assert again.order(1, 3).status == "Filled" and again.order(1, 4).status == "Cancelled"
    assert again.order(1, 5).status == "PreSubmitted"


def test_reset_returns_to_initial_state(env):
    eng, _events, _clock = env
    fresh = eng.to_dict()
    aapl = eng.universe.stock("AAPL")
    eng.place(order(aapl, 1, "BUY", 100, "MKT"))
    eng.set_price(aapl.con_id, 240.0)
    eng.reset()
    assert eng.to_dict() == fresh
    assert eng.price(aapl.con_id) == 230.00


def test_roll_day_sets_start_of_day(env):
    eng, _events, _clock = env
    aapl = eng.universe.stock("AAPL")
    eng.place(order(aapl, 1, "BUY", 100, "MKT"))
    eng.place(order(aapl, 2, "SELL", 100, "LMT", 260.0))
    eng.set_price(aapl.con_id, 240.0)
    netliq = eng.account_value("NetLiquidation")
    eng.roll_day()
    assert eng.pnl() == (approx(0.0), approx((240.0 - 230.02) * 100), 0.0)
    assert eng.account.start_of_day_net_liq == approx(netliq)
    assert eng.order(1, 2) is None and eng.executions == []
    eng.set_price(aapl.con_id, 241.0)
    assert eng.pnl_single(aapl.con_id)[1] == approx(100.0)
    with pytest.raises(OrderRejected):
        eng.place(order(aapl, 2, "BUY", 1, "MKT"))               # ids stay used


def test_clock_is_injected(env):
    eng, _events, clock = env
    aapl = eng.universe.stock("AAPL")
    clock.t = 1_900_000_000.0
    placed = eng.place(order(aapl, 1, "BUY", 1, "MKT"))
    assert placed.created_at == placed.completed_at == eng.executions[0].time == 1_900_000_000.0
    assert eng.executions[0].exec_id.split(".")[1] == f"{1_900_000_000:08x}"


def test_deterministic_runs():
    def run():
        eng, events, _ = make_engine(Clock())
        aapl = eng.universe.stock("AAPL")
        bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
        for px in (228.0, 231.0, 224.0):
            eng.set_price(aapl.con_id, px)
        return eng.to_dict(), [repr(e) for e in events]
    assert run() == run()
    assert AS_OF.isoformat() == "2026-11-20"


def test_flip_long_to_short_splits_commission(env):
    eng, _events, _clock = env
    es = eng.universe.front_future("ES")
    eng.place(order(es, 1, "BUY", 1, "MKT"))                  # 5900.25, avg 295013.35
    eng.set_price(es.con_id, 5950.00)
    eng.place(order(es, 2, "SELL", 3, "MKT"))                 # bid 5949.75, commission 2.55
    ex = eng.executions[-1]
    assert ex.price == 5949.75 and ex.commission == approx(2.55)
    assert ex.realized_pnl == approx(5949.75 * 50 - 295_013.35 - 0.85)
    pos = eng.position(es.con_id)
    assert pos.quantity == -2 and pos.avg_cost == approx(5949.75 * 50 - 0.85)
    eng.set_price(es.con_id, 5940.00)
    daily, unrealized, realized = eng.pnl()
    assert unrealized == approx((5940.00 * 50 - (5949.75 * 50 - 0.85)) * -2)
    assert daily == approx(unrealized + realized)          # nothing carried from yesterday
    assert eng.account_value("InitMarginReq") == 2 * 22_000


def test_short_option_margin_and_premium_cash(env):
    eng, _events, _clock = env
    put = eng.universe.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=220,
                            right="P")[0]
    px = eng.price(put.con_id)
    eng.place(order(put, 1, "SELL", 2, "MKT"))                 # at the bid: 2 ticks under
    fill = eng.executions[-1].price
    assert fill == approx(px - 0.02)
    assert eng.account.cash == approx(1_000_000 + fill * 200 - 1.30)
    spot = 230.00
    per = px * 100 + max(0.2 * spot * 100 - (spot - 220) * 100, 0.1 * 220 * 100)
    assert eng.account_value("InitMarginReq") == approx(2 * per)
