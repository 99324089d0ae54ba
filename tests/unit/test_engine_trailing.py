"""Brokerage engine: TRAIL / TRAIL LIMIT orders, modify refusals and named OCA groups across
brackets (sim/trailing.py, sim/modify.py, sim/oca.py). No sockets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bracketgate.sim.engine import Brokerage
from bracketgate.sim.model import OrderChanged, OrderRejected
from tests.unit.engine_helpers import bracket, make_engine, order


@pytest.fixture
def env():
    eng, events, _clock = make_engine()
    return eng, events, eng.universe.stock("AAPL")     # AAPL at 230.00, tick 0.01


def trail(contract, order_id, action, qty, *, amount=None, pct=None, stop=None, offset=None,
          lmt=None, **kw):
    base = order(contract, order_id, action, qty, "TRAIL LIMIT" if offset or lmt else "TRAIL",
                 lmt=lmt, aux=amount, **kw)
    return dataclasses.replace(base, trailing_percent=pct, trail_stop_price=stop,
                               lmt_price_offset=offset)


def rejected(eng, o) -> tuple[int, str]:
    with pytest.raises(OrderRejected) as exc:
        eng.place(o)
    return exc.value.code, exc.value.message


# ---- placing and validating


@pytest.mark.parametrize(("kw", "code", "text"), [
    (dict(amount=1.0, pct=1.0), 321, "mutually exclusive"),
    (dict(), 321, "Missing trailing amount or trailing percent"),
    (dict(amount=-1.0), 321, "must be positive"),
    (dict(pct=150.0), 321, "must be positive"),
    (dict(amount=1.005), 110, "minimum price variation"),
    (dict(amount=1.0, stop=228.004), 110, "minimum price variation"),
])
def test_trail_validation(env, kw, code, text):
    eng, _events, aapl = env
    got = rejected(eng, trail(aapl, 1, "SELL", 10, **kw))
    assert got[0] == code and text in got[1]
    assert eng.orders == {}


def test_trail_limit_needs_an_offset_or_limit_and_stop(env):
    eng, _events, aapl = env
    bare = trail(aapl, 1, "SELL", 10, amount=1.0)
    code, text = rejected(eng, dataclasses.replace(bare, order_type="TRAIL LIMIT"))
    assert code == 321 and "limit price offset" in text
    o = eng.place(trail(aapl, 2, "SELL", 10, amount=1.0, stop=229.5, lmt=229.0))
    assert (o.lmt_price_offset, o.trail_stop_price, o.lmt_price) == (0.5, 229.5, 229.0)


def test_explicit_initial_stop_tighter_than_the_trail_is_kept(env):
    eng, events, aapl = env
    loose = eng.place(trail(aapl, 1, "SELL", 10, amount=2.0, stop=226.0))
    assert loose.trail_stop_price == 228.0               # looser than 230 - 2: tightened
    tight = eng.place(trail(aapl, 2, "SELL", 10, amount=2.0, stop=229.5))
    assert tight.trail_stop_price == 229.5
    events.clear()
    eng.set_price(aapl.con_id, 231.0)                    # 229 < 229.5: only the loose one moves
    assert (loose.trail_stop_price, tight.trail_stop_price) == (229.0, 229.5)
    assert [e.order.order_id for e in events if isinstance(e, OrderChanged)] == [1]
    events.clear()
    eng.set_price(aapl.con_id, 230.5)                    # no new high: no event
    assert loose.trail_stop_price == 229.0 and not any(isinstance(e, OrderChanged) for e in events)


def test_triggered_trail_stops_trailing_and_works_as_market(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "MKT"))
    o = eng.place(trail(aapl, 2, "SELL", 10, amount=1.0))
    eng.set_price_fill_qty(4)
    eng.set_price(aapl.con_id, 228.9)                    # through 229: 4 sold at the price
    assert (o.filled, o.status, o.trail_stop_price) == (4, "Submitted", 229.0)
    eng.set_price(aapl.con_id, 240.0)                    # a triggered stop no longer trails
    assert o.trail_stop_price == 229.0 and o.filled == 8
    eng.set_price(aapl.con_id, 240.5)
    assert o.status == "Filled" and o.filled == 10


def test_buy_trail_limit_follows_the_low(env):
    eng, _events, aapl = env
    o = eng.place(trail(aapl, 1, "BUY", 5, amount=1.0, offset=0.2))
    assert (o.trail_stop_price, o.lmt_price) == (231.0, 231.2)
    eng.set_price(aapl.con_id, 225.0)
    assert (o.trail_stop_price, o.lmt_price) == (226.0, 226.2)
    eng.set_price(aapl.con_id, 226.3)                    # through the stop, above the limit
    assert o.status == "Submitted" and o.filled == 0
    eng.set_price(aapl.con_id, 226.1)                    # within the limit now: fills
    assert o.status == "Filled" and o.avg_fill_price == 226.2


def test_child_trail_is_unarmed_until_the_parent_fills(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 225.0, transmit=False))
    tr = eng.place(trail(aapl, 2, "SELL", 10, amount=2.0, parent_id=1))
    assert (tr.status, tr.trail_stop_price) == ("PreSubmitted", None)
    eng.set_price(aapl.con_id, 240.0)                    # a high before the fill is not a best
    assert tr.trail_stop_price is None
    eng.set_price(aapl.con_id, 225.0)                    # parent fills: armed at 225
    assert (tr.status, tr.trail_stop_price) == ("Submitted", 223.0)


def test_modify_trail_explicit_stop_and_percent(env):
    eng, _events, aapl = env
    o = eng.place(trail(aapl, 1, "SELL", 10, pct=2.0))
    assert o.trail_stop_price == 225.4                   # 230 * 0.98
    eng.place(trail(aapl, 1, "SELL", 10, pct=2.0, stop=227.0))   # the client moves the stop
    assert o.trail_stop_price == 227.0
    eng.set_price(aapl.con_id, 235.0)                    # 235 * 0.98 = 230.30
    assert o.trail_stop_price == 230.3
    eng.place(trail(aapl, 1, "SELL", 10, pct=1.0))       # tighter percent: from the best 235
    assert o.trail_stop_price == 232.65
    code, _ = rejected(eng, order(aapl, 1, "SELL", 10, "STP", aux=232.0))
    assert code == 329 and o.order_type == "TRAIL"


def test_trail_state_survives_persistence(env):
    eng, _events, aapl = env
    eng.place(trail(aapl, 1, "SELL", 10, amount=1.0, offset=0.5))
    eng.set_price(aapl.con_id, 231.0)
    again = Brokerage.from_dict(json.loads(json.dumps(eng.to_dict())), eng.universe,
                                clock=eng.clock)
    o = again.order(1, 1)
    assert (o.trail_stop_price, o.lmt_price, o.trail_best) == (230.0, 229.5, 231.0)
    again.set_price(aapl.con_id, 232.0)
    assert o.trail_stop_price == 231.0


# ---- modify refusals


def test_child_parent_id_rules(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 10, 229.0, 235.0, 225.0)
    assert rejected(eng, order(aapl, 3, "SELL", 10, "STP", aux=226.0))[0] == 105  # parent works
    assert rejected(eng, order(aapl, 3, "SELL", 10, "STP", aux=226.0, parent_id=2))[0] == 105
    eng.set_price(aapl.con_id, 229.0)
    assert parent.status == "Filled"
    assert rejected(eng, order(aapl, 3, "SELL", 10, "STP", aux=226.0, parent_id=1)) == (
        135, "Can't find order with id =1")
    eng.place(order(aapl, 3, "SELL", 10, "STP", aux=226.0))
    assert (sl.aux_price, sl.status, sl.parent_id) == (226.0, "Submitted", 1)
    lone = eng.place(order(aapl, 9, "BUY", 1, "LMT", 200.0))
    assert rejected(eng, order(aapl, 9, "BUY", 1, "LMT", 201.0, parent_id=1))[0] == 105
    assert lone.lmt_price == 200.0


def test_oca_revisions_are_refused(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 229.0, transmit=False))
    eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, parent_id=1, transmit=False,
                    oca_group="g", oca_type=3))
    eng.place(order(aapl, 3, "SELL", 10, "STP", aux=225.0, parent_id=1, oca_group="g",
                    oca_type=3))
    assert rejected(eng, order(aapl, 2, "SELL", 10, "LMT", 236.0, parent_id=1, oca_group="h",
                               oca_type=3)) == (10326, "OCA group revision is not allowed")
    assert rejected(eng, order(aapl, 2, "SELL", 10, "LMT", 236.0, parent_id=1, oca_group="g",
                               oca_type=1)) == (10327, "OCA group type revision is not allowed")
    eng.place(order(aapl, 2, "SELL", 10, "LMT", 236.0, parent_id=1))   # unset = unchanged
    assert eng.order(1, 2).lmt_price == 236.0 and eng.order(1, 2).oca_group == "g"


# ---- named OCA groups across brackets


def test_named_group_links_children_of_two_brackets(env):
    eng, _events, aapl = env
    for first in (1, 4):
        eng.place(order(aapl, first, "BUY", 5, "LMT", 229.0, transmit=False))
        eng.place(order(aapl, first + 1, "SELL", 5, "LMT", 235.0 + first, parent_id=first,
                        transmit=False, oca_group="both", oca_type=3))
        eng.place(order(aapl, first + 2, "SELL", 5, "STP", aux=225.0, parent_id=first,
                        oca_group="both", oca_type=3))
    eng.set_price(aapl.con_id, 229.0)
    eng.set_price(aapl.con_id, 236.0)                    # the first take-profit: 5 out
    tp1, sl1, tp2, sl2 = (eng.order(1, i) for i in (2, 3, 5, 6))
    assert (tp1.status, sl1.status) == ("Filled", "Cancelled")
    assert (tp2.status, sl2.status) == ("Cancelled", "Cancelled")   # reduced by 5 to nothing
    assert eng.position(aapl.con_id).quantity == 5                   # the group was one exit


def test_standalone_close_in_a_children_group_with_cancel_type(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 229.0, transmit=False))
    eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, parent_id=1, transmit=False,
                    oca_group="g", oca_type=3))
    eng.place(order(aapl, 3, "SELL", 10, "STP", aux=225.0, parent_id=1, oca_group="g",
                    oca_type=3))
    eng.set_price(aapl.con_id, 229.0)
    eng.place(order(aapl, 4, "SELL", 10, "MKT", oca_group="g", oca_type=1))
    assert (eng.order(1, 2).status, eng.order(1, 3).status) == ("Cancelled", "Cancelled")
    assert eng.position(aapl.con_id).quantity == 0


def test_modify_with_unset_oca_type_keeps_the_reduce_semantics(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "MKT"))
    tp = eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, oca_group="x", oca_type=3))
    tr = eng.place(trail(aapl, 3, "SELL", 10, amount=1.0, oca_group="x", oca_type=3))
    eng.place(order(aapl, 2, "SELL", 10, "LMT", 234.0, oca_group="x"))   # ocaType 0: unchanged
    assert tp.oca_type == 3
    eng.set_price_fill_qty(4)
    eng.set_price(aapl.con_id, 234.0)                    # 4 taken: the trail is reduced, not gone
    assert (tp.filled, tr.status, tr.total_quantity) == (4, "Submitted", 6)
