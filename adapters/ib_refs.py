"""orderRef -> the client library's trades for it: O(1) look-ups, bounded by the library's book.

ib_async (and ib_insync 0.9.86) keep every Trade of the connection in `wrapper.trades`
(`(clientId, orderId) -> Trade`, or `permId -> Trade` for a completed order). Trades enter it
from three places: `IB.placeOrder`, `Wrapper.openOrder` and `Wrapper.completedOrder` (the last
emits no event); they leave it through adapters/ib_prune.py's sweep (`pop`), and the whole book
is replaced by a fresh `{}` on every `Wrapper.reset` (each connect and disconnect).

`TradeBook` is that dict with an orderRef index kept as items are set and removed, so whoever
writes the book (the library's three paths, the retention sweep) keeps the index true without
an event. `RefIndex` puts a TradeBook in the wrapper's place and, on the next look-up after a
reset replaced it, wraps the new book once (O(trades) once per connection, not per placement).
The index holds nothing the book does not: an orderRef's entry goes with its last trade.

State (one line each):
  by_ref:  orderRef -> {book key: Trade}   (trades whose orderRef was this when indexed)
  _ref_of: book key -> orderRef           (how to find a key's entry again when it leaves)
  _key_of: id(Trade) -> book key          (`note`: a trade whose orderRef changed is moved)
  _open:   book key -> Trade                (not yet seen done: `open_trades` reads only these)

Nothing here imports the IB library: trades are duck-typed (`trade.order.orderRef`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib_refs")

# how often open_trades checks its index against the library's own pass (one pass a second,
# where a snapshot after each burst of order events made one per burst)
CHECK_OPEN_EVERY_S = 1.0

_MISSING = object()


def _ref(trade: Any) -> str:
    order = getattr(trade, "order", None)
    return (getattr(order, "orderRef", "") or "") if order is not None else ""


class TradeBook(dict):
    """The library's trades dict, indexed by orderRef as it changes (see module doc)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__()
        self.by_ref: dict[str, dict[Any, Any]] = {}
        self._ref_of: dict[Any, str] = {}
        self._key_of: dict[int, Any] = {}
        self._open: dict[Any, Any] = {}
        for key, trade in dict(items).items():
            self[key] = trade

    # -- the index
    def _index(self, key: Any, trade: Any) -> None:
        self._key_of[id(trade)] = key
        self._open[key] = trade
        ref = _ref(trade)
        if ref:
            self.by_ref.setdefault(ref, {})[key] = trade
            self._ref_of[key] = ref

    def _unindex(self, key: Any, trade: Any) -> None:
        if self._key_of.get(id(trade)) == key:
            del self._key_of[id(trade)]
        if self._open.get(key) is trade:
            del self._open[key]
        ref = self._ref_of.pop(key, None)
        if ref is None:
            return
        bucket = self.by_ref.get(ref)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self.by_ref[ref]

    def note(self, trade: Any) -> None:
        """A trade whose orderRef may have changed since it was indexed (the library copies
        IB's orderRef onto a known trade on openOrder): moved to its current orderRef."""
        key = self._key_of.get(id(trade), _MISSING)
        if key is _MISSING or dict.get(self, key) is not trade:
            return
        self._open[key] = trade   # its status changed: open again, perhaps (see open_trades)
        if self._ref_of.get(key, "") != _ref(trade):
            self._unindex(key, trade)
            self._index(key, trade)

    def for_ref(self, order_ref: str) -> list[Any]:
        """The trades whose orderRef is `order_ref` (in the order they were indexed)."""
        bucket = self.by_ref.get(order_ref) if order_ref else None
        if not bucket:
            return []
        return [t for t in bucket.values() if _ref(t) == order_ref]

    def open_trades(self, done: Any) -> list[Any]:
        """The trades whose status is not in `done` (the library's OrderStatus.DoneStates): what
        `IB.openTrades()` lists, without a pass over every trade the book keeps (finished ones
        wait there for the retention sweep: thousands, scanned at every snapshot).

        `_open` holds every trade of the book not yet seen done here: a trade enters it when it
        is set and again at each of its status events (`note`, which IBBroker calls for every
        orderStatus and openOrder event: the libraries emit one for every change of a trade's
        status, IB's or their own cancel and error paths). A trade seen done leaves it; the
        statuses in `done` are IB's final ones, and one that changes all the same comes back
        through its event."""
        out: list[Any] = []
        gone: list[Any] = []
        for key, trade in self._open.items():
            if trade.orderStatus.status in done:
                gone.append(key)
            else:
                out.append(trade)
        for key in gone:
            del self._open[key]
        return out

    def reopen_all(self) -> None:
        """Every trade of the book back in `_open` (the next open_trades reads them all)."""
        self._open = dict(dict.items(self))

    # -- every way a dict is written
    def __setitem__(self, key: Any, trade: Any) -> None:
        old = dict.get(self, key, _MISSING)
        if old is not _MISSING:
            self._unindex(key, old)
        dict.__setitem__(self, key, trade)
        self._index(key, trade)

    def __delitem__(self, key: Any) -> None:
        trade = dict.__getitem__(self, key)
        dict.__delitem__(self, key)
        self._unindex(key, trade)

    def pop(self, key: Any, *default: Any) -> Any:
        trade = dict.get(self, key, _MISSING)
        if trade is _MISSING:
            if default:
                return default[0]
            raise KeyError(key)
        del self[key]
        return trade

    def popitem(self) -> tuple[Any, Any]:
        key, trade = dict.popitem(self)
        self._unindex(key, trade)
        return key, trade

    def setdefault(self, key: Any, default: Any = None) -> Any:
        trade = dict.get(self, key, _MISSING)
        if trade is not _MISSING:
            return trade
        self[key] = default
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, trade in dict(*args, **kwargs).items():
            self[key] = trade

    def __ior__(self, other: Any) -> TradeBook:
        self.update(other)
        return self

    def clear(self) -> None:
        dict.clear(self)
        self._open.clear()
        self.by_ref.clear()
        self._ref_of.clear()
        self._key_of.clear()

    def __reduce__(self) -> Any:   # a copy is a plain dict: the index belongs to the live book
        return (dict, (dict(self),))


class RefIndex:
    """orderRef look-ups over `wrapper.trades` (see module doc)."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        self._book: TradeBook | None = None
        self.rebuilds = 0   # books wrapped (one per connection; tests, metrics)
        self._checked_at = -math.inf   # when open_trades last compared with the library's
        self.open_mismatches = 0       # times they differed (an error each; tests, metrics)

    def book(self) -> TradeBook:
        """The wrapper's book as a TradeBook (a book a reset put there is wrapped now)."""
        trades = self._wrapper.trades
        if trades is not self._book:
            if not isinstance(trades, TradeBook):
                trades = TradeBook(trades)
                self._wrapper.trades = trades
                self.rebuilds += 1
            self._book = trades
        return trades

    def trades(self, order_ref: str) -> list[Any]:
        """The library's trades of this orderRef, what-if ones excluded."""
        return [t for t in self.book().for_ref(order_ref)
                if not getattr(t.order, "whatIf", False)]

    def open_trades(self, done: Any, library: Callable[[], list[Any]] | None = None
                    ) -> list[Any]:
        """The book's open trades (`TradeBook.open_trades`). Once every CHECK_OPEN_EVERY_S,
        with `library` (`IB.openTrades`, the library's own pass over every trade), the two are
        compared: a difference is logged as an error and the library's answer is returned,
        the index rebuilt from the book (what no status event told it, it learns there)."""
        book = self.book()
        out = book.open_trades(done)
        if library is None:
            return out
        now = time.monotonic()
        if now < self._checked_at + CHECK_OPEN_EVERY_S:
            return out
        self._checked_at = now
        truth = library()
        if len(truth) != len(out) or {id(t) for t in truth} != {id(t) for t in out}:
            self.open_mismatches += 1
            log.error("ib_open_trades_mismatch", code="OPEN_INDEX_MISMATCH", indexed=len(out),
                      library=len(truth))
            book.reopen_all()
            return truth
        return out

    def has(self, order_ref: str) -> bool:
        return bool(self.book().for_ref(order_ref))

    def note(self, trade: Any) -> None:
        self.book().note(trade)

    def refs(self) -> Iterable[str]:
        return self.book().by_ref.keys()

    def __len__(self) -> int:
        return len(self.book().by_ref)
