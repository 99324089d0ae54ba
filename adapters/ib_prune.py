"""Retention of the IB client library's books: finished brackets are dropped after a grace period.

ib_async (and ib_insync 0.9.86) keep every Trade this connection ever saw in `wrapper.trades`,
`wrapper.permId2Trade` and every execution in `wrapper.fills`, until the next disconnect: about
13 KiB per bracket (three Orders, the Trade, its log). A daemon that runs for weeks must not
keep them. `TradeRetention.sweep` (run by IBBroker every `interval` seconds while READY) drops
from those books the trades that are done, and their fills:

- a group is every trade of one orderRef (a bracket's three legs, its guard orders), or one trade
  without an orderRef;
- it is done when every member has a terminal status (Filled, Cancelled, ApiCancelled,
  Inactive), none of its executions still waits for its commission report in the adapter
  (`busy(exec_id)`), and its fills net to zero (an entry filled whose exits did not fill as
  much leaves a position a protect / flatten command must still find the entry's contract for);
- it is dropped `retention_s` after it was first seen done (IB_TRADE_RETENTION_S, default 60:
  twice the execution agent's CLOSED_KEEP_S (30 s), so its closed book is gone first; a group that
  moves again, a replayed open order, starts over).

What still answers for a pruned bracket:
- `tombstones`: orderRef -> its legs' last state (compact tuples), the newest `tombstones_max`,
  read by IBBroker.has_order_ref / existing_bracket / orders_for_ref (a second bracket is
  never sent for it, `prior_placement` still sees it); `legs` reads `completed` after them:
  the completed orders a start-up's review read compact (adapters/ib_completed.py);
- a reconnect or restart: the library's books are rebuilt from IB (open orders, completed
  orders, the day's executions); a replayed execution is not published twice (the adapter's
  `_seen_execs` is not pruned, the journal keeps fills unique by exec_id);
- the journal: every intent, decision and fill (the long-term record).

Fills without a trade (a reqExecutions replay of a trade no longer in the books) are dropped once
older than `retention_s` too.

The wrapper's request books are swept as well (`_drop_finished_requests`): `_futures: reqId ->
Future` and `_reqId2Contract: reqId -> Contract` of a request its caller gave up (a timeout
cancelled the future; IB never answered), and `_results: reqId -> container` of a request
answered with a value (`_endReq(key, result)` pops the future, not the container: every
what-if left its empty list behind, one per approval). Each goes `retention_s` after it was
first seen so (an answer that comes meanwhile finds its entries). String keys ("openOrders",
"positions", ...) are the library's reused requests and are never touched.

Nothing here imports the IB library: the wrapper is duck-typed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from bracketgate.adapters.ib_completed import CompletedRefs

TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
DEFAULT_RETENTION_S = 60.0   # 120 before: at the pacer's full rate each 60 s held ~7 MB
TOMBSTONES_MAX = 4096

# one pruned leg: (order_id, perm_id, client_id, parent_id, order_type, status, filled,
#                  stop_price, limit_price, symbol, action, quantity)
Leg = tuple[int, int, int, int, str, str, float, float | None, float | None, str, str, float]


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if abs(f) < 1e300 else None   # IB's UNSET_DOUBLE is 1.7976931348623157e308


def leg_of(trade: Any) -> Leg:
    o, s = trade.order, trade.orderStatus
    filled = _num(s.filled) or _num(getattr(o, "filledQuantity", None)) or 0.0
    return (int(o.orderId or 0), int(o.permId or 0), int(o.clientId or 0), int(o.parentId or 0),
            o.orderType or "", s.status or "", float(filled), _num(o.auxPrice), _num(o.lmtPrice),
            trade.contract.symbol or "", o.action or "", float(_num(o.totalQuantity) or 0.0))


class TradeRetention:
    """Which trades of the client library's books are done, and dropping them (see module doc)."""

    def __init__(self, retention_s: float = DEFAULT_RETENTION_S, *,
                 clock: Callable[[], float] = time.monotonic,
                 tombstones_max: int = TOMBSTONES_MAX) -> None:
        self.retention_s = retention_s
        self._clock = clock
        self.tombstones_max = tombstones_max
        self.tombstones: dict[str, tuple[Leg, ...]] = {}   # orderRef -> pruned legs (newest last)
        # orderRef -> the legs a start-up's review read compact, never Trades (ib_completed.py)
        self.completed = CompletedRefs()
        self._done_since: dict[Any, float] = {}            # group -> when first seen done
        self._finished_since: dict[int, float] = {}        # reqId -> when first seen finished
        self.pruned_trades = 0
        self.pruned_fills = 0
        self.pruned_requests = 0
        self.replayed_dropped = 0

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    @property
    def interval(self) -> float:
        """How often to sweep: a quarter of the grace period, between 1 s and 60 s."""
        return min(60.0, max(1.0, self.retention_s / 4))

    @staticmethod
    def _done(trade: Any, busy: Callable[[str], bool]) -> bool:
        if getattr(trade.order, "whatIf", False):
            return True
        if (trade.orderStatus.status or "") not in TERMINAL:
            return False
        return not any(busy(f.execution.execId) for f in trade.fills)

    def sweep(self, wrapper: Any, busy: Callable[[str], bool] = lambda _: False,
              wall_now: datetime | None = None) -> int:
        """Drop the done groups past their grace from `wrapper`'s books; the trades dropped."""
        if not self.enabled:
            return 0
        now = self._clock()
        groups: dict[Any, list[tuple[Any, Any]]] = {}
        for key, trade in list(wrapper.trades.items()):
            groups.setdefault(trade.order.orderRef or ("", key), []).append((key, trade))
        dropped = 0
        for g, members in groups.items():
            if not all(self._done(t, busy) for _, t in members) or _open_units(members):
                self._done_since.pop(g, None)
                continue
            since = self._done_since.setdefault(g, now)
            if now - since < self.retention_s:
                continue
            del self._done_since[g]
            dropped += self._drop(wrapper, g, members)
        for g in [g for g in self._done_since if g not in groups]:
            del self._done_since[g]
        wall_now = wall_now or datetime.now(timezone.utc)
        self.pruned_fills += self._drop_orphan_fills(wrapper, wall_now)
        self.pruned_requests += self._drop_finished_requests(wrapper, now)
        self.pruned_trades += dropped
        return dropped

    def _drop_finished_requests(self, wrapper: Any, now: float) -> int:
        """Request entries nobody will read again, `retention_s` after first seen (module doc)."""
        futures = getattr(wrapper, "_futures", None)
        results = getattr(wrapper, "_results", None)
        if not isinstance(futures, dict) or not isinstance(results, dict):
            return 0
        contracts = getattr(wrapper, "_reqId2Contract", None)
        finished = {k for k, f in futures.items() if isinstance(k, int) and f.done()}
        finished.update(k for k in results if isinstance(k, int) and k not in futures)
        seen: dict[int, float] = {}
        dropped = 0
        for key in finished:
            since = self._finished_since.get(key, now)
            if now - since < self.retention_s:
                seen[key] = since
                continue
            fut = futures.get(key)
            if fut is not None and not fut.done():
                continue   # reused reqId with a live request: not ours to drop
            futures.pop(key, None)
            results.pop(key, None)
            if isinstance(contracts, dict) and fut is not None:
                contracts.pop(key, None)
            dropped += 1
        self._finished_since = seen
        return dropped

    def _drop(self, wrapper: Any, group: Any, members: list[tuple[Any, Any]]) -> int:
        for key, trade in members:
            wrapper.trades.pop(key, None)
            perm = trade.order.permId
            if wrapper.permId2Trade.get(perm) is trade:
                del wrapper.permId2Trade[perm]
            for f in trade.fills:
                if wrapper.fills.pop(f.execution.execId, None) is not None:
                    self.pruned_fills += 1
        if isinstance(group, str):
            legs = tuple(leg_of(t) for _, t in members if not getattr(t.order, "whatIf", False))
            prev = self.tombstones.pop(group, ())   # re-inserted: the newest last
            self.tombstones[group] = prev + legs
            while len(self.tombstones) > self.tombstones_max:
                del self.tombstones[next(iter(self.tombstones))]
        return len(members)

    def _drop_orphan_fills(self, wrapper: Any, wall_now: datetime) -> int:
        """Fills no trade in the books holds, older than the grace period."""
        held = {id(f) for t in wrapper.trades.values() for f in t.fills}
        cutoff = wall_now - timedelta(seconds=self.retention_s)
        old = [k for k, f in wrapper.fills.items() if id(f) not in held
               and isinstance(f.time, datetime) and _aware(f.time) < cutoff]
        for k in old:
            del wrapper.fills[k]
        return len(old)

    def drop_replayed(self, wrapper: Any, trades: Any, keep_ref: str = "") -> int:
        """Completed orders a reqCompletedOrders just put back into the books, dropped at once
        (but `keep_ref`'s, which the caller is asking about). The library's `completedOrder`
        adds every completed order whose permId its books lack under `trades[permId]`: those
        pruned here before, and every other order IB completed this session. A placement check
        (IBBroker._placement_truth) asking once a session had run for hours brought back every
        bracket ever finished (a soak: +165 MB in one query, pruned only a minute later, the
        RSS kept). They were done before the query and the books did not hold them: dropping
        them leaves the books as they were (tombstones answer for the pruned ones)."""
        dropped = 0
        for t in trades or ():
            order = getattr(t, "order", None)
            perm = getattr(order, "permId", 0) if order is not None else 0
            if not perm or (order.orderRef or "") == keep_ref and keep_ref:
                continue
            if wrapper.trades.get(perm) is t:
                wrapper.trades.pop(perm, None)
                if wrapper.permId2Trade.get(perm) is t:
                    del wrapper.permId2Trade[perm]
                dropped += 1
        self.replayed_dropped += dropped
        return dropped

    def legs(self, order_ref: str) -> tuple[Leg, ...]:
        """A pruned orderRef's legs, or those a start-up's review read compact (ib_completed)."""
        return self.tombstones.get(order_ref) or self.completed.legs(order_ref)

    def stats(self) -> dict[str, int]:
        return {"pruned_trades": self.pruned_trades, "pruned_fills": self.pruned_fills,
                "pruned_requests": self.pruned_requests, "replayed_dropped": self.replayed_dropped,
                "tombstones": len(self.tombstones), "done_waiting": len(self._done_since),
                "completed_refs": len(self.completed)}


def _open_units(members: list[tuple[Any, Any]]) -> bool:
    """The group's orders leave a position open (the entry filled, its exits did not fill as
    much: the stop cancelled under an `alert` guard): kept, a protect or flatten command needs
    the entry's contract (IBBroker.place_protective) until an order of its orderRef closes it."""
    net = 0.0
    for _, t in members:
        filled = _num(t.orderStatus.filled) or _num(getattr(t.order, "filledQuantity", None)) or 0.0
        net += filled if (t.order.action or "").upper() == "BUY" else -filled
    return abs(net) > 1e-9


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def pruned_bracket(legs: tuple[Leg, ...]) -> dict[str, Any]:
    """A pruned bracket's legs by name (entry / take_profit / stop_loss), shaped like the
    library's Trades for what IBBroker.existing_bracket reads (`.order.orderId`, `.orderStatus
    .status`); {} when the tombstone has no parent."""
    parent = next((leg for leg in legs if leg[0] and not leg[3]), None)
    if parent is None:
        return {}
    kids = [leg for leg in legs if leg[3] == parent[0]]
    out = {"entry": _as_trade(parent)}
    take = next((leg for leg in kids if leg[4] == "LMT"), None)
    stop = next((leg for leg in kids if leg[4] in ("STP", "STP LMT")), None)
    if take is not None:
        out["take_profit"] = _as_trade(take)
    if stop is not None:
        out["stop_loss"] = _as_trade(stop)
    return out


def _as_trade(leg: Leg) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(order=SimpleNamespace(orderId=leg[0], parentId=leg[3], orderType=leg[4]),
                           orderStatus=SimpleNamespace(status=leg[5]))


def pruned_updates(order_ref: str, legs: tuple[Leg, ...], ts: datetime) -> list[Any]:
    """A pruned bracket's legs as the BrokerOrderUpdates IB last sent for them."""
    from bracketgate.bus.messages import BrokerOrderUpdate, Side

    sides = {"BUY": Side.BUY, "SELL": Side.SELL}
    return [BrokerOrderUpdate(order_id=leg[0], perm_id=leg[1] or None, client_id=leg[2],
                              parent_id=leg[3] or None, order_ref=order_ref, symbol=leg[9],
                              side=sides.get(leg[10]), order_type=leg[4], quantity=leg[11],
                              limit_price=leg[8], stop_price=leg[7], status=leg[5],
                              filled=leg[6], remaining=0.0, ts=ts)
            for leg in legs]
