"""What IB has, asked when its word did not come: a placement whose acks are late, a cancel unconfirmed.

Beside adapters/ib.py (the one connection); it imports no IB library, it works on the broker's
`ib` object. Three rooms:

- `OrderQueries`: reqOpenOrders / reqCompletedOrders one at a time. The client library keys each
  request by its name ("openOrders", "completedOrders"): a second request while the first is
  unanswered takes the first's answer (the first then times out, the second gets a partial
  list). So requests of a kind are serialised, callers waiting meanwhile share the next one
  (their wants merged), and a request that timed out is drained (its late answer awaited) before
  the next is sent. Completed orders are filtered on the wanted orderRefs / permIds before the
  library decodes them (adapters/ib_startup.py `only_refs`): a session's tens of thousands of
  completed orders are never decoded for one bracket. What the library decoded is dropped from
  its books afterwards (`retention.drop_replayed`), answered in time or late. An answer that
  does not come in time is None: UNKNOWN, never "IB has nothing".
- `placement_truth`: the verdict on a bracket whose acks did not come. Every leg at IB, alive or
  trading: placed. Else it fails (PlacementError ACK_TIMEOUT; PlacementUncertain if the
  connection dropped): every leg not known dead is cancelled (all three when IB's answer is
  unknown: cancelling an order IB does not have costs an error 10147), and only legs IB itself
  said are dead or absent are remembered as such (`settled`, `absent`: bounded).
- `CancelWatch`: a cancel whose outcome IB did not report within `verify_s` (the message may
  have been dropped, e.g. by IB's pacing) is checked against IB's open orders and sent again
  while IB still lists the order (at most `retries` times, then `ib_cancel_unconfirmed`). A
  disconnect keeps the cancels watched: they are checked once the broker is READY again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bracketgate.adapters.ib_startup import only_refs
from bracketgate.adapters.pacer import Priority
from bracketgate.bus.errors import BrokerError, BrokerNotConnected, PlacementError
from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib_truth")

SETTLED_MAX = 4096      # orderIds remembered dead / absent at IB (a lost placement each: rare)
DEAD = frozenset({"Cancelled", "ApiCancelled", "Inactive", "PendingCancel"})
GONE = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
CANCEL_VERIFY_S = 2.0   # a cancel's outcome not reported by IB within this: asked
CANCEL_RETRIES = 5


class BoundedSet:
    """A set that forgets its oldest members past `cap` (insertion order)."""

    def __init__(self, cap: int = SETTLED_MAX) -> None:
        self.cap = cap
        self._items: OrderedDict[Any, None] = OrderedDict()

    def add(self, item: Any) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.cap:
            self._items.popitem(last=False)

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)


# --------------------------------------------------------------------------- queries


@dataclass(eq=False)
class _Batch:
    refs: set[str] = field(default_factory=set)
    perms: set[int] = field(default_factory=set)
    answer: asyncio.Future[list[Any] | None] | None = None


class OrderQueries:
    """reqOpenOrders / reqCompletedOrders, serialised and shared (module doc)."""

    KEYS = {"open": "openOrders", "completed": "completedOrders"}   # the library's request keys

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._locks = {kind: asyncio.Lock() for kind in self.KEYS}
        self._next: dict[str, _Batch] = {}
        self._late: dict[str, asyncio.Future[Any]] = {}   # kind -> a request that timed out
        self._filter: ExitStack | None = None   # the completed orders' prefilter, while on
        self.stats = {"open": 0, "completed": 0, "unknown": 0, "shared": 0, "decoded": 0}

    async def open_orders(self) -> list[Any] | None:
        """Every open order of this client as IB lists it now (the library's Trades), or None
        when IB did not answer within the broker's request timeout."""
        return await self._ask("open", set(), set())

    async def completed_orders(self, refs: set[str], perms: set[int]) -> list[Any] | None:
        """IB's completed orders of these orderRefs (or permIds: a completed order may come
        with an empty orderRef), or None (unknown)."""
        return await self._ask("completed", refs, perms)

    async def _ask(self, kind: str, refs: set[str], perms: set[int]) -> list[Any] | None:
        batch = self._next.get(kind)
        if batch is None:
            batch = self._next[kind] = _Batch()
            batch.answer = asyncio.get_running_loop().create_future()
        else:
            self.stats["shared"] += 1
        batch.refs |= refs
        batch.perms |= {p for p in perms if p}
        assert batch.answer is not None
        while not batch.answer.done():
            async with self._locks[kind]:
                if batch.answer.done():
                    break
                if self._next.get(kind) is batch:
                    del self._next[kind]     # later callers join the next one
                try:
                    result = await self._query(kind, batch)
                except BaseException as e:
                    if not batch.answer.done():
                        if isinstance(e, asyncio.CancelledError):
                            # this caller went away: a waiting one sends the batch again
                            self._next.setdefault(kind, batch)
                            raise
                        batch.answer.set_exception(e)
                        batch.answer.exception()   # retrieved (no waiter may be left)
                    raise
                batch.answer.set_result(result)
        return batch.answer.result()

    async def _query(self, kind: str, batch: _Batch) -> list[Any] | None:
        b = self._broker
        timeout = b.request_timeout
        late = self._late.get(kind)
        if late is not None and not late.done():
            # the last request of this kind is unanswered: its late answer would end ours
            done, _ = await asyncio.wait({late}, timeout=timeout)
            if not done:   # given up on (IB drops no answer: this one is lost for good)
                self._late.pop(kind, None)
                if kind == "completed" and self._filter is not None:
                    self._filter.close()     # its prefilter off: the next one wraps the decoder
                    self._filter = None
                self.stats["unknown"] += 1
                log.warning("ib_order_query_clogged", request=kind, timeout_s=timeout,
                            code="QUERY_TIMEOUT")
                return None
        self._late.pop(kind, None)
        await b._turn(Priority.PROTECT)
        if not b.ib.isConnected():
            raise BrokerNotConnected("IB connection lost before its orders could be asked")
        self.stats[kind] += 1
        if kind == "open":
            fut = asyncio.ensure_future(b.ib.reqOpenOrdersAsync())
            return await self._answer(kind, fut, timeout, None)
        stack = self._filter = ExitStack()
        stack.enter_context(only_refs(b.ib, set(batch.refs), batch.perms))
        try:
            fut = asyncio.ensure_future(b.ib.reqCompletedOrdersAsync(False))
        except BaseException:
            stack.close()
            raise
        container = b.ib.wrapper._results.get(self.KEYS[kind])
        keep = set(batch.refs)

        def finished(f: asyncio.Future[Any]) -> None:
            stack.close()    # the filter stays on until IB's answer ends (a late one too)
            if self._filter is stack:
                self._filter = None
            if not f.cancelled() and f.exception() is None:
                self._drop(f.result(), keep if f is not self._late.get(kind) else set())

        fut.add_done_callback(finished)
        result = await self._answer(kind, fut, timeout, container)
        if result is not None:
            self.stats["decoded"] += len(result)
        return result

    async def _answer(self, kind: str, fut: asyncio.Future[Any], timeout: float,
                      container: list[Any] | None) -> list[Any] | None:
        try:
            done, _ = await asyncio.wait({fut}, timeout=timeout)
        except asyncio.CancelledError:
            self._late[kind] = fut
            raise
        if not done:
            self._late[kind] = fut        # left running: drained before the next request
            self.stats["unknown"] += 1
            if container:
                self._drop(list(container), set())   # decoded so far: out of the books now
            log.warning("ib_order_query_timeout", request=kind, timeout_s=timeout,
                        code="QUERY_TIMEOUT")
            return None
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, (ConnectionError, OSError)):
                raise BrokerNotConnected(f"IB connection lost while it listed its orders: {exc}")
            self.stats["unknown"] += 1
            log.warning("ib_order_query_failed", request=kind, error=repr(exc), code="QUERY_FAILED")
            return None
        return list(fut.result() or ())

    def _drop(self, trades: Iterable[Any], keep: set[str]) -> None:
        """The replayed completed orders out of the library's books (but those of `keep`)."""
        b = self._broker
        gone = [t for t in trades if (getattr(t.order, "orderRef", "") or "") not in keep]
        if gone:
            b.retention.drop_replayed(b.ib.wrapper, gone)


# --------------------------------------------------------------------------- placement truth


async def placement_truth(broker: Any, trades: list[Any], ref: str, names: tuple[str, ...]) -> None:
    """No ack in time, socket up: IB is asked what it has for this orderRef (module doc)."""
    from bracketgate.adapters.ib import PlacementUncertain

    wanted = {t.order.orderId: name for t, name in zip(trades, names)}
    found: dict[int, str] = {}          # orderId -> IB's status
    unknown = False
    try:
        opened = await broker.queries.open_orders()
        if opened is None:
            unknown = True
        for t in opened or ():
            if t.order.orderId in wanted and t.order.orderRef == ref:
                found[t.order.orderId] = t.orderStatus.status or "Submitted"
        if len(found) < len(wanted):
            perms = {t.order.permId for t in trades if t.order.permId}
            done = await broker.queries.completed_orders({ref}, perms)
            if done is None:
                unknown = True
            for t in done or ():
                oid = t.order.orderId or next(
                    (x.order.orderId for x in trades if t.order.permId and
                     x.order.permId == t.order.permId), 0)
                if oid in wanted and oid not in found and (t.order.orderRef or ref) == ref:
                    found[oid] = t.orderStatus.status or "Completed"
    except (ConnectionError, BrokerNotConnected) as e:
        raise PlacementUncertain(ref, f"IB connection lost while asking what IB has: {e}") from e
    if unknown and not broker.ib.isConnected():
        raise PlacementUncertain(ref, "IB connection lost while asking what IB has")
    statuses = list(found.values())
    traded = any(t.orderStatus.filled for t in trades) or "Filled" in statuses
    if len(found) == len(wanted) and (traded or not any(st in DEAD for st in statuses)):
        log.info("ib_bracket_ack_confirmed", proposal_id=ref, order_id=trades[0].order.orderId,
                 legs={wanted[oid]: st for oid, st in found.items()})
        return
    seen = ", ".join(f"{wanted[oid]} {oid} {st}" for oid, st in sorted(found.items())) or "nothing"
    missing = ", ".join(f"{name} {oid}" for oid, name in wanted.items() if oid not in found)
    for oid in wanted:
        if oid in found and found[oid] in DEAD:
            broker._settled.add(oid)          # IB said so: nothing to cancel
        elif oid not in found and not unknown:
            broker._settled.add(oid)          # IB's complete answer lacks it
            broker._absent.add(oid)
    # every leg not known dead is cancelled, children first (the entry's cancel takes its
    # children at IB, but a child IB holds without its parent must go too)
    cancelled, failed = [], []
    for oid in sorted(wanted, reverse=True):
        if oid in broker._settled:
            continue
        try:
            if await broker.cancel_order(oid):
                cancelled.append(oid)
                broker._settled.add(oid)   # sent once (CancelWatch re-sends if IB lost it)
        except BrokerNotConnected as e:
            failed.append(oid)
            log.warning("ib_placement_cancel_failed", proposal_id=ref, order_id=oid, error=str(e))
    if failed and not broker.ib.isConnected():
        raise PlacementUncertain(ref, f"IB connection lost while cancelling {failed}; IB has {seen}")
    head = f"IB did not acknowledge the placement of {ref!r} within {broker.ack_timeout}s; "
    if unknown:
        message = head + (f"IB did not say in time what it has (unknown; listed: {seen}); "
                          "every leg not known dead was cancelled")
    else:
        message = head + (f"IB has {seen}" + (f"; missing {missing}" if missing else "")
                          + "; what IB had was cancelled")
    log.warning("ib_placement_not_confirmed", proposal_id=ref, found=seen, missing=missing,
                unknown=unknown, cancelled=cancelled, code="ACK_TIMEOUT")
    raise PlacementError(message, code="ACK_TIMEOUT")


# --------------------------------------------------------------------------- cancels


class CancelWatch:
    """Cancels sent whose outcome IB has not reported yet: orderId -> [attempts, due time]."""

    def __init__(self, broker: Any, *, verify_s: float = CANCEL_VERIFY_S,
                 retries: int = CANCEL_RETRIES) -> None:
        self._broker = broker
        self.verify_s = verify_s
        self.retries = retries
        self.watching: dict[int, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = {"checked": 0, "verified": 0, "resent": 0, "unconfirmed": 0}

    def sent(self, order_id: int) -> None:
        """A cancel of `order_id` left (IBBroker.cancel_order): checked if IB says nothing."""
        if self.verify_s <= 0:
            return
        loop = asyncio.get_running_loop()
        entry = self.watching.setdefault(order_id, [0, 0.0])
        entry[1] = loop.time() + self.verify_s
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="ib-cancel-watch")

    def seen(self, trade: Any) -> None:
        """IB reported a final status (IBBroker._on_order_status): no check needed. The status
        the library sets when the cancel leaves (an untransmitted order is marked Cancelled on
        the spot) came before `sent`: it does not count."""
        if self.watching and trade.orderStatus.status in GONE:
            self.watching.pop(trade.order.orderId, None)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.watching.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.watching:
            due = min(e[1] for e in self.watching.values())
            await asyncio.sleep(max(0.0, due - loop.time()))   # IB's grace: a deadline
            try:
                await self._check([oid for oid, e in self.watching.items()
                                   if e[1] <= loop.time()])
            except BrokerError as e:
                # not connected: the cancels stay watched and are checked once the broker is
                # READY again (the reconcile re-reads IB's open orders first: a cancel IB did
                # carry out has cleared its watch by then); a lost one is sent again
                log.warning("ib_cancel_check_failed", error=e.message, code=e.code,
                            orders=sorted(self.watching), action="after_reconnect")
                while not await self._broker.wait_ready(60.0):
                    pass                          # close() cancels this task
                for entry in self.watching.values():
                    entry[1] = loop.time()
            except Exception as e:  # logged with its reason; the orders stay watched
                log.error("ib_cancel_check_failed", error=repr(e), orders=sorted(self.watching))
                for entry in self.watching.values():
                    entry[1] = loop.time() + self.verify_s

    async def _check(self, ids: list[int]) -> None:
        if not ids:
            return
        b = self._broker
        self.stats["checked"] += 1
        opened = await b.queries.open_orders()
        live = None if opened is None else {
            t.order.orderId for t in opened
            if t.order.clientId in (b.client_id, 0) and t.orderStatus.status not in GONE}
        for oid in ids:
            entry = self.watching.get(oid)
            if entry is None:
                continue                          # IB reported it meanwhile
            if live is not None and oid not in live:
                self.stats["verified"] += 1
                del self.watching[oid]
                continue
            entry[0] += 1
            if entry[0] > self.retries:
                del self.watching[oid]
                self.stats["unconfirmed"] += 1
                log.error("ib_cancel_unconfirmed", order_id=oid, attempts=self.retries,
                          listed=live is not None, code="CANCEL_UNCONFIRMED")
                continue
            entry[1] = asyncio.get_running_loop().time() + self.verify_s
            if live is None:
                continue                          # IB did not answer: asked again later
            b._settled.discard(oid)
            self.stats["resent"] += 1
            log.warning("ib_cancel_resent", order_id=oid, attempt=int(entry[0]),
                        code="CANCEL_UNCONFIRMED")
            await b.cancel_order(oid)
