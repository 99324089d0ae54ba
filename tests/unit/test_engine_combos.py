"""Brokerage engine combos (sim/combos.py) by hand: bad legs, atomic fills, leg prices that add
up, a combo bracket surviving a state-file round trip, the defined-risk margin bound."""

from __future__ import annotations

import json

import pytest
from bracketgate.sim import combos
from bracketgate.sim.engine import Brokerage
from bracketgate.sim.model import ComboLeg, OrderRejected

from tests.unit.engine_helpers import bracket, make_engine, order


def _options(eng, *specs):
    expiry = sorted({c.expiry for c in eng.universe.option_chain("AAPL")})[1]
    chain = eng.universe.option_chain("AAPL", expiry)
    return [next(c for c in chain if c.strike == k and c.right == r) for k, r in specs]


def _bag(eng, *legs):
    return combos.bag_contract(eng.universe, "AAPL", "USD", "SMART",
                               [ComboLeg(c.con_id, ratio, action) for c, action, ratio in legs])


@pytest.fixture
def env():
    return make_engine()


def test_bad_legs_are_321_and_name_the_leg(env):
    eng, _events, _clock = env
    [call] = _options(eng, (230.0, "C"))
    with pytest.raises(OrderRejected) as exc:
        combos.bag_contract(eng.universe, "AAPL", "USD", "SMART",
                            [ComboLeg(call.con_id, 1, "BUY"), ComboLeg(424242, 1, "SELL")])
    assert exc.value.code == 321 and "leg '2'" in exc.value.message
    assert "conid, ratio, side: 424242, 1, 2" in exc.value.message
    for legs in ([ComboLeg(call.con_id, 0, "BUY")], [ComboLeg(call.con_id, 1, "HOLD")],
                 [ComboLeg(call.con_id, 1, "BUY"), ComboLeg(call.con_id, 1, "SELL")],
                 [ComboLeg(eng.universe.stock("MSFT").con_id, 1, "BUY")]):
        with pytest.raises(OrderRejected) as exc:
            combos.bag_contract(eng.universe, "AAPL", "USD", "SMART", legs)
        assert exc.value.code == 321
    with pytest.raises(OrderRejected, match="requires combo leg details"):
        combos.bag_contract(eng.universe, "AAPL", "USD", "SMART", [])
    assert not eng.orders


def test_leg_prices_add_up_to_the_combo_price(env):
    eng, _events, _clock = env
    c1, c2 = _options(eng, (230.0, "C"), (240.0, "C"))
    legs = [(c1, ComboLeg(c1.con_id, 1, "BUY")), (c2, ComboLeg(c2.con_id, 2, "SELL"))]
    for target in (1.37, -0.05, 0.0, 2.0):
        pxs = combos.leg_prices(legs, [10.0, 4.0], target)
        assert all(p > 0 for p in pxs)
        assert round(pxs[0] - 2 * pxs[1], 8) == target
    # the first leg cannot go below zero: the difference goes to the SELL leg instead
    pxs = combos.leg_prices(legs, [0.5, 4.0], -9.0)
    assert pxs == [0.5, 4.75]


def test_combo_bracket_fills_atomically_and_survives_a_state_round_trip(env):
    eng, _events, clock = env
    c1, c2 = _options(eng, (230.0, "C"), (240.0, "C"))
    eng.set_price(c1.con_id, 10.0)
    eng.set_price(c2.con_id, 4.0)
    bag = _bag(eng, (c1, "BUY", 1), (c2, "SELL", 1))
    parent, _tp, _sl = bracket(eng, bag, 1, "BUY", 3, 6.0, 8.0, 5.0, order_ref="cb")
    assert parent.status == "Filled" and parent.avg_fill_price == 6.0
    assert [(e.contract.sec_type, e.side, e.shares) for e in eng.executions] == [
        ("OPT", "BOT", 3), ("OPT", "SLD", 3), ("BAG", "BOT", 3)]
    assert eng.position(c1.con_id).quantity == 3 and eng.position(c2.con_id).quantity == -3
    assert eng.executions[-1].commission == 0.0
    assert sum(e.commission for e in eng.executions) == pytest.approx(2 * 3 * 0.65)
    state = json.loads(json.dumps(eng.to_dict()))
    again = Brokerage.from_dict(state, eng.universe, clock=clock)
    assert again.to_dict() == eng.to_dict()
    assert again.order(1, 2).contract.combo_legs == bag.combo_legs
    again.set_price(c1.con_id, 8.9)  # combo 4.90: the stop
    assert again.order(1, 3).status == "Filled" and again.order(1, 2).status == "Cancelled"
    assert again.position(c1.con_id).quantity == 0 and again.position(c2.con_id).quantity == 0
    assert again.account.realized_pnl_today == pytest.approx((4.9 - 6.0) * 300 - 4 * 1.95)


def test_modify_cannot_change_the_legs(env):
    eng, _events, _clock = env
    c1, c2, c3 = _options(eng, (230.0, "C"), (240.0, "C"), (250.0, "C"))
    eng.place(order(_bag(eng, (c1, "BUY", 1), (c2, "SELL", 1)), 1, "BUY", 1, "LMT", 1.0))
    with pytest.raises(OrderRejected) as exc:
        eng.place(order(_bag(eng, (c1, "BUY", 1), (c3, "SELL", 1)), 1, "BUY", 1, "LMT", 1.0))
    assert exc.value.code == 105


def test_max_loss_bounds_defined_risk_only(env):
    eng, _events, _clock = env
    call, put, c240 = _options(eng, (230.0, "C"), (230.0, "P"), (240.0, "C"))

    def bound(side, *legs_prices):
        legs = [(c, ComboLeg(c.con_id, 1, a)) for c, a, _ in legs_prices]
        return combos.max_loss(legs, [p for _, _, p in legs_prices], side)

    assert bound(1, (call, "BUY", 10.0), (put, "BUY", 8.0)) == pytest.approx(1800.0)
    assert bound(1, (call, "BUY", 10.0), (c240, "SELL", 4.0)) == pytest.approx(600.0)
    assert bound(1, (call, "SELL", 10.0), (c240, "BUY", 4.0)) == pytest.approx(400.0)
    assert bound(-1, (call, "BUY", 10.0), (c240, "SELL", 4.0)) == pytest.approx(400.0)
    assert bound(-1, (call, "BUY", 10.0), (put, "BUY", 8.0)) is None   # a short straddle
    what_if = eng.what_if(order(_bag(eng, (call, "BUY", 1), (c240, "SELL", 1)), 9, "BUY", 2,
                                "LMT", 6.5))
    assert what_if.init_margin_change <= 2 * 650.0 + 1e-9


def test_partial_combo_fills_keep_every_leg_in_step(env):
    eng, _events, _clock = env
    call, put = _options(eng, (230.0, "C"), (230.0, "P"))
    eng.set_price(call.con_id, 10.0)
    eng.set_price(put.con_id, 8.0)
    eng.set_price_fill_qty(1)
    straddle = _bag(eng, (call, "BUY", 1), (put, "BUY", 2))      # 1 call + 2 puts per combo
    o = eng.place(order(straddle, 1, "BUY", 3, "LMT", 25.0))      # last 26.00: not marketable
    assert o.status == "Submitted" and not eng.executions
    for n, price in enumerate((9.0, 8.9, 8.8), start=1):        # combo last 25.00, 24.90, 24.80
        eng.set_price(call.con_id, price)
        assert o.filled == n
        assert eng.position(call.con_id).quantity == n
        assert eng.position(put.con_id).quantity == 2 * n
    assert o.status == "Filled" and o.avg_fill_price == 25.0
    puts = [e for e in eng.executions if e.contract.con_id == put.con_id]
    assert [(e.shares, e.cum_qty) for e in puts] == [(2, 2), (2, 4), (2, 6)]
    bags = [e for e in eng.executions if e.contract.sec_type == "BAG"]
    assert [(e.shares, e.cum_qty, e.price) for e in bags] == [
        (1, 1, 25.0), (1, 2, 25.0), (1, 3, 25.0)]
    # commission per leg order: 2 puts a fill at $0.65 each (above the $1 minimum)
    assert [e.commission for e in puts] == [pytest.approx(1.3)] * 3
