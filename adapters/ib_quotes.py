"""The IB adapter's quote streams within the market-data line budget (adapters/md_lines.py
LineBudget): subscribe, give up the least recently used unpinned line, IB's 101, renewal after
1101. A part of IBBroker (adapters/ib.py), kept in its own room; it reads the broker's `ib`,
`lines`, `_tickers`, `_quote_waiters`, `_subscribing`, `_ib_contracts`, `account` and calls its
`_turn`, `_mark_dirty` and `quotes`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from typing import Any

from bracketgate.adapters.md_lines import MAX_TICKERS, LineRefusal, LinesFull, forget_ticker
from bracketgate.adapters.pacer import Priority
from bracketgate.bus.messages import Quote, ResolvedContract
from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib")


class QuoteLines:
    ib: Any
    lines: Any
    account: str
    _tickers: dict[int, Any]
    _quote_waiters: dict[int, asyncio.Event]
    _subscribing: set[int]
    _ib_contracts: Any
    _turn: Any
    _mark_dirty: Any
    quotes: Any

    async def _subscribe_quote(self, con_id: int, hold: Collection[int] = ()) -> None:
        """Stream one contract's quote, within the line budget: the least recently used
        unpinned line is given up for it first when none is free (raises LinesFull)."""
        contract = self._ib_contracts.get(con_id)
        if contract is None or con_id in self._tickers:
            return
        victims = self.lines.claim(con_id, {*hold, *self._subscribing}, self._quote_pins)
        self._subscribing.add(con_id)
        try:
            await self._cancel_lines(self._drop_lines(victims))
            await self._turn(Priority.DATA)
        except BaseException:
            self.lines.release(con_id)
            raise
        finally:
            self._subscribing.discard(con_id)
        if con_id in self._tickers or not self.ib.isConnected():
            if con_id not in self._tickers:
                self.lines.release(con_id)
            return
        self._tickers[con_id] = self.ib.reqMktData(contract, "", False, False)

    async def ensure_quote(self, resolved: ResolvedContract, timeout: float = 1.0, *,
                           hold: Collection[int] = ()) -> Quote | None:
        """Start streaming quotes for a contract (once) and wait briefly for the first tick.
        None also when no line is to be had (`quote_refusal` says why). `hold`: the conIds
        the same proposal needs too (a combo's legs), never given up for this one."""
        con_id = resolved.con_id
        if con_id not in self._tickers:
            if not self.ib.isConnected():
                return None
            waiter = self._quote_waiters.setdefault(con_id, asyncio.Event())
            try:
                await self._subscribe_quote(con_id, hold)
                if con_id in self._tickers:
                    await asyncio.wait_for(waiter.wait(), timeout)
            except TimeoutError:
                log.warning("ib_quote_timeout", symbol=resolved.symbol, con_id=con_id)
            except LinesFull as e:
                r = e.refusal
                log.warning("ib_quote_lines_full", symbol=resolved.symbol, con_id=con_id,
                            limit=r.limit, in_use=r.in_use, pinned=r.pinned,
                            code="QUOTE_UNAVAILABLE")
            finally:
                self._quote_waiters.pop(con_id, None)
        elif (pending := self._quote_waiters.get(con_id)) is not None:
            # subscribed by a proposal a moment ago, first tick not in yet: wait for the same tick
            # rather than answer QUOTE_UNAVAILABLE to the second proposal of a burst
            try:
                await asyncio.wait_for(pending.wait(), timeout)
            except TimeoutError:
                pass
        else:
            self.lines.touch(con_id)
        return self.quotes().get(con_id)

    def touch_quote(self, con_id: int) -> bool:
        """A proposal priced on this contract's quote: the last of its line to be given up.
        False when it is not streamed (its line given up: a snapshot's quote of it is stale)."""
        if con_id not in self._tickers:
            return False
        self.lines.touch(con_id)
        return True

    def quote_refusal(self, con_id: int) -> LineRefusal | None:
        """Why a contract is not streamed, if for want of a line (budget full, IB's 101)."""
        return None if con_id in self._tickers else self.lines.refusals.get(con_id)

    def pin_quotes(self, source: Callable[[], Iterable[int]]) -> None:
        """`source()` names more conIds whose lines are never given up (the governor's
        reservations and combo legs); positions and working orders at IB are pinned here."""
        self.lines.add_pins(source)

    def _quote_pins(self) -> Iterable[int]:
        """conIds IB holds or works for us: positions, and every open order (a combo's legs)."""
        out = {p.contract.conId for p in self.ib.positions(self.account) if p.position}
        for t in self.open_trades():
            c = t.contract
            if c.secType == "BAG":
                out.update(leg.conId for leg in c.comboLegs or ())
            else:
                out.add(c.conId)
        return out

    def _drop_lines(self, con_ids: Iterable[int]) -> list[int]:
        """Forget given-up lines at once (their quotes leave the snapshot now); the reqIds
        to cancel at IB."""
        req_ids = []
        for con_id in con_ids:
            ticker = self._tickers.pop(con_id, None)
            if ticker is None:
                continue
            req_ids.append(forget_ticker(self.ib.wrapper, ticker))
            log.info("ib_quote_line_released", con_id=con_id, symbol=ticker.contract.symbol,
                     lines=len(self.lines), limit=self.lines.ceiling)
        if req_ids:
            self._mark_dirty("quotes")
        return [r for r in req_ids if r]

    async def _cancel_lines(self, req_ids: list[int]) -> None:
        for req_id in req_ids:
            await self._turn(Priority.DATA)
            if self.ib.isConnected():
                self.ib.client.cancelMktData(req_id)

    def _line_refused(self, req_id: int) -> bool:
        """IB's 101 for one of our quote requests: it streams nothing; waiters wake to no quote."""
        ticker = self.ib.wrapper.reqId2Ticker.get(req_id) if req_id and req_id > 0 else None
        con_id = next((c for c, t in self._tickers.items() if t is ticker), None) \
            if ticker is not None else None
        if con_id is None:
            return False
        del self._tickers[con_id]
        forget_ticker(self.ib.wrapper, ticker)
        r = self.lines.refused_by_ib(con_id)
        log.warning("ib_quote_line_refused", con_id=con_id, symbol=ticker.contract.symbol,
                    code=MAX_TICKERS, limit=r.limit, in_use=r.in_use)
        waiter = self._quote_waiters.get(con_id)
        if waiter is not None:
            waiter.set()
        self._mark_dirty("quotes")
        return True

    async def _renew_quotes(self) -> None:
        """1101 (data lost): every held line is requested again (its old request cancelled)."""
        for con_id in [c for c in self.lines.held() if c in self._tickers]:
            await self._cancel_lines(self._drop_lines([con_id]))
            try:
                await self._subscribe_quote(con_id)
            except LinesFull:
                pass
