"""The market-data line budget of the one IB connection: which contracts' quotes are streamed.

IB caps the quotes an account streams at once (100 lines by default, shared with every other
tool on the account); past the cap TWS answers error 101 "Max number of tickers has been
reached" and opens nothing. The adapter holds at most `limit` lines (IB_MAX_MARKET_DATA_LINES).
Quotes that open brackets, positions and pending reservations need (every leg of a combo) are
pinned; the others are kept least recently used first, and the oldest unpinned one is given up
(cancelMktData) when a new contract needs a line. Every line pinned: the new contract is
refused (`LinesFull`) at once, never queued. A 101 from IB lowers the ceiling to the lines IB
did accept (other tools hold the rest) until the next connection.

State (one line each):
  _held:     conId -> None, least recently used first (streamed, or being subscribed)
  refusals:  conId -> the last LineRefusal of a contract not streamed (bounded, newest kept)
  ceiling:   lines this connection may hold: `limit`, or fewer after IB's 101
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_LINES = 90           # of IB's default 100: room for TWS's own windows and other tools
MAX_TICKERS = 101            # IB: "Max number of tickers has been reached"
REFUSALS_MAX = 1_000

PinSource = Callable[[], Iterable[int]]


@dataclass(frozen=True, slots=True)
class LineRefusal:
    """Why a contract has no quote stream: the budget full of pinned lines, or IB's 101."""

    limit: int            # the lines the daemon may hold (the setting, or IB's lower ceiling)
    in_use: int           # lines held when refused
    pinned: int           # of which pinned (open brackets, positions, reservations)
    ib_code: int | None = None   # 101 when IB refused it

    def detail(self) -> str:
        if self.ib_code is not None:
            return (f"IB refused the market-data line (error {self.ib_code}: max number of "
                    f"tickers reached); the daemon now holds at most {self.limit} lines "
                    "(other tools on the account hold the rest)")
        return (f"the market-data line budget is full: {self.in_use} of {self.limit} lines, "
                f"{self.pinned} pinned by open brackets, positions or pending reservations "
                "(IB_MAX_MARKET_DATA_LINES)")


class LinesFull(Exception):
    """No line can be freed for a new contract."""

    def __init__(self, refusal: LineRefusal) -> None:
        super().__init__(refusal.detail())
        self.refusal = refusal


class LineBudget:
    """Which conIds hold a line, in LRU order; what to give up for a new one."""

    def __init__(self, limit: int = DEFAULT_LINES) -> None:
        if limit < 1:
            raise ValueError("the market-data line budget must be at least 1")
        self.limit = limit
        self.ceiling = limit
        self._held: OrderedDict[int, None] = OrderedDict()
        self._pin_sources: list[PinSource] = []
        self.refusals: OrderedDict[int, LineRefusal] = OrderedDict()
        self.evictions = 0        # lines given up for another contract (metrics)
        self.ib_refusals = 0      # 101s from IB
        self.full_refusals = 0    # contracts refused with every line pinned

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, con_id: object) -> bool:
        return con_id in self._held

    def held(self) -> list[int]:
        """conIds holding a line, least recently used first."""
        return list(self._held)

    def add_pins(self, source: PinSource) -> None:
        """`source()` names conIds whose quotes must stay streamed (asked only when full)."""
        self._pin_sources.append(source)

    def pinned(self, own: Iterable[int] = ()) -> set[int]:
        out = set(own)
        for source in self._pin_sources:
            out.update(source())
        return out

    def touch(self, con_id: int) -> None:
        """A proposal used this contract's quote: most recently used now."""
        if con_id in self._held:
            self._held.move_to_end(con_id)

    def claim(self, con_id: int, hold: Collection[int] = (),
              own_pins: Callable[[], Iterable[int]] = tuple) -> list[int]:
        """Hold a line for `con_id` from now; returns the conIds whose lines are given up for
        it, least recently used first (none: a line was free, or it holds one already).
        `hold`: conIds the same proposal needs (a combo's other legs), never given up for it.
        Raises LinesFull, giving nothing up, when too few lines are unpinned."""
        if con_id in self._held:
            self._held.move_to_end(con_id)
            return []
        need = len(self._held) + 1 - self.ceiling
        victims: list[int] = []
        if need > 0:
            pins = self.pinned(own_pins())
            pins.update(hold)
            victims = [c for c in self._held if c not in pins][:need]
            if len(victims) < need:
                self.full_refusals += 1
                refusal = LineRefusal(self.ceiling, len(self._held),
                                      sum(1 for c in self._held if c in pins))
                self.note_refusal(con_id, refusal)
                raise LinesFull(refusal)
            for c in victims:
                del self._held[c]
            self.evictions += len(victims)
        self._held[con_id] = None
        self.refusals.pop(con_id, None)
        return victims

    def release(self, con_id: int) -> None:
        self._held.pop(con_id, None)

    def refused_by_ib(self, con_id: int) -> LineRefusal:
        """IB's 101 for `con_id`: it holds no line; the ceiling is what IB did accept."""
        self._held.pop(con_id, None)
        self.ib_refusals += 1
        self.ceiling = max(1, min(self.ceiling, len(self._held)))
        refusal = LineRefusal(self.ceiling, len(self._held), 0, ib_code=MAX_TICKERS)
        self.note_refusal(con_id, refusal)
        return refusal

    def note_refusal(self, con_id: int, refusal: LineRefusal) -> None:
        self.refusals[con_id] = refusal
        self.refusals.move_to_end(con_id)
        while len(self.refusals) > REFUSALS_MAX:
            self.refusals.popitem(last=False)

    def new_connection(self) -> None:
        """A new connection starts at the configured budget again (IB's count is per
        connection's account state; another tool may have given lines back meanwhile)."""
        self.ceiling = self.limit


def forget_ticker(wrapper: Any, ticker: Any) -> int:
    """End the library's own record of a market-data ticker (both libraries keep it after a
    cancel: `tickers`, `reqId2Ticker`), so a later subscription starts from a fresh Ticker, not
    the cancelled line's last prices, and nothing grows per contract ever streamed. Returns the
    reqId to cancel at IB (0 if none)."""
    req_id = wrapper.endTicker(ticker, "mktData")
    for key, t in list(wrapper.tickers.items()):
        if t is ticker:
            del wrapper.tickers[key]
    for rid, t in list(wrapper.reqId2Ticker.items()):
        if t is ticker:
            del wrapper.reqId2Ticker[rid]
    return int(req_id or 0)
