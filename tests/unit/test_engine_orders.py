"""Brokerage engine: order types, ids, rejections, modify, cancel, OCA. No sockets."""

from __future__ import annotations

import pytest

from bracketgate.sim.model import OrderChanged, OrderError, OrderRejected
from bracketgate.sim.universe import UnknownContract
from tests.unit.engine_helpers import kinds, make_engine, order


@pytest.fixture
def env():
    eng, events, clock = make_engine()
    return eng, events, clock, eng.universe.stock("AAPL")


# AAPL starts at 230.00; bid/ask 229.99 / 230.01 (one tick each side).
# (action, type, lmt, aux, price moves, expected fill price or None, expected status)
ORDER_TYPE_CASES = [
    ("mkt buy at ask", "BUY", "MKT", None, None, [], 230.01, "Filled"),
    ("mkt sell at bid", "SELL", "MKT", None, None, [], 229.99, "Filled"),
    ("marketable lmt buy at ask", "BUY", "LMT", 231.00, None, [], 230.01, "Filled"),
    ("marketable lmt buy at limit", "BUY", "LMT", 230.00, None, [], 230.00, "Filled"),
    ("marketable lmt sell at bid", "SELL", "LMT", 229.00, None, [], 229.99, "Filled"),
    ("resting lmt buy not reached", "BUY", "LMT", 228.00, None, [228.50], None, "Submitted"),
    ("resting lmt buy fills at limit", "BUY", "LMT", 228.00, None, [228.50, 227.50], 228.00,
     "Filled"),
    ("resting lmt buy fills when touched", "BUY", "LMT", 228.00, None, [228.00], 228.00, "Filled"),
    ("resting lmt sell fills at limit", "SELL", "LMT", 232.00, None, [233.00], 232.00, "Filled"),
    ("stp sell not triggered", "SELL", "STP", None, 225.00, [226.00], None, "Submitted"),
    ("stp sell slips to the price", "SELL", "STP", None, 225.00, [224.10], 224.10, "Filled"),
    ("stp buy triggers at aux", "BUY", "STP", None, 235.00, [235.00], 235.00, "Filled"),
    ("stp buy through on arrival", "BUY", "STP", None, 229.00, [], 230.01, "Filled"),
    ("stp lmt sell within limit", "SELL", "STP LMT", 224.50, 225.00, [224.80], 224.80, "Filled"),
    ("stp lmt sell gaps past limit rests", "SELL", "STP LMT", 224.50, 225.00, [224.00], None,
     "Submitted"),
    ("stp lmt sell gap then back to limit", "SELL", "STP LMT", 224.50, 225.00, [224.00, 224.60],
     224.50, "Filled"),
]


@pytest.mark.parametrize(
    "action,kind,lmt,aux,moves,fill_px,status",
    [c[1:] for c in ORDER_TYPE_CASES], ids=[c[0] for c in ORDER_TYPE_CASES])
def test_order_types(env, action, kind, lmt, aux, moves, fill_px, status):
    eng, _events, _clock, aapl = env
    placed = eng.place(order(aapl, 1, action, 10, kind, lmt, aux))
    for px in moves:
        eng.set_price(aapl.con_id, px)
    assert placed.status == status
    if fill_px is None:
        assert placed.filled == 0 and eng.executions == []
    else:
        assert placed.filled == 10
        assert [e.price for e in eng.executions] == [pytest.approx(fill_px)]


def test_place_emits_accepted_then_fill_events(env):
    eng, events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 100, "MKT"))
    assert kinds(events) == ["OrderChanged", "OrderChanged", "ExecutionAdded",
                             "PositionChanged", "AccountChanged"]
    statuses = [e.order.status for e in events if isinstance(e, OrderChanged)]
    assert statuses == ["PreSubmitted", "Filled"]


def test_events_are_snapshots(env):
    eng, events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0))
    eng.set_price(aapl.con_id, 219.0)
    statuses = [e.order.status for e in events if isinstance(e, OrderChanged)]
    assert statuses == ["Submitted", "Filled"]


def test_set_price_event_order(env):
    eng, events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0))
    events.clear()
    eng.set_price(aapl.con_id, 219.0)
    assert kinds(events) == ["PriceChanged", "OrderChanged", "ExecutionAdded",
                             "PositionChanged", "AccountChanged"]
    events.clear()
    eng.set_price(aapl.con_id, 219.5)  # no fill, but the account holds AAPL
    assert kinds(events) == ["PriceChanged", "AccountChanged"]
    events.clear()
    eng.set_price(eng.universe.stock("MSFT").con_id, 421.0)
    assert kinds(events) == ["PriceChanged"]


def test_set_price_rounds_to_tick_and_rejects_unknown(env):
    eng, _events, _clock, aapl = env
    eng.set_price(aapl.con_id, 231.234)
    assert eng.price(aapl.con_id) == 231.23
    with pytest.raises(UnknownContract):
        eng.set_price(999, 1.0)
    with pytest.raises(ValueError):
        eng.set_price(aapl.con_id, 0.0)


# ---- ids


def test_order_ids_per_client(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 5, "BUY", 1, "LMT", 200.0))
    for bad_id in (4, 1):
        with pytest.raises(OrderRejected) as exc:
            eng.place(order(aapl, bad_id, "BUY", 1, "MKT"))
        assert (exc.value.code, exc.value.message) == (103, "Duplicate order id")
    with pytest.raises(OrderRejected) as exc:   # id 5 is live: a modify, but not of the action
        eng.place(order(aapl, 5, "SELL", 1, "LMT", 200.0))
    assert exc.value.code == 105
    eng.place(order(aapl, 1, "BUY", 1, "LMT", 200.0, client_id=2))  # own id space
    eng.place(order(aapl, 6, "BUY", 1, "LMT", 200.0))
    perms = [o.perm_id for o in eng.orders.values()]
    assert len(set(perms)) == len(perms) == 3
    assert eng.max_order_id(1) == 6 and eng.max_order_id(2) == 1


def test_filled_order_id_cannot_be_reused(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 1, "MKT"))
    with pytest.raises(OrderRejected) as exc:   # re-placing a filled order's id is a modify
        eng.place(order(aapl, 1, "BUY", 1, "MKT"))
    assert (exc.value.code, exc.value.message) == (104, "Can't modify a filled order.")
    eng.place(order(aapl, 2, "BUY", 1, "LMT", 200.0))
    eng.cancel(1, 2)
    with pytest.raises(OrderRejected) as exc:   # a cancelled order's id is just a used id
        eng.place(order(aapl, 2, "BUY", 1, "LMT", 201.0))
    assert exc.value.code == 103


# ---- rejections


REJECTIONS = [
    ("missing exchange", dict(exchange=""), {}, 321,
     "Error validating request.-'bN' : cause - Missing order exchange."),
    ("lmt without price", {}, dict(order_type="LMT"), 321, None),
    ("stp without aux", {}, dict(order_type="STP"), 321, None),
    ("zero quantity", {}, dict(total_quantity=0), 321, None),
    ("unknown contract", dict(con_id=0, symbol="ZZZZ"), {}, 200,
     "No security definition has been found for the request"),
    ("unknown conId", dict(con_id=12345), {}, 200, None),
    ("off tick limit", {}, dict(order_type="LMT", lmt_price=230.005), 110,
     "The price does not conform to the minimum price variation for this contract."),
    ("off tick aux", {}, dict(order_type="STP", aux_price=225.001), 110, None),
    ("too big for margin", {}, dict(total_quantity=20_000), 201, None),
    ("unknown parent", {}, dict(parent_id=77, order_type="LMT", lmt_price=200.0), 135, None),
]


@pytest.mark.parametrize("contract_changes,order_changes,code,message",
                         [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejections_consume_only_the_id(env, contract_changes, order_changes, code, message):
    import dataclasses
    eng, events, _clock, aapl = env
    contract = dataclasses.replace(aapl, **contract_changes)
    bad = dataclasses.replace(order(contract, 3, "BUY", 100, "MKT"), **order_changes)
    with pytest.raises(OrderRejected) as exc:
        eng.place(bad)
    assert exc.value.code == code
    if message:
        assert exc.value.message == message
    if code == 201:
        assert exc.value.message.startswith("Order rejected - reason:")
    assert eng.orders == {} and eng.positions() == [] and events == []
    with pytest.raises(OrderRejected) as again:
        eng.place(order(aapl, 3, "BUY", 1, "MKT"))
    assert again.value.code == 103
    eng.place(order(aapl, 4, "BUY", 1, "MKT"))


def test_closing_order_is_never_refused_for_margin(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 10_000, "MKT"))      # 2.3M notional, 575k initial margin
    eng.set_price(aapl.con_id, 100.0)                    # equity falls, margin still fits
    eng.place(order(aapl, 2, "SELL", 10_000, "MKT"))
    assert eng.position(aapl.con_id).quantity == 0


def test_partial_contract_resolves_through_universe(env):
    import dataclasses
    eng, _events, _clock, aapl = env
    partial = dataclasses.replace(aapl, con_id=0, primary_exchange="", local_symbol="",
                                  trading_class="", long_name="")
    placed = eng.place(order(partial, 1, "BUY", 1, "MKT"))
    assert placed.contract == aapl


# ---- modify


def test_modify_price_and_quantity(env):
    eng, events, _clock, aapl = env
    placed = eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0))
    perm = placed.perm_id
    events.clear()
    again = eng.place(order(aapl, 1, "BUY", 20, "LMT", 221.0))
    assert again is placed and placed.perm_id == perm
    assert (placed.total_quantity, placed.lmt_price, placed.status) == (20, 221.0, "Submitted")
    assert kinds(events) == ["OrderChanged"]
    eng.place(order(aapl, 1, "BUY", 20, "LMT", 231.0))    # now marketable: fills at the ask
    assert placed.status == "Filled" and eng.executions[-1].price == 230.01
    assert len(eng.orders) == 1


def test_modify_rejections(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0))
    with pytest.raises(OrderRejected) as exc:
        eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.001))
    assert exc.value.code == 110
    with pytest.raises(OrderRejected) as exc:
        eng.place(order(eng.universe.stock("MSFT"), 1, "BUY", 10, "LMT", 220.0))
    assert exc.value.code == 105
    assert eng.order(1, 1).lmt_price == 220.0


def test_modify_stop_price(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 1, "SELL", 10, "STP", aux=220.0))
    eng.place(order(aapl, 1, "SELL", 10, "STP", aux=226.0))
    eng.set_price(aapl.con_id, 225.0)
    assert eng.order(1, 1).status == "Filled"


# ---- cancel


def test_cancel_emits_status_then_202(env):
    eng, events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 10, "LMT", 220.0))
    events.clear()
    eng.cancel(1, 1)
    assert kinds(events) == ["OrderChanged", "OrderError"]
    assert events[0].order.status == "Cancelled"
    assert (events[1].code, events[1].message) == (202, "Order Canceled - reason:")
    assert events[1].order_id == 1
    done = eng.completed_orders()
    assert [o.completed_status for o in done] == ["Cancelled by Trader"]
    assert eng.orders_for(1) == []


def test_cancel_errors(env):
    eng, _events, _clock, aapl = env
    with pytest.raises(OrderRejected) as exc:
        eng.cancel(1, 42)
    assert exc.value.code == 10147
    eng.place(order(aapl, 1, "BUY", 1, "MKT"))
    with pytest.raises(OrderRejected) as exc:
        eng.cancel(1, 1)
    assert exc.value.code == 161


def test_global_cancel(env):
    eng, events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 1, "LMT", 200.0))
    eng.place(order(aapl, 1, "BUY", 1, "LMT", 201.0, client_id=2))
    eng.place(order(aapl, 2, "SELL", 1, "LMT", 250.0, client_id=2, transmit=False))
    eng.global_cancel()
    assert eng.orders_for(0) == []
    assert sum(isinstance(e, OrderError) and e.code == 202 for e in events) == 3


def test_orders_for_sees_own_orders_client_zero_all(env):
    eng, _events, _clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 1, "LMT", 200.0, client_id=1))
    eng.place(order(aapl, 1, "BUY", 1, "LMT", 201.0, client_id=2))
    assert [o.client_id for o in eng.orders_for(1)] == [1]
    assert [o.client_id for o in eng.orders_for(2)] == [2]
    assert [o.client_id for o in eng.orders_for(0)] == [1, 2]


# ---- OCA (standalone)


@pytest.mark.parametrize("oca_type,other_status,other_qty",
                         [(1, "Cancelled", 10), (2, "Submitted", 6)])
def test_standalone_oca_group(env, oca_type, other_status, other_qty):
    eng, _events, _clock, aapl = env
    eng.set_price_fill_qty(4)
    a = eng.place(order(aapl, 1, "BUY", 10, "LMT", 225.0, oca_group="g", oca_type=oca_type))
    b = eng.place(order(aapl, 2, "BUY", 10, "LMT", 220.0, oca_group="g", oca_type=oca_type))
    eng.set_price(aapl.con_id, 224.0)
    assert a.filled == 4
    assert (b.status, b.total_quantity) == (other_status, other_qty)


# ---- partial fills


def test_fill_cap_gives_partial_fills_with_cum_qty(env):
    eng, _events, _clock, aapl = env
    eng.set_price_fill_qty(40)
    placed = eng.place(order(aapl, 1, "BUY", 100, "LMT", 229.0, order_ref="ref-1"))
    for px in (228.9, 228.8, 228.7):
        eng.set_price(aapl.con_id, px)
    assert placed.status == "Filled"
    assert [(e.shares, e.cum_qty) for e in eng.executions] == [(40, 40), (40, 80), (20, 100)]
    assert [e.commission for e in eng.executions] == [1.0, 0.0, 0.0]  # per-order minimum once
    assert all(e.order_ref == "ref-1" and e.avg_price == 229.0 for e in eng.executions)
    exec_ids = [e.exec_id for e in eng.executions]
    assert len(set(exec_ids)) == 3
    assert all(x.startswith("0000e0d5.") and len(x.split(".")) == 4 for x in exec_ids)


def test_fill_cap_on_market_order(env):
    eng, _events, _clock, aapl = env
    eng.set_price_fill_qty(30)
    placed = eng.place(order(aapl, 1, "BUY", 50, "MKT"))
    assert (placed.filled, placed.status) == (30, "Submitted")
    eng.set_price(aapl.con_id, 230.5)
    assert (placed.filled, placed.status) == (50, "Filled")
    assert eng.executions[-1].price == 230.51
    assert placed.avg_fill_price == pytest.approx((30 * 230.01 + 20 * 230.51) / 50)


def test_executions_filter(env):
    eng, _events, clock, aapl = env
    eng.place(order(aapl, 1, "BUY", 1, "MKT", client_id=1))
    clock.t += 60
    eng.place(order(eng.universe.stock("MSFT"), 1, "SELL", 1, "MKT", client_id=2))
    assert len(eng.executions_since()) == 2
    assert [e.client_id for e in eng.executions_since(2)] == [2]
    assert [e.contract.symbol for e in eng.executions_since(symbol="MSFT")] == ["MSFT"]
    assert [e.side for e in eng.executions_since(side="BUY")] == ["BOT"]
    assert len(eng.executions_since(since=clock.t)) == 1


def test_subscriber_reentry_keeps_event_order_and_failures_are_isolated(env):
    eng, events, _clock, aapl = env
    seen: list[str] = []

    def reentrant(event):
        seen.append(type(event).__name__)
        if isinstance(event, OrderChanged) and event.order.order_id == 1 \
                and event.order.status == "Filled":
            eng.place(order(aapl, 2, "SELL", 1, "LMT", 300.0))   # placed from inside a callback

    def broken(event):
        raise RuntimeError("subscriber bug")

    eng.subscribe(broken)
    eng.subscribe(reentrant)
    eng.place(order(aapl, 1, "BUY", 1, "MKT"))
    assert seen == ["OrderChanged", "OrderChanged", "ExecutionAdded", "PositionChanged",
                    "AccountChanged", "OrderChanged"]
    assert kinds(events) == seen
    eng.unsubscribe(broken)
    assert eng.order(1, 2).status == "Submitted"
