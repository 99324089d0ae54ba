"""adapters/ib_refs.py: the orderRef index over the client library's trades book, on the library's
own Wrapper (both libraries run this file): every way a trade enters or leaves the book keeps the
index true, a reset's fresh book is wrapped on the next look-up, and the index holds nothing the
book does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bracketgate.adapters.ib_prune import TradeRetention
from bracketgate.adapters.ib_refs import RefIndex, TradeBook
from tests import iblib


def trade(ref: str, order_id: int, status: str = "Submitted", what_if: bool = False) -> object:
    order = iblib.Order(orderId=order_id, clientId=1, orderRef=ref, permId=1000 + order_id,
                        action="BUY", totalQuantity=1, orderType="LMT")
    order.whatIf = what_if
    return SimpleNamespace(order=order, orderStatus=SimpleNamespace(status=status, filled=0.0),
                           contract=SimpleNamespace(symbol="AAPL", conId=1), fills=[])


def test_every_write_to_the_book_keeps_the_index() -> None:
    book = TradeBook()
    a1, a2, b1 = trade("A", 1), trade("A", 2), trade("B", 3)
    book[(1, 1)] = a1
    book[(1, 2)] = a2
    book.setdefault((1, 3), b1)
    assert book.for_ref("A") == [a1, a2] and book.for_ref("B") == [b1]
    # a key written again with another trade: the old one leaves the index
    a1b = trade("C", 1)
    book[(1, 1)] = a1b
    assert book.for_ref("A") == [a2] and book.for_ref("C") == [a1b]
    assert book.pop((1, 2)) is a2 and book.pop((1, 2), None) is None
    with pytest.raises(KeyError):
        book.pop((1, 2))
    assert book.for_ref("A") == [] and "A" not in book.by_ref       # no empty bucket left
    del book[(1, 3)]
    assert book.for_ref("B") == []
    book.update({(1, 9): trade("D", 9)})
    book |= {(1, 8): trade("D", 8)}
    assert [t.order.orderId for t in book.for_ref("D")] == [9, 8]
    key, t = book.popitem()
    assert key == (1, 8) and [x.order.orderId for x in book.for_ref("D")] == [9]
    book.clear()
    assert not book.by_ref and not book._ref_of and not book._key_of and not book
    assert book.for_ref("") == []


def test_a_trade_without_an_order_ref_is_in_the_book_but_not_in_the_index() -> None:
    book = TradeBook({(1, 1): trade("", 1), 555: trade("X", 0)})   # 555: a completed order's permId
    assert len(book) == 2 and list(book.by_ref) == ["X"]
    assert book.for_ref("X")[0].order.orderId == 0


def test_an_order_ref_that_changes_is_moved_by_note() -> None:
    book = TradeBook()
    t = trade("old", 1)
    book[(1, 1)] = t
    t.order.orderRef = "new"          # what the library's openOrder does to a known trade
    assert book.for_ref("old") == [] and book.for_ref("new") == []   # filtered, not yet moved
    book.note(t)
    assert book.for_ref("new") == [t] and "old" not in book.by_ref
    book.note(trade("new", 2))         # not in the book: nothing happens
    assert book.for_ref("new") == [t]


def test_the_library_wrapper_reset_is_wrapped_on_the_next_look_up() -> None:
    ib = iblib.IB()
    w = ib.wrapper
    w.trades[(1, 1)] = trade("P", 1)      # before the index existed
    refs = RefIndex(w)
    assert refs.trades("P")[0].order.orderId == 1 and isinstance(w.trades, TradeBook)
    assert refs.rebuilds == 1
    w.trades[(1, 2)] = trade("P", 2)
    w.trades[(1, 3)] = trade("P", 3, what_if=True)
    assert [t.order.orderId for t in refs.trades("P")] == [1, 2]   # what-if ones left out
    assert refs.has("P") and not refs.has("Q") and len(refs) == 1
    w.reset()                             # a disconnect / connect: a fresh plain dict
    assert type(w.trades) is dict and not refs.has("P")
    assert isinstance(w.trades, TradeBook) and refs.rebuilds == 2
    w.trades[(1, 4)] = trade("Q", 4)
    assert [t.order.orderId for t in refs.trades("Q")] == [4]
    refs.book()
    assert refs.rebuilds == 2             # wrapped once per book, not per look-up


def test_the_retention_sweep_empties_the_index_with_the_book() -> None:
    now = [0.0]
    ib = iblib.IB()
    w = ib.wrapper
    refs = RefIndex(w)
    for i in range(3):
        t = trade("done", i + 1, status="Cancelled")
        w.trades[(1, i + 1)] = t
        w.permId2Trade[t.order.permId] = t
    w.trades[(1, 9)] = trade("live", 9)
    r = TradeRetention(10, clock=lambda: now[0])
    assert r.sweep(w) == 0
    now[0] = 11.0
    assert r.sweep(w) == 3
    assert refs.trades("done") == [] and list(refs.refs()) == ["live"]
    assert len(r.legs("done")) == 3       # the tombstone answers for it from now on


def test_a_copy_of_the_book_is_a_plain_dict() -> None:
    import copy

    book = TradeBook({(1, 1): trade("A", 1)})
    c = copy.copy(book)
    assert type(c) is dict and c == dict(book)


# ---- the open-trade index (TradeBook.open_trades, RefIndex.open_trades): IB.openTrades() without
# a pass over every finished trade the book keeps, driven through the library's own Wrapper

STATUSES = ("PendingSubmit", "PreSubmitted", "Submitted", "PendingCancel", "Inactive",
            "Filled", "Cancelled", "ApiCancelled")


def library_rig():
    ib = iblib.IB()
    w = ib.wrapper
    w.clientId = 1
    refs = RefIndex(w)
    ib.orderStatusEvent += refs.note      # as IBBroker._on_order_status does, for both events
    ib.openOrderEvent += refs.note
    return ib, w, refs


def open_order(w, order_id: int, ref: str, status: str = "Submitted") -> None:
    order = iblib.Order(orderId=order_id, clientId=1, orderRef=ref, permId=5000 + order_id,
                        action="BUY", totalQuantity=1, orderType="LMT", lmtPrice=1.0)
    w.openOrder(order_id, iblib.Stock("AAPL", "SMART", "USD"), order,
                iblib.ib.OrderState(status=status))


def order_status(w, order_id: int, status: str, filled: float = 0.0) -> None:
    w.orderStatus(order_id, status, filled, 1.0 - filled, 0.0, 5000 + order_id, 0, 0.0, 1, "")


def ids(trades) -> set[int]:
    return {id(t) for t in trades}


def test_open_trades_lists_what_the_library_lists_through_random_order_lives() -> None:
    import random

    done = iblib.ib.OrderStatus.DoneStates
    ib, w, refs = library_rig()
    rng = random.Random(11)
    next_id = 1
    for step in range(3_000):
        live = [k[1] for k in w.trades if isinstance(k, tuple)]
        r = rng.random()
        if r < 0.25 or not live:
            open_order(w, next_id, f"p{next_id}", rng.choice(STATUSES[:3]))
            next_id += 1
        elif r < 0.75:   # any status, a final one back to a working one included
            order_status(w, rng.choice(live), rng.choice(STATUSES), rng.choice((0.0, 1.0)))
        elif r < 0.85:   # the retention sweep
            w.trades.pop((1, rng.choice(live)), None)
        elif r < 0.90:   # an order IB lists again (a modify's openOrder, a re-listing)
            open_order(w, rng.choice(live), "again")
        elif r < 0.95:   # a completed order re-listed by permId
            order = iblib.Order(orderId=0, clientId=1, orderRef="done", permId=90_000 + step)
            w._results["completedOrders"] = []    # a reqCompletedOrders in flight
            w.completedOrder(iblib.Stock("AAPL", "SMART", "USD"), order,
                             iblib.ib.OrderState(status=rng.choice(("Filled", "Cancelled"))))
        elif r < 0.96:   # a disconnect / connect: a fresh book
            w.reset()
            w.clientId = 1
        else:            # IB's error on an order: the library cancels it (or warns)
            w.error(rng.choice(live), rng.choice((201, 399)), "refused", "")
        got = refs.open_trades(done)
        assert ids(got) == ids(ib.openTrades()), step
    assert refs.open_mismatches == 0


def test_a_status_changed_behind_the_index_is_caught_by_the_check_and_logged() -> None:
    from structlog.testing import capture_logs

    done = iblib.ib.OrderStatus.DoneStates
    ib, w, refs = library_rig()
    open_order(w, 1, "a")
    order_status(w, 1, "Cancelled")
    assert refs.open_trades(done, ib.openTrades) == []   # checked: agree
    t = w.trades[(1, 1)]
    t.orderStatus.status = "Submitted"   # no event: nothing any library path does
    assert refs.open_trades(done) == []  # the index alone cannot know
    refs._checked_at = -1e9              # the next check is due
    with capture_logs() as logs:
        assert refs.open_trades(done, ib.openTrades) == [t]
    assert refs.open_mismatches == 1
    assert [e["event"] for e in logs] == ["ib_open_trades_mismatch"]
    assert logs[0]["log_level"] == "error" and logs[0]["code"] == "OPEN_INDEX_MISMATCH"
    assert refs.open_trades(done) == [t]  # rebuilt from the book
