"""Start-up reads only what recovery needs from IB: completed orders on demand, not at each connect.

The IB client library's connectAsync asks for the open AND the completed orders of the day. After a
long day IB holds tens of thousands of completed orders (a 1M-proposal soak leaves ~35k) and the
library decodes every one into a Trade (~85 us each: ~3 s of a restart for 35k). Recovery needs
few of them. So the adapter connects without them (ib_async: `fetchFields` without ORDERS_COMPLETE;
ib_insync 0.9.86 has no fetchFields: its connectAsync's own request is answered empty, nothing is
sent) and `StartupOrders.sync` then asks IB for completed orders (reqCompletedOrders) only when
recovery may need them:

- a reconnect of this process: every one (books in memory may have moved meanwhile), read as a
  review reads them: the orders of orderRefs recovery follows are decoded into the library's
  book (the reconcile acts on them), every other one goes compact into
  `IBBroker.retention.completed` (its legs replaced by this listing's: `CompletedRefs.listing`),
  so has_order_ref still knows every orderRef IB listed. Before, each was decoded into a Trade:
  a reconnect after a long day (35k completed orders) stalled the loop ~3 s and put ~100 MB of
  Trades into the books until the retention sweep;
- the first connect, journal not reviewed: every one, once (`review`): a new or lost journal does
  not know the orderRefs an earlier run may have left at IB (a replay must still be answered
  BRACKET_FINISHED_AT_IB / CANCELLED_AT_IB, docs/OPERATIONS.md). Of those it needs only each
  orderRef and its legs' outcome: they are read from the messages' fields into
  `IBBroker.retention.completed` (adapters/ib_completed.py: compact legs, no library Trade;
  has_order_ref / orders_for_ref / existing_bracket read them as they read tombstones); only
  the orders of orderRefs recovery follows (`expected`: the reconcile acts on them) are
  decoded into the library's book (`compact_unless`). The review's outcome is kept in
  the journal's meta (`ib_completed_review`, written once the reconcile hooks passed: never into
  a journal the account check refuses): `foreign` = how many of the completed orders' orderRefs
  the journal does not know (its proposal_ids). Clean (0): every later order of ours goes through this
  journal (an intent is journaled before the send), so no later start needs a review. Foreign
  (> 0): reviewed again at every start until `horizon_s` (24 h: IB lists the completed orders of
  its current day) after the first review that found them;
- the first connect, journal reviewed: only when an intent the journal still follows (pending,
  sent, acked, unknown, or finished without a decision) has a leg IB does not list as open (a
  leg filled or cancelled while the daemon was down, a send cut by a crash); then only the
  completed orders of those orderRefs are decoded (a message is matched against the wanted
  orderRefs before the library decodes it) and kept in the library's book.

An answer that does not come in time fails the connect (BrokerConnectError): recovery never runs
on a partial picture. Each start logs `ib_completed_orders` (why, wanted, kept: decoded into
the book, compact: read compact (a review), ms).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import Any

from bracketgate.bus.errors import BrokerConnectError
from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib_startup")

REVIEW_KEY = "ib_completed_review"
HORIZON_S = 24 * 3600.0        # IB lists the completed orders of its current day
COMPLETED_ORDER_MSG = 101      # TWS API incoming message id of completedOrder
TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

# orderRef -> the order ids recovery expects IB to know for it (empty: ids not known)
Expected = Callable[[], dict[str, tuple[int, ...]]]


def connect_kwargs(ibl: Any) -> dict[str, Any]:
    """connectAsync's arguments that leave out the completed orders and the executions
    (ib_async's fetchFields): both are read after, as recovery needs them (adapters/ib_execs.py)."""
    flags = getattr(ibl, "StartupFetch", None)
    if flags is None or not hasattr(ibl, "StartupFetchALL"):
        return {}
    return {"fetchFields": ibl.StartupFetchALL & ~flags.ORDERS_COMPLETE & ~flags.EXECUTIONS}


@contextmanager
def without_startup_fetches(ib: Any, ibl: Any) -> Iterator[None]:
    """While connectAsync runs: a library without fetchFields (ib_insync 0.9.86) has its
    completed-orders and executions requests answered empty on this instance (nothing is sent
    to IB)."""
    if connect_kwargs(ibl):
        yield
        return

    def answered_empty(*_args: Any, **_kwargs: Any) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        fut.set_result([])
        return fut

    with _instance_attr(ib, "reqCompletedOrdersAsync", answered_empty), \
            _instance_attr(ib, "reqExecutionsAsync", answered_empty):
        yield


@contextmanager
def only_refs(ib: Any, wanted: set[str] | None,
              perm_ids: Collection[int] = ()) -> Iterator[None]:
    """While completed orders are read: only those whose orderRef is in `wanted` (None: all), or
    whose permId is in `perm_ids` (a completed order may come with an empty orderRef), are
    decoded and enter the library's book. A message none of whose fields is a wanted orderRef
    or permId cannot be one of them and is skipped undecoded (a field equal by chance: decoded,
    then dropped by its orderRef and permId)."""
    if wanted is None:
        yield
        return
    decoder, wrapper = ib.client.decoder, ib.wrapper
    decode = decoder.handlers[COMPLETED_ORDER_MSG]
    keep = wrapper.completedOrder
    perms = frozenset(p for p in perm_ids if p)
    fields_wanted = wanted | {str(p) for p in perms} if perms else wanted

    def prefiltered(fields: list[str]) -> None:
        if not fields_wanted.isdisjoint(fields):
            decode(fields)

    def kept(contract: Any, order: Any, state: Any) -> None:
        if (order.orderRef or "") in wanted or (perms and order.permId in perms):
            keep(contract, order, state)

    decoder.handlers[COMPLETED_ORDER_MSG] = prefiltered
    try:
        with _instance_attr(wrapper, "completedOrder", kept):
            yield
    finally:
        decoder.handlers[COMPLETED_ORDER_MSG] = decode


@contextmanager
def compact_unless(ib: Any, decoded: set[str], store: Any) -> Iterator[None]:
    """While completed orders are read for a review: those whose orderRef is in `decoded` (the
    orders recovery follows: the reconcile acts on them) are decoded into the library's book as
    usual; every other one goes into `store` (ib_completed.CompletedRefs) as a compact leg, read
    from its fields without a Trade, or decoded and converted when its layout is not one
    ib_completed follows (nothing of it enters the library's book); one without an orderRef
    is skipped (a replay cannot name it)."""
    from bracketgate.adapters.ib_completed import leg_from_fields, leg_of_order, ref_of_fields

    decoder, wrapper = ib.client.decoder, ib.wrapper
    decode = decoder.handlers[COMPLETED_ORDER_MSG]
    keep = wrapper.completedOrder
    converting = False

    def routed(fields: list[str]) -> None:
        nonlocal converting
        ref = ref_of_fields(fields)
        if ref in decoded:
            decode(fields)
            return
        if not ref:
            return
        leg = leg_from_fields(fields, decoder.serverVersion)
        if leg is not None:
            store.add(*leg)
            return
        converting = True
        try:
            decode(fields)
        finally:
            converting = False

    def kept(contract: Any, order: Any, state: Any) -> None:
        if converting:
            store.add(*leg_of_order(contract, order, state))
        elif (order.orderRef or "") in decoded:
            keep(contract, order, state)

    decoder.handlers[COMPLETED_ORDER_MSG] = routed
    try:
        with _instance_attr(wrapper, "completedOrder", kept):
            yield
    finally:
        decoder.handlers[COMPLETED_ORDER_MSG] = decode


@contextmanager
def _instance_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    """`name` set on this instance while the block runs, then as it was (the class's again)."""
    missing = object()
    prev = obj.__dict__.get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if prev is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, prev)


def missing_legs(expected: dict[str, tuple[int, ...]], open_legs: Callable[[str], set[int]]
                 ) -> set[str]:
    """The orderRefs of `expected` with a leg IB does not list as open (or no ids known)."""
    out = set()
    for ref, ids in expected.items():
        wanted = {i for i in ids if i}
        if not wanted or not wanted <= open_legs(ref):
            out.add(ref)
    return out


class StartupOrders:
    """When and which completed orders the adapter asks IB for after a connect (module doc)."""

    def __init__(self, *, horizon_s: float = HORIZON_S) -> None:
        self.horizon_s = horizon_s
        self.expected: Expected | None = None
        self.journal: Any = None
        self.connects = 0          # connects synced (the first is the start-up)
        self.last: dict[str, Any] = {}   # the last sync's outcome (tests, metrics)
        self._review: list[str] | None = None   # the review's orderRefs, until settled()

    def use(self, *, expected: Expected | None = None, journal: Any = None) -> None:
        """Recovery's picture: the orders it follows, the journal that keeps the review."""
        if expected is not None:
            self.expected = expected
        if journal is not None:
            self.journal = journal

    async def sync(self, broker: Any, timeout: float) -> None:
        """After connectAsync, before the reconcile hooks: read the completed orders recovery
        needs into the library's book (broker: the IBBroker; its pacer and library)."""
        self.connects += 1
        self._review = None
        t0 = time.perf_counter()
        review = None
        wanted: set[str] | None = None
        compact_all = False   # every completed order read compact but `decoded`'s
        if self.connects > 1:
            why = "reconnect"
            if self.expected is not None:   # what the reconcile acts on is decoded, as before
                decoded, compact_all = set(self.expected()), True
        elif self.expected is None and self.journal is None:
            why = "no_journal"       # nothing to trust instead of IB: every one
        else:
            review = await self._review_due()
            if review:
                why = "review"   # every one, compact but what recovery follows (module doc)
                decoded = set(self.expected()) if self.expected else set()
                compact_all = True
            else:
                wanted = missing_legs(self.expected() if self.expected else {},
                                      lambda ref: _open_ids(broker, ref))
                why = "legs_not_open" if wanted else "none"
        kept = compact = 0
        if why != "none":
            from bracketgate.adapters.pacer import Priority

            await broker._turn(Priority.DATA)
            store = getattr(getattr(broker, "retention", None), "completed", None) \
                if compact_all else None   # (a broker without one: every order decoded)
            compact = store.added if store is not None else 0
            try:
                with (compact_unless(broker.ib, decoded, store) if store is not None
                      else only_refs(broker.ib, wanted)), \
                        (store.listing() if store is not None else nullcontext()):
                    trades = await asyncio.wait_for(
                        broker.ib.reqCompletedOrdersAsync(False), timeout)
            except (TimeoutError, asyncio.TimeoutError) as e:
                log.error("ib_completed_orders_timeout", why=why, timeout_s=timeout,
                          code="COMPLETED_ORDERS_TIMEOUT")
                raise BrokerConnectError(
                    f"IB did not list its completed orders within {timeout}s: recovery cannot "
                    "tell what filled or ended while the daemon was away",
                    code="COMPLETED_ORDERS_TIMEOUT") from e
            except (ConnectionError, OSError) as e:   # the socket closed while IB listed them
                raise BrokerConnectError(f"IB connection lost while it listed its completed "
                                         f"orders: {e}") from e
            kept = len(trades or ())
            if store is not None:
                compact = store.added - compact
            if review:   # kept once the reconcile hooks passed (the account check first)
                refs = {t.order.orderRef for t in trades or () if t.order.orderRef}
                if store is not None:
                    refs.update(store.refs())
                self._review = sorted(refs)
        self.last = {"why": why, "wanted": None if wanted is None else len(wanted), "kept": kept,
                     "ms": round((time.perf_counter() - t0) * 1000, 1)}
        if compact_all:
            self.last["compact"] = compact
        log.info("ib_completed_orders", **self.last)

    # -- the journal's review marker
    async def _review_due(self) -> bool:
        if self.journal is None:
            return False   # recovery follows intents only (a journal-less run: tests)
        raw = (await self.journal.meta()).get(REVIEW_KEY)
        if not raw:
            return True
        try:
            mark = json.loads(raw)
            if int(mark.get("foreign", 0)) <= 0:
                return False
            since = datetime.fromisoformat(mark["since"])
        except (ValueError, KeyError, TypeError):
            return True   # unreadable: review again
        return datetime.now(timezone.utc) - since < timedelta(seconds=self.horizon_s)

    async def settled(self) -> None:
        """After the reconcile hooks (the journal is this account's, the book rebuilt): the
        review's outcome into the journal's meta (nothing is written to a refused journal)."""
        refs, self._review = self._review, None
        if refs is not None and self.journal is not None:
            await self._record_review(refs)

    async def _record_review(self, refs: list[str]) -> None:
        known = await known_ids(self.journal, refs)
        foreign = len(refs) - len(known)
        now = datetime.now(timezone.utc).isoformat()
        old = (await self.journal.meta()).get(REVIEW_KEY)
        since = now
        if foreign and old:   # the first review that found them starts the horizon
            try:
                prev = json.loads(old)
                since = prev["since"] if int(prev.get("foreign", 0)) > 0 else now
            except (ValueError, KeyError, TypeError):
                since = now
        mark = json.dumps({"since": since, "reviewed": now, "refs": len(refs),
                           "foreign": foreign})
        await write_meta(self.journal, REVIEW_KEY, mark)
        log.info("ib_completed_review", refs=len(refs), foreign=foreign, since=since)


def _open_ids(broker: Any, ref: str) -> set[int]:
    return {t.order.orderId for t in broker.refs.trades(ref)
            if t.order.orderId and (t.orderStatus.status or "") not in TERMINAL}


async def known_ids(journal: Any, ids: list[str], chunk: int = 500) -> set[str]:
    """Which of `ids` the journal remembers (its proposal_ids, the first_seen memory)."""
    if not ids:
        return set()

    def run(conn: Any) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            out.update(r[0] for r in conn.execute(
                f"SELECT proposal_id FROM proposal_ids WHERE proposal_id IN"
                f" ({', '.join('?' * len(part))})", part))
        return out

    return await journal._submit(run, None)


async def write_meta(journal: Any, key: str, value: str) -> None:
    def run(conn: Any) -> None:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                     " value = excluded.value", (key, value))

    await journal._submit(run, True)


def followed_updates(broker: Any, refs: set[str], ids: set[int], ts: datetime) -> list[Any]:
    """The orders of the library's book for these orderRefs or order ids, as bus models: what
    the reconcile follows, found through the orderRef index and the book's keys (O(followed),
    not a model for every order IB listed)."""
    from bracketgate.adapters.ib import order_update_from_trade

    book = broker.refs.book()
    seen: set[int] = set()
    out = []
    for ref in refs:
        for t in broker.refs.trades(ref):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(order_update_from_trade(t, ts))
    for oid in ids:
        for cid in (broker.client_id, 0):
            t = book.get((cid, oid))
            if t is not None and id(t) not in seen and not getattr(t.order, "whatIf", False):
                seen.add(id(t))
                out.append(order_update_from_trade(t, ts))
    return out
