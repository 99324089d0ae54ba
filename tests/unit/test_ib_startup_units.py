"""adapters/ib_startup.py's pieces without a socket: which followed orderRefs need IB's completed
orders, when a journal's review is due, the connect arguments, and the prefilter that keeps the
library from decoding completed orders nobody asked for (restored as it was afterwards)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from bracketgate.adapters import ib_startup
from bracketgate.adapters.ib_startup import (
    COMPLETED_ORDER_MSG,
    REVIEW_KEY,
    StartupOrders,
    connect_kwargs,
    missing_legs,
    only_refs,
)


def test_missing_legs_names_the_refs_with_a_leg_not_open() -> None:
    open_legs = {"all-open": {1, 2, 3}, "one-ended": {4, 5}, "none": set()}
    expected = {"all-open": (1, 2, 3), "one-ended": (4, 5, 6), "none": (7, 8, 9),
                "no-ids": (), "zeros": (0, 0, 0)}
    assert missing_legs(expected, lambda ref: open_legs.get(ref, set())) == {
        "one-ended", "none", "no-ids", "zeros"}
    assert missing_legs({}, lambda ref: set()) == set()


def test_connect_kwargs_leave_out_completed_orders_and_executions_only() -> None:
    ib_async = pytest.importorskip("ib_async")
    kw = connect_kwargs(ib_async)
    flags = kw["fetchFields"]
    assert not flags & ib_async.StartupFetch.ORDERS_COMPLETE
    assert not flags & ib_async.StartupFetch.EXECUTIONS   # read once after (ib_execs.py)
    for f in (ib_async.StartupFetch.POSITIONS, ib_async.StartupFetch.ORDERS_OPEN,
              ib_async.StartupFetch.ACCOUNT_UPDATES):
        assert flags & f
    assert connect_kwargs(SimpleNamespace()) == {}   # ib_insync 0.9.86: no fetchFields


def _fake_ib() -> Any:
    decoded: list[list[str]] = []
    kept: list[str] = []

    class Wrapper:
        def completedOrder(self, contract: Any, order: Any, state: Any) -> None:
            kept.append(order.orderRef)

    wrapper = Wrapper()

    def decode(fields: list[str]) -> None:   # the library's decoder: an order from the fields
        decoded.append(fields)
        wrapper.completedOrder(None, SimpleNamespace(orderRef=fields[2]), None)

    decoder = SimpleNamespace(handlers={COMPLETED_ORDER_MSG: decode})
    ib = SimpleNamespace(client=SimpleNamespace(decoder=decoder), wrapper=wrapper)
    return ib, decode, decoded, kept


def test_only_refs_decodes_and_keeps_the_wanted_orderrefs_alone() -> None:
    ib, decode, decoded, kept = _fake_ib()
    msgs = [["101", "x", "p-1", "AAPL"], ["101", "x", "other", "AAPL"],
            ["101", "x", "other2", "p-2"]]     # p-2 appears, not as its orderRef: decoded, dropped
    with only_refs(ib, {"p-1", "p-2"}):
        for m in msgs:
            ib.client.decoder.handlers[COMPLETED_ORDER_MSG](m)
    assert [m[2] for m in decoded] == ["p-1", "other2"]
    assert kept == ["p-1"]
    assert ib.client.decoder.handlers[COMPLETED_ORDER_MSG] is decode      # restored
    assert "completedOrder" not in vars(ib.wrapper)                     # the class's again
    with only_refs(ib, None):                                           # None: every one
        ib.client.decoder.handlers[COMPLETED_ORDER_MSG](msgs[1])
    assert kept == ["p-1", "other"]


def test_only_refs_also_keeps_a_wanted_permid_whose_orderref_is_empty() -> None:
    """A completed order may come with an empty orderRef: matched by its permId (the fields
    carry it as text), decoded and kept; another order with an empty orderRef is skipped."""
    kept: list[tuple[str, int]] = []

    class Wrapper:
        def completedOrder(self, contract: Any, order: Any, state: Any) -> None:
            kept.append((order.orderRef, order.permId))

    wrapper = Wrapper()
    decoded: list[list[str]] = []

    def decode(fields: list[str]) -> None:
        decoded.append(fields)
        wrapper.completedOrder(None, SimpleNamespace(orderRef=fields[2], permId=int(fields[3])),
                               None)

    ib = SimpleNamespace(client=SimpleNamespace(decoder=SimpleNamespace(
        handlers={COMPLETED_ORDER_MSG: decode})), wrapper=wrapper)
    msgs = [["101", "x", "", "700"], ["101", "x", "", "701"], ["101", "x", "p-1", "702"],
            ["101", "x", "zz", "10", "700"]]     # 700 by chance in another field: dropped
    with only_refs(ib, {"p-1"}, perm_ids={700, 0}):
        for m in msgs:
            ib.client.decoder.handlers[COMPLETED_ORDER_MSG](m)
    assert [m[3] for m in decoded] == ["700", "702", "10"]
    assert kept == [("", 700), ("p-1", 702)]
    assert ib.client.decoder.handlers[COMPLETED_ORDER_MSG] is decode


def test_the_ib_insync_shim_answers_the_connect_s_requests_empty_and_restores_them() -> None:
    class IB:
        def reqCompletedOrdersAsync(self, api_only: bool) -> str:
            return "sent"

        def reqExecutionsAsync(self, exec_filter: Any = None) -> str:
            return "sent"

    ib = IB()

    async def inside() -> Any:
        with ib_startup.without_startup_fetches(ib, SimpleNamespace()):
            return await ib.reqCompletedOrdersAsync(False), await ib.reqExecutionsAsync()

    import asyncio

    assert asyncio.run(inside()) == ([], [])
    assert ib.reqCompletedOrdersAsync(False) == "sent" and ib.reqExecutionsAsync() == "sent"
    assert "reqCompletedOrdersAsync" not in vars(ib) and "reqExecutionsAsync" not in vars(ib)


class _Meta:
    def __init__(self, value: str | None) -> None:
        self.value = value

    async def meta(self) -> dict[str, str]:
        return {} if self.value is None else {REVIEW_KEY: self.value}


@pytest.mark.parametrize("value,due", [
    (None, True),                                                     # never reviewed
    (json.dumps({"since": "2026-01-01T00:00:00+00:00", "foreign": 0}), False),   # clean
    (json.dumps({"since": datetime.now(timezone.utc).isoformat(), "foreign": 3}), True),
    (json.dumps({"since": (datetime.now(timezone.utc) - timedelta(days=2)).isoformat(),
                 "foreign": 3}), False),                              # past IB's day
    ("not json", True), (json.dumps({"foreign": 2}), True),          # unreadable: again
])
async def test_a_review_is_due_when_never_made_or_foreign_refs_are_within_the_day(
        value: str | None, due: bool) -> None:
    s = StartupOrders()
    s.use(journal=_Meta(value))
    assert await s._review_due() is due


async def test_no_answer_in_time_fails_the_connect_never_a_partial_reconcile() -> None:
    import asyncio

    from bracketgate.bus.errors import BrokerConnectError

    ib, _decode, _decoded, _kept = _fake_ib()
    never: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    ib.reqCompletedOrdersAsync = lambda api_only: never

    async def turn(*_: Any) -> None:
        return None

    broker = SimpleNamespace(ib=ib, _turn=turn, refs=SimpleNamespace(trades=lambda ref: []))
    s = StartupOrders()
    s.use(expected=lambda: {"p-1": (1, 2, 3)}, journal=_Meta(json.dumps(
        {"since": "2026-01-01T00:00:00+00:00", "foreign": 0})))
    with pytest.raises(BrokerConnectError) as e:
        await s.sync(broker, timeout=0.05)
    assert e.value.code == "COMPLETED_ORDERS_TIMEOUT"
    assert ib.client.decoder.handlers[COMPLETED_ORDER_MSG] is _decode   # restored on the way out
    assert s.last == {}                                                 # nothing reported synced


async def test_a_review_with_no_answer_in_time_fails_the_connect_too() -> None:
    """The review reads compact (ib_completed.py), and still fails closed: no answer in time is
    a BrokerConnectError, the decoder is restored, no review outcome is left to be written."""
    import asyncio

    from bracketgate.adapters.ib_completed import CompletedRefs
    from bracketgate.bus.errors import BrokerConnectError

    ib, _decode, _decoded, _kept = _fake_ib()
    never: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    ib.reqCompletedOrdersAsync = lambda api_only: never

    async def turn(*_: Any) -> None:
        return None

    broker = SimpleNamespace(ib=ib, _turn=turn, refs=SimpleNamespace(trades=lambda ref: []),
                             retention=SimpleNamespace(completed=CompletedRefs()))
    s = StartupOrders()
    s.use(expected=lambda: {}, journal=_Meta(None))    # a new journal: a review is due
    with pytest.raises(BrokerConnectError) as e:
        await s.sync(broker, timeout=0.05)
    assert e.value.code == "COMPLETED_ORDERS_TIMEOUT"
    assert ib.client.decoder.handlers[COMPLETED_ORDER_MSG] is _decode
    assert "completedOrder" not in vars(ib.wrapper)
    assert s.last == {} and s._review is None
