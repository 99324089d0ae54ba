"""adapters/ib_prune.py's retention policy on the client library's own Trade / Fill objects and
wrapper books (a fake clock only), adapters/ib_outbox.py's coalescing, agents/exec_ids.py's cap.
Both client libraries run this file (tests/iblib.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from bracketgate.adapters.ib_outbox import Outbox
from bracketgate.adapters.ib_prune import TradeRetention, pruned_bracket, pruned_updates
from bracketgate.agents.exec_ids import ExecIds
from bracketgate.bus.messages import BrokerExecution, BrokerOrderUpdate, Side
from tests import iblib

ib = iblib.ib
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def add_bracket(wrapper, ref: str, first_id: int, statuses=("Filled", "Filled", "Cancelled"),
                fill_time: datetime = NOW) -> list:
    trades = []
    for i, (otype, status) in enumerate(zip(("LMT", "LMT", "STP"), statuses)):
        oid = first_id + i
        order = ib.Order(orderId=oid, clientId=1, permId=9000 + oid, orderRef=ref, orderType=otype,
                         action="BUY" if i == 0 else "SELL", totalQuantity=10,
                         parentId=0 if i == 0 else first_id, lmtPrice=100.0 + i, auxPrice=90.0)
        trade = ib.Trade(ib.Stock("AAPL", "SMART", "USD"), order,
                         ib.OrderStatus(orderId=oid, status=status,
                                        filled=10 if status == "Filled" else 0))
        wrapper.trades[(1, oid)] = trade
        wrapper.permId2Trade[order.permId] = trade
        if status == "Filled":
            ex = ib.Execution(execId=f"e-{oid}", orderId=oid, permId=order.permId, shares=10,
                              price=100.0, side="BOT" if i == 0 else "SLD", orderRef=ref)
            fill = ib.Fill(trade.contract, ex, ib.CommissionReport(execId=f"e-{oid}"), fill_time)
            trade.fills.append(fill)
            wrapper.fills[ex.execId] = fill
        trades.append(trade)
    return trades


@pytest.fixture
def wrapper():
    return ib.IB().wrapper


def test_a_finished_bracket_is_dropped_only_after_its_grace(wrapper) -> None:
    clock = Clock()
    r = TradeRetention(600, clock=clock)
    add_bracket(wrapper, "done", 10)
    assert r.sweep(wrapper, wall_now=NOW) == 0            # first seen done: the grace starts
    clock.t += 599
    assert r.sweep(wrapper, wall_now=NOW) == 0 and len(wrapper.trades) == 3
    clock.t += 2
    assert r.sweep(wrapper, wall_now=NOW) == 3
    assert not wrapper.trades and not wrapper.permId2Trade and not wrapper.fills
    assert r.stats()["pruned_trades"] == 3 and r.stats()["pruned_fills"] == 2
    assert [leg[0] for leg in r.legs("done")] == [10, 11, 12]


def test_a_bracket_with_one_working_leg_is_kept_and_its_grace_restarts(wrapper) -> None:
    clock = Clock()
    r = TradeRetention(10, clock=clock)
    trades = add_bracket(wrapper, "live", 20, statuses=("Filled", "Submitted", "Submitted"))
    for _ in range(3):
        clock.t += 100
        assert r.sweep(wrapper, wall_now=NOW) == 0
    trades[1].orderStatus.status, trades[1].orderStatus.filled = "Filled", 10
    trades[2].orderStatus.status = "Cancelled"
    r.sweep(wrapper, wall_now=NOW)
    clock.t += 5
    trades[2].orderStatus.status = "PreSubmitted"   # moves again (a replayed open order)
    assert r.sweep(wrapper, wall_now=NOW) == 0
    trades[2].orderStatus.status = "Cancelled"
    assert r.sweep(wrapper, wall_now=NOW) == 0       # the grace starts over
    clock.t += 9
    assert r.sweep(wrapper, wall_now=NOW) == 0
    clock.t += 2
    assert r.sweep(wrapper, wall_now=NOW) == 3


def test_an_execution_waiting_for_its_commission_holds_its_bracket(wrapper) -> None:
    clock = Clock()
    r = TradeRetention(10, clock=clock)
    add_bracket(wrapper, "comm", 30)
    pending = {"e-30"}
    r.sweep(wrapper, busy=pending.__contains__, wall_now=NOW)
    clock.t += 100
    assert r.sweep(wrapper, busy=pending.__contains__, wall_now=NOW) == 0
    pending.clear()
    r.sweep(wrapper, busy=pending.__contains__, wall_now=NOW)
    clock.t += 11
    assert r.sweep(wrapper, busy=pending.__contains__, wall_now=NOW) == 3


def test_only_the_done_bracket_goes_and_orphan_fills_age_out(wrapper) -> None:
    clock = Clock()
    r = TradeRetention(60, clock=clock)
    add_bracket(wrapper, "a", 40)
    add_bracket(wrapper, "b", 50, statuses=("Submitted", "PreSubmitted", "PreSubmitted"))
    orphan_old = ib.Fill(ib.Stock("MSFT"), ib.Execution(execId="x-old", permId=1),
                         ib.CommissionReport(),
                         NOW - timedelta(seconds=61))
    orphan_new = ib.Fill(ib.Stock("MSFT"), ib.Execution(execId="x-new", permId=2),
                         ib.CommissionReport(),
                         NOW - timedelta(seconds=30))
    wrapper.fills.update({"x-old": orphan_old, "x-new": orphan_new})
    r.sweep(wrapper, wall_now=NOW)
    clock.t += 61
    assert r.sweep(wrapper, wall_now=NOW) == 3
    assert {t.order.orderRef for t in wrapper.trades.values()} == {"b"}
    assert set(wrapper.fills) == {"x-new"}


def test_disabled_keeps_everything(wrapper) -> None:
    r = TradeRetention(0)
    add_bracket(wrapper, "k", 60)
    assert not r.enabled and r.sweep(wrapper, wall_now=NOW) == 0 and len(wrapper.trades) == 3


def test_tombstones_are_bounded_and_answer_for_a_pruned_bracket(wrapper) -> None:
    clock = Clock()
    r = TradeRetention(1, clock=clock, tombstones_max=5)
    for i in range(8):
        add_bracket(wrapper, f"t{i}", 100 + 10 * i)
    r.sweep(wrapper, wall_now=NOW)
    clock.t += 2
    assert r.sweep(wrapper, wall_now=NOW) == 24 and not wrapper.trades
    assert list(r.tombstones) == [f"t{i}" for i in range(3, 8)]
    legs = pruned_bracket(r.legs("t7"))
    assert {k: v.order.orderId for k, v in legs.items()} == {
        "entry": 170, "take_profit": 171, "stop_loss": 172}
    ups = pruned_updates("t7", r.legs("t7"), NOW)
    assert [(u.order_id, u.parent_id, u.order_type, u.status, u.filled) for u in ups] == [
        (170, None, "LMT", "Filled", 10.0), (171, 170, "LMT", "Filled", 10.0),
        (172, 170, "STP", "Cancelled", 0.0)]
    assert ups[0].side is Side.BUY and ups[2].stop_price == 90.0
    assert pruned_bracket(r.legs("t0")) == {}


def _update(order_id: int, status: str, filled: float = 0.0,
            code: int | None = None) -> BrokerOrderUpdate:
    return BrokerOrderUpdate(order_id=order_id, client_id=1, status=status, filled=filled,
                             code=code, ts=NOW)


async def test_the_outbox_coalesces_an_orders_queued_updates_never_executions_or_errors() -> None:
    box = Outbox()
    ex = BrokerExecution(exec_id="e1", order_id=1, con_id=1, symbol="AAPL", side=Side.BUY,
                         quantity=1, price=1.0, ts=NOW)
    box.put_nowait(_update(1, "PreSubmitted"))
    box.put_nowait(_update(2, "Submitted"))
    box.put_nowait(ex)
    box.put_nowait(_update(1, "Submitted"))
    box.put_nowait(_update(1, "Filled", 10))
    box.put_nowait(_update(2, "Cancelled", code=202))   # an error is never folded
    box.put_nowait(_update(2, "Cancelled"))
    assert box.qsize() == 5 and box.coalesced == 2
    got = []
    for _ in range(5):
        got.append(await box.get())
        box.task_done()
    assert [(type(m).__name__, getattr(m, "order_id", None), getattr(m, "status", None),
             getattr(m, "code", None)) for m in got] == [
        ("BrokerOrderUpdate", 1, "Filled", None), ("BrokerOrderUpdate", 2, "Submitted", None),
        ("BrokerExecution", 1, None, None), ("BrokerOrderUpdate", 2, "Cancelled", 202),
        ("BrokerOrderUpdate", 2, "Cancelled", None)]
    box.put_nowait(_update(1, "Filled", 10))      # taken: a new update gets a new slot
    assert box.qsize() == 1
    await asyncio.wait_for(box.get(), 1)
    box.task_done()
    await asyncio.wait_for(box.join(), 1)


def test_exec_ids_keep_the_newest_cap() -> None:
    ids = ExecIds(cap=3)
    for i in range(5):
        ids[f"e{i}"] = False
    ids["e3"] = True            # an update is not a new id: nothing evicted
    assert list(ids) == ["e2", "e3", "e4"] and ids["e3"] is True
    ids["e5"] = True
    assert list(ids) == ["e3", "e4", "e5"]


def test_a_filled_entry_whose_exits_did_not_fill_is_kept(wrapper) -> None:
    """An `alert` guard leaves the position open with every leg terminal: a protect command
    later needs the entry's contract, so the group stays until an order of it closes it."""
    clock = Clock()
    r = TradeRetention(1, clock=clock)
    add_bracket(wrapper, "open", 70, statuses=("Filled", "Cancelled", "Cancelled"))
    for _ in range(3):
        r.sweep(wrapper, wall_now=NOW)
        clock.t += 5
    assert len(wrapper.trades) == 3
    flat = ib.Order(orderId=73, clientId=1, permId=9073, orderRef="open", orderType="MKT",
                    action="SELL", totalQuantity=10)
    wrapper.trades[(1, 73)] = ib.Trade(ib.Stock("AAPL"), flat,
                                       ib.OrderStatus(orderId=73, status="Filled", filled=10))
    r.sweep(wrapper, wall_now=NOW)
    clock.t += 2
    assert r.sweep(wrapper, wall_now=NOW) == 4


async def test_finished_requests_leave_the_wrappers_books_after_the_grace(wrapper) -> None:
    """A request answered with a value (a what-if: `_endReq(key, state)`) leaves its `_results`
    container behind in both libraries, one per approval; a request its caller gave up (a timeout
    cancelled the future) leaves its future, container and contract. Dropped after the grace; a
    pending request and the library's named ones ("openOrders") are never touched."""
    clock = Clock()
    r = TradeRetention(10, clock=clock)
    contract = ib.Stock("AAPL", "SMART", "USD")
    answered = wrapper.startReq(101, contract)
    wrapper._endReq(101, "an OrderState")              # the what-if's answer
    assert answered.result() == "an OrderState" and 101 in wrapper._results
    gave_up = wrapper.startReq(102, contract)
    gave_up.cancel()                                    # asyncio.timeout around the await
    pending = wrapper.startReq(103, contract)
    named = wrapper.startReq("openOrders")
    assert r.sweep(wrapper, wall_now=NOW) == 0          # first seen: the grace starts
    clock.t += 9
    r.sweep(wrapper, wall_now=NOW)
    assert {101, 102} <= set(wrapper._results)          # an answer may still come meanwhile
    clock.t += 2
    r.sweep(wrapper, wall_now=NOW)
    assert 101 not in wrapper._results and 102 not in wrapper._results
    assert 102 not in wrapper._futures and 102 not in wrapper._reqId2Contract
    assert wrapper._futures[103] is pending and 103 in wrapper._results
    assert wrapper._futures["openOrders"] is named and "openOrders" in wrapper._results
    assert r.stats()["pruned_requests"] == 2
    wrapper._endReq(102, "a late answer")               # after the drop: nothing to find
    clock.t += 100
    r.sweep(wrapper, wall_now=NOW)
    assert wrapper._futures[103] is pending and not pending.done()


def test_completed_orders_a_query_replayed_leave_the_books_at_once(wrapper) -> None:
    """reqCompletedOrders puts every completed order whose permId the books lack back in
    (`trades[permId]`): a placement check hours into a session brought back every bracket ever
    finished. drop_replayed takes them out again, except the orderRef being asked about and
    what the books held before."""
    r = TradeRetention(60, clock=Clock())
    held = add_bracket(wrapper, "held", 10)                     # in the books before the query
    replayed = []
    for i, ref in enumerate(("old-1", "old-1", "old-2", "asked")):
        order = ib.Order(orderId=0, permId=5000 + i, orderRef=ref, orderType="LMT", action="BUY",
                         totalQuantity=1)
        trade = ib.Trade(ib.Stock("AAPL", "SMART", "USD"), order,
                         ib.OrderStatus(status="Cancelled"))
        wrapper.trades[order.permId] = trade                  # what the library's completedOrder does
        wrapper.permId2Trade[order.permId] = trade
        replayed.append(trade)
    again = ib.Trade(held[0].contract, held[0].order, ib.OrderStatus(status="Filled"))  # known permId
    assert r.drop_replayed(wrapper, replayed + [again], keep_ref="asked") == 3
    assert {t.order.orderRef for t in wrapper.trades.values()} == {"held", "asked"}
    assert set(wrapper.permId2Trade) == {9010, 9011, 9012, 5003}
    assert r.stats()["replayed_dropped"] == 3
