"""Brokerage engine: bracket orders (held chain, children, OCA siblings, partial fills)."""

from __future__ import annotations

import pytest

from bracketgate.sim.model import OrderChanged, OrderError, OrderRejected
from tests.unit.engine_helpers import bracket, kinds, make_engine, order


@pytest.fixture
def env():
    eng, events, clock = make_engine()
    return eng, events, eng.universe.stock("AAPL")


def statuses(*orders):
    return tuple(o.status for o in orders)


def test_held_orders_do_nothing_until_transmit(env):
    eng, events, aapl = env
    parent = eng.place(order(aapl, 1, "BUY", 10, "LMT", 229.0, transmit=False))
    tp = eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, parent_id=1, transmit=False))
    eng.set_price(aapl.con_id, 228.0)                  # would fill the parent if it worked
    assert statuses(parent, tp) == ("PreSubmitted", "PreSubmitted") and parent.filled == 0
    assert eng.orders_for(1) == [parent, tp]
    eng.place(order(aapl, 3, "SELL", 10, "STP", aux=225.0, parent_id=1))  # transmit=True
    # released at 228.00: the parent is marketable and fills at its limit or better (ask 228.01)
    assert parent.status == "Filled" and parent.avg_fill_price == 228.01


def test_release_events_then_children_wait_for_parent(env):
    eng, events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    changed = [(e.order.order_id, e.order.status, e.order.why_held)
               for e in events if isinstance(e, OrderChanged)]
    assert changed[:2] == [(1, "PreSubmitted", ""), (2, "PreSubmitted", "")]
    assert changed[2:] == [(1, "Submitted", ""), (2, "PreSubmitted", "child"),
                           (3, "PreSubmitted", "child")]
    # children do not work before the parent fills, even when the price crosses them
    eng.set_price(aapl.con_id, 236.0)
    assert statuses(parent, tp, sl) == ("Submitted", "PreSubmitted", "PreSubmitted")
    assert eng.executions == []


def test_entry_fill_then_take_profit_cancels_stop(env):
    eng, events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0, order_ref="p-1")
    events.clear()
    eng.set_price(aapl.con_id, 228.5)
    assert statuses(parent, tp, sl) == ("Filled", "Submitted", "Submitted")
    assert kinds(events) == ["PriceChanged", "OrderChanged", "ExecutionAdded", "PositionChanged",
                             "AccountChanged", "OrderChanged", "OrderChanged"]
    events.clear()
    eng.set_price(aapl.con_id, 235.5)
    assert statuses(parent, tp, sl) == ("Filled", "Filled", "Cancelled")
    assert kinds(events) == ["PriceChanged", "OrderChanged", "ExecutionAdded", "PositionChanged",
                             "AccountChanged", "OrderChanged"]
    assert not any(isinstance(e, OrderError) for e in events)   # OCA cancel: status only
    assert eng.executions[-1].price == 235.0
    assert eng.position(aapl.con_id).quantity == 0
    assert [o.order_ref for o in eng.completed_orders()] == ["p-1"] * 3
    assert eng.orders_for(1) == []


def test_stop_hit_cancels_take_profit(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 229.0)
    eng.set_price(aapl.con_id, 224.5)
    assert statuses(parent, tp, sl) == ("Filled", "Cancelled", "Filled")
    assert eng.executions[-1].price == 224.5           # the stop slipped to the price
    assert eng.executions[-1].realized_pnl == pytest.approx((224.5 - 229.01) * 100 - 1.0)


def test_gap_fills_parent_and_triggers_stop_in_one_move(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 224.0)
    assert statuses(parent, tp, sl) == ("Filled", "Cancelled", "Filled")
    assert [e.price for e in eng.executions] == [229.0, 223.99]  # stop through on activation


def test_short_bracket_with_market_entry(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "SELL", 50, None, 220.0, 240.0)
    assert parent.status == "Filled" and parent.avg_fill_price == 229.99
    assert statuses(tp, sl) == ("Submitted", "Submitted")
    eng.set_price(aapl.con_id, 240.5)
    assert statuses(tp, sl) == ("Cancelled", "Filled")
    assert eng.position(aapl.con_id).quantity == 0


def test_partial_parent_fills_children_follow(env):
    eng, _events, aapl = env
    eng.set_price_fill_qty(40)
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.9)
    assert (parent.filled, parent.status) == (40, "Submitted")
    assert [(c.status, c.total_quantity) for c in (tp, sl)] == [("Submitted", 40)] * 2
    eng.set_price(aapl.con_id, 228.8)
    assert [c.total_quantity for c in (tp, sl)] == [80, 80]
    eng.set_price(aapl.con_id, 228.7)
    assert parent.status == "Filled"
    assert [c.total_quantity for c in (tp, sl)] == [100, 100]
    # partial take-profit fill reduces the stop; the last one cancels it
    eng.set_price_fill_qty(30)
    eng.set_price(aapl.con_id, 235.0)
    assert (tp.filled, tp.status, sl.total_quantity, sl.remaining) == (30, "Submitted", 70, 70)
    eng.set_price_fill_qty(None)
    eng.set_price(aapl.con_id, 235.1)
    assert statuses(tp, sl) == ("Filled", "Cancelled")
    assert eng.position(aapl.con_id).quantity == 0


def test_stop_protects_partial_entry_while_parent_works(env):
    eng, _events, aapl = env
    eng.set_price_fill_qty(40)
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.9)                  # 40 in
    eng.set_price_fill_qty(None)
    eng.set_price(aapl.con_id, 224.0)                  # parent fills the rest, stop triggers
    assert statuses(parent, tp, sl) == ("Filled", "Cancelled", "Filled")
    assert eng.position(aapl.con_id).quantity == 0


def test_cancel_parent_cancels_children(env):
    eng, events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 220.0, 235.0, 215.0)
    events.clear()
    eng.cancel(1, 1)
    assert statuses(parent, tp, sl) == ("Cancelled",) * 3
    seen = [(type(e).__name__, getattr(e, "order_id", None) or e.order.order_id) for e in events]
    assert seen == [
        ("OrderChanged", 1), ("OrderError", 1), ("OrderChanged", 2), ("OrderError", 2),
        ("OrderChanged", 3), ("OrderError", 3)]


def test_cancel_held_parent_cancels_held_children(env):
    eng, _events, aapl = env
    parent = eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0, transmit=False))
    tp = eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, parent_id=1, transmit=False))
    eng.cancel(1, 1)
    assert statuses(parent, tp) == ("Cancelled", "Cancelled")
    with pytest.raises(OrderRejected) as exc:  # a late child of a cancelled parent
        eng.place(order(aapl, 3, "SELL", 10, "STP", aux=215.0, parent_id=1))
    assert exc.value.code == 201


def test_cancel_partly_filled_parent_keeps_children_for_filled_qty(env):
    eng, _events, aapl = env
    eng.set_price_fill_qty(40)
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.9)
    eng.cancel(1, 1)
    assert parent.status == "Cancelled"
    assert [(c.status, c.total_quantity) for c in (tp, sl)] == [("Submitted", 40)] * 2
    eng.set_price_fill_qty(None)
    eng.set_price(aapl.con_id, 235.0)
    assert statuses(tp, sl) == ("Filled", "Cancelled")
    assert eng.position(aapl.con_id).quantity == 0


def test_cancel_child_leaves_sibling(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.0)
    eng.cancel(1, 2)
    assert statuses(tp, sl) == ("Cancelled", "Submitted")


def test_modify_child_price_and_parent_price(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 225.0, 235.0, 220.0)
    eng.place(order(aapl, 3, "SELL", 100, "STP", aux=221.0, parent_id=1))
    assert (sl.aux_price, sl.status, sl.why_held) == (221.0, "PreSubmitted", "child")
    eng.place(order(aapl, 1, "BUY", 100, "LMT", 230.0))        # entry moved to market
    assert parent.status == "Filled"
    assert statuses(tp, sl) == ("Submitted", "Submitted")


def test_explicit_oca_group_on_children(env):
    eng, _events, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 229.0, transmit=False))
    tp = eng.place(order(aapl, 2, "SELL", 10, "LMT", 235.0, parent_id=1, transmit=False,
                         oca_group="oca-1", oca_type=1))
    sl = eng.place(order(aapl, 3, "SELL", 10, "STP", aux=225.0, parent_id=1,
                         oca_group="oca-1", oca_type=1))
    eng.set_price_fill_qty(4)
    eng.set_price(aapl.con_id, 229.0)
    eng.set_price(aapl.con_id, 228.0)
    eng.set_price(aapl.con_id, 227.0)     # 10 filled
    eng.set_price(aapl.con_id, 235.0)     # 4 of the take-profit: ocaType 1 cancels the stop
    assert (tp.filled, tp.status, sl.status) == (4, "Submitted", "Cancelled")


def test_two_clients_brackets_are_independent(env):
    eng, _events, aapl = env
    p1, tp1, sl1 = bracket(eng, aapl, 1, "BUY", 10, 229.0, 235.0, 225.0, client_id=1)
    p2, tp2, sl2 = bracket(eng, aapl, 1, "BUY", 10, 228.0, 236.0, 224.0, client_id=2)
    assert tp2.parent_id == 1 and eng._parent_of[tp2.perm_id] == p2.perm_id
    eng.set_price(aapl.con_id, 228.5)
    assert statuses(p1, p2) == ("Filled", "Submitted")
    assert statuses(tp2, sl2) == ("PreSubmitted", "PreSubmitted")


def test_stop_completing_a_partly_taken_profit_is_filled(env):
    eng, _events, aapl = env
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.0)
    eng.set_price_fill_qty(30)
    eng.set_price(aapl.con_id, 235.0)                    # 30 taken
    eng.set_price_fill_qty(None)
    eng.set_price(aapl.con_id, 224.0)                    # stop sells the other 70
    assert (tp.status, tp.filled, sl.status, sl.filled) == ("Cancelled", 30, "Filled", 70)
    assert eng.position(aapl.con_id).quantity == 0


def test_take_profit_waits_for_more_parent_fills(env):
    eng, _events, aapl = env
    eng.set_price_fill_qty(40)
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.9)                    # 40 in
    eng.set_price(aapl.con_id, 235.0)                    # the 40 out again
    assert (tp.filled, tp.status, sl.status) == (40, "PreSubmitted", "PreSubmitted")
    assert eng.position(aapl.con_id).quantity == 0
    eng.set_price_fill_qty(None)
    eng.set_price(aapl.con_id, 228.0)                    # parent completes: 60 more in
    assert parent.status == "Filled"
    assert (tp.status, tp.remaining, sl.status, sl.remaining) == ("Submitted", 60, "Submitted", 60)
    eng.set_price(aapl.con_id, 235.0)
    assert (tp.status, tp.filled, sl.status) == ("Filled", 100, "Cancelled")


def test_child_done_when_parent_cancelled_after_child_filled(env):
    eng, _events, aapl = env
    eng.set_price_fill_qty(40)
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 100, 229.0, 235.0, 225.0)
    eng.set_price(aapl.con_id, 228.9)
    eng.set_price(aapl.con_id, 235.0)
    eng.cancel(1, 1)
    assert (parent.status, tp.status, sl.status) == ("Cancelled", "Filled", "Cancelled")
