"""IB's completed orders read without the client library's Trades: orderRef -> compact legs.

A first start on a new (or lost) journal reviews every completed order IB lists (adapters/
ib_startup.py). What it needs of them is small: which orderRefs IB had (the review's `foreign`
count; a replayed proposal_id must never get a second bracket: IBBroker.has_order_ref) and each
leg's outcome (status, filled: a replay is answered BRACKET_FINISHED_AT_IB or CANCELLED_AT_IB,
`ExecutionAgent.prior_placement`). The library decodes each completedOrder message into a Trade
(~85 us each: 35k of them cost 3 s of a start-up, and their memory until the retention sweep
pruned them a minute later into 4,096 tombstones: older orderRefs were then forgotten). Here the message's fields are read where the decoder would find them
(`leg_from_fields`, a mirror of the decoders of ib_async and ib_insync 0.9.86, which agree) and
kept as one short string per orderRef (`CompletedRefs`); a message whose layout this does not
follow (order conditions, a PEG BENCH order, a length that does not add up) is decoded by the
library after all and turned into the same leg (`leg_of_order`), never guessed.

Legs are ib_prune.Leg tuples (what tombstones hold: `pruned_updates`, `pruned_bracket` read
them); a completed order carries no orderId, clientId nor parentId (the library's Trade has 0
for each too). `CompletedRefs` is read through TradeRetention.legs (adapters/ib_prune.py) and
bounded by COMPLETED_REFS_MAX orderRefs (oldest forgotten first; IB lists one day's orders) of
LEGS_MAX legs each.

Nothing here imports the IB library.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

COMPLETED_REFS_MAX = 100_000   # orderRefs (~0.35 KB one with 3 legs: ~35 MB at the bound)
LEGS_MAX = 64                  # legs kept per orderRef, the newest (a bracket has 3 + guards)
_UNSET_DOUBLE = 1.7976931348623157e308
_SEP, _LEG_SEP = "\x1f", "\x1e"   # unit / record separators: never in IB's fields we keep

# where the decoders read these (both libraries: the fixed start of a completedOrder message)
_SYMBOL, _ACTION, _QTY, _TYPE, _LMT, _AUX, _REF, _PERM = 2, 12, 13, 14, 15, 16, 22, 23
_FIXED = 31   # fields up to faPercentage


def ref_of_fields(fields: list[str]) -> str:
    """The orderRef of a completedOrder message ('' if it has none)."""
    return fields[_REF] if len(fields) > _PERM else ""


def _int(s: str) -> int:
    return int(s) if s else 0


def leg_from_fields(fields: list[str], server_version: int) -> tuple[str, str] | None:
    """(orderRef, the leg packed) from a completedOrder message, walking it as the library's
    decoder does; None when the layout is not one this follows (decode it instead)."""
    try:
        n = len(fields)
        i = _FIXED
        if server_version < 177:
            i += 1                                   # faProfile
        dn_type = fields[i + 21]                     # deltaNeutralOrderType
        i += 23
        if dn_type:
            i += 4
        i += 5                                       # ... comboLegsDescrip
        i += 1 + 8 * _int(fields[i])                 # comboLegs
        i += 1 + _int(fields[i])                     # orderComboLegs
        i += 1 + 2 * max(0, _int(fields[i]))         # smartComboRoutingParams
        increment = float(fields[i + 2] or _UNSET_DOUBLE)
        i += 3
        if 0 < increment < _UNSET_DOUBLE:
            i += 7
        hedge = fields[i]
        i += 2 if hedge else 1
        dnc = fields[i + 3]
        i += 4
        if _int(dnc):
            i += 3
        algo = fields[i]
        i += 1
        if algo:
            i += 1 + 2 * max(0, _int(fields[i]))
        status = fields[i + 1]
        i += 4                                       # solicited, status, randomize x2
        order_type = fields[_TYPE]
        if order_type in ("PEG BENCH", "PEGBENCH"):
            return None
        if _int(fields[i]) != 0:                     # order conditions: the library decodes
            return None
        i += 1
        filled = fields[i + 6]                       # filledQuantity
        i += 15
        if server_version >= 170:
            i += 5
        if i != n or not status:
            return None
    except (IndexError, ValueError):
        return None
    return fields[_REF], pack(_int(fields[_PERM]), order_type, status, filled, fields[_AUX],
                              fields[_LMT], fields[_SYMBOL], fields[_ACTION], fields[_QTY])


def leg_of_order(contract: Any, order: Any, state: Any) -> tuple[str, str]:
    """(orderRef, the leg packed) from what the library decoded (the fallback)."""
    def txt(v: Any) -> str:
        return "" if v is None else str(v)

    return (order.orderRef or "", pack(int(order.permId or 0), txt(order.orderType),
                                       txt(state.status), txt(order.filledQuantity),
                                       txt(order.auxPrice), txt(order.lmtPrice),
                                       txt(contract.symbol), txt(order.action),
                                       txt(order.totalQuantity)))


def pack(perm_id: int, order_type: str, status: str, filled: str, aux: str, lmt: str,
         symbol: str, action: str, quantity: str) -> str:
    return _SEP.join((str(perm_id), order_type, status, filled, _price(aux), _price(lmt), symbol,
                      action, quantity))


def _price(s: str) -> str:
    """'' for a price IB left unset (UNSET_DOUBLE, in whatever spelling), else as it came."""
    return s if s and _num(s) is not None else ""


def _num(s: str) -> float | None:
    try:
        f = float(s)
    except ValueError:
        return None
    return f if abs(f) < 1e300 else None


def unpack(packed: str) -> tuple[Any, ...]:
    """A packed leg as an ib_prune.Leg: (order_id, perm_id, client_id, parent_id, order_type,
    status, filled, stop_price, limit_price, symbol, action, quantity)."""
    perm, order_type, status, filled, aux, lmt, symbol, action, qty = packed.split(_SEP)
    return (0, int(perm or 0), 0, 0, order_type, status, _num(filled) or 0.0, _num(aux),
            _num(lmt), symbol, action, _num(qty) or 0.0)


class CompletedRefs:
    """orderRef -> its completed orders' legs, packed (see module doc)."""

    def __init__(self, max_refs: int = COMPLETED_REFS_MAX) -> None:
        self.max_refs = max_refs
        self._legs: dict[str, str] = {}   # orderRef -> packed legs, _LEG_SEP between them
        self.added = 0                     # legs added (tests, the start-up's log line)
        self._listed: set[str] | None = None   # the orderRefs of the listing being read

    def __len__(self) -> int:
        return len(self._legs)

    def __contains__(self, ref: object) -> bool:
        return ref in self._legs

    def refs(self) -> Iterable[str]:
        return self._legs.keys()

    @contextmanager
    def listing(self) -> Iterator[None]:
        """One reqCompletedOrders answer being read: IB lists the day's completed orders again
        (a reconnect), so an orderRef's legs are replaced by this listing's, not added to."""
        self._listed = set()
        try:
            yield
        finally:
            self._listed = None

    def add(self, ref: str, packed: str) -> None:
        """One leg (a completed order is listed once per reqCompletedOrders: filled once)."""
        if not ref:
            return   # no orderRef: nothing of ours, nothing a replay can name
        old = self._legs.pop(ref, None)   # re-inserted: the newest last
        listed = self._listed
        if listed is not None and ref not in listed:
            listed.add(ref)
            old = None                     # this listing's legs replace an earlier one's
        if old is not None and old.count(_LEG_SEP) >= LEGS_MAX - 1:
            old = old.split(_LEG_SEP, 1)[1]   # not a bracket of ours: its oldest leg goes
        self._legs[ref] = packed if old is None else old + _LEG_SEP + packed
        self.added += 1
        while len(self._legs) > self.max_refs:
            del self._legs[next(iter(self._legs))]

    def legs(self, ref: str) -> tuple[Any, ...]:
        packed = self._legs.get(ref) if ref else None
        if packed is None:
            return ()
        return tuple(unpack(leg) for leg in packed.split(_LEG_SEP))

    def nbytes(self) -> int:
        """Roughly what it holds (keys, values, the dict), for the memory dump."""
        return (sys.getsizeof(self._legs) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self._legs.items()))
