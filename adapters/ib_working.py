"""The working orders of the portfolio snapshot, each model built once per change of its trade.

Every snapshot (agents/portfolio.py: after each burst of IB order events, and once a second)
lists every working order as a WorkingOrder model. Built from scratch that was the bulk of a
snapshot's cost (about 3 µs of validation per order: 300 resting legs, 1 ms, on the loop, in
front of the placement waiting for its acks). `WorkingOrders.build` keeps each open trade's
model with the fields it was made from and makes a new one only when one of them changed.

State (one line): _cache: id(trade) -> (fields, model, trade), the open trades of the last build
only (bounded by them; the trade is held so an id reused by another object never matches).
Nothing here imports the IB library: trades are duck-typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bracketgate.bus.messages import WorkingOrder


def _fields(t: Any) -> tuple:
    o, s, c = t.order, t.orderStatus, t.contract
    return (o.orderId, o.permId, o.parentId, o.orderRef, c.symbol, c.conId, c.secType,
            c.multiplier, o.action, o.orderType, o.totalQuantity, s.remaining, o.lmtPrice,
            o.auxPrice, s.status)


class WorkingOrders:
    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple, WorkingOrder, Any]] = {}
        self.built = 0   # models made (tests)

    def build(self, trades: Iterable[Any],
              make: Callable[[Any], WorkingOrder]) -> list[WorkingOrder]:
        """The models of `trades` (what-if ones skipped), `make(trade)` for a new or changed one;
        a BAG's (its multiplier comes from its legs' contracts) is made every time."""
        out: list[WorkingOrder] = []
        kept: dict[int, tuple[tuple, WorkingOrder, Any]] = {}
        cache = self._cache
        for t in trades:
            if getattr(t.order, "whatIf", False):
                continue
            key = _fields(t)
            hit = cache.get(id(t))
            if hit is not None and hit[2] is t and hit[0] == key and key[6] != "BAG":
                model = hit[1]
            else:
                model = make(t)
                self.built += 1
            kept[id(t)] = (key, model, t)
            out.append(model)
        self._cache = kept
        return out

    def __len__(self) -> int:
        return len(self._cache)
